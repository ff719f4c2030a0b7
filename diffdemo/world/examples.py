"""Example pictures for the tabs: world scenes at 128², the size the built-in model was trained on.

Here, beside the renderer, rather than in ``tasks``: the world's evaluation calls the tasks, so the tasks must not
import the world back (tests/test_layers.py).
"""
from __future__ import annotations

import random

import numpy as np
import torch
from PIL import Image

from diffdemo.tasks.denoise import add_noise, to_uint8
from diffdemo.world.render import render_scenes, to_pil
from diffdemo.world.scene import sample_scene


def example_images(seeds=(3, 11, 21, 40), sigmas=(50, 25, 75, 0), noise: float = 30.0) -> list:
    """``(PIL image, σ to try)`` pairs of 128² world scenes; those paired with σ = 0 carry baked-in noise ``noise``."""
    pictures = to_pil(render_scenes([sample_scene(random.Random(seed)) for seed in seeds], 128))
    examples = []
    for seed, picture, sigma in zip(seeds, pictures, sigmas):
        if sigma == 0:
            noisy = add_noise(np.asarray(picture), noise, torch.Generator("cpu").manual_seed(seed))
            picture = Image.fromarray(to_uint8(noisy))
        examples.append((picture, sigma))
    return examples
