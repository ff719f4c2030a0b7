"""Example pictures for the tabs: world scenes at 128², the size the built-in model was trained on, and photographs
that ship with scikit-image (never trained on: they stand in for a visitor's own photo).

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
    return [(noisy_copy(picture, noise, seed) if sigma == 0 else picture, sigma)
            for seed, picture, sigma in zip(seeds, pictures, sigmas)]


def photo_examples(size: int = 256) -> dict[str, Image.Image]:
    """scikit-image's bundled colour photographs (``astronaut``, ``chelsea``, ``coffee``, ``rocket``), centre crops of
    ``size``²."""
    from diffdemo.world.data import public_photos

    return {name: Image.fromarray(pixels) for name, pixels in public_photos(size).items()}


def noisy_copy(picture: Image.Image, sigma: float, seed: int = 0) -> Image.Image:
    """``picture`` with Gaussian noise σ (0–255 units) baked in, saved as 8-bit: what an uploaded noisy photo holds."""
    return Image.fromarray(to_uint8(add_noise(np.asarray(picture), sigma, torch.Generator("cpu").manual_seed(seed))))
