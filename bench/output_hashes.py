"""Hashes of every task's pictures for fixed seeds on the built-in model: run before and after a refactor and diff.

    python bench/output_hashes.py > before.txt   # ...change the code...
    python bench/output_hashes.py > after.txt && diff before.txt after.txt

A refactor that is meant to change nothing must print the same lines (same pixels, to the bit, on this machine).
"""
from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")


def digest(images) -> str:
    import numpy as np

    sha = hashlib.sha256()
    for image in images:
        array = np.asarray(image)
        sha.update(str(array.shape).encode())
        sha.update(array.tobytes())
    return sha.hexdigest()[:16]


def runs(models):
    """(name, zero-argument call returning a TaskResult) for each task at a few steps."""
    from PIL import Image

    from diffdemo import tasks
    from diffdemo.world.examples import example_images

    photo = example_images()[0][0]
    mask = Image.new("L", photo.size, 0)
    mask.paste(255, (photo.width // 4, photo.height // 4, photo.width // 2, photo.height // 2))
    small = photo.resize((16, 16))
    return [
        ("text_to_image", lambda: tasks.text_to_image(models, tasks.TextToImageRequest(
            "a red circle", steps=4, seed=1, num_images=2))),
        ("text_to_image_euler_a", lambda: tasks.text_to_image(models, tasks.TextToImageRequest(
            "a blue square", sampler="Euler a", steps=3, seed=2, guidance_scale=3.0))),
        ("trajectory", lambda: tasks.trajectory(models, tasks.TrajectoryRequest("a green triangle", steps=4, seed=3))),
        ("compare", lambda: tasks.compare(models, tasks.CompareRequest(
            "a red circle", variants="steps=2\nsteps=3", steps=3, seed=4))),
        ("inpaint", lambda: tasks.inpaint(models, tasks.InpaintRequest(
            photo, mask=mask, prompt="a yellow star", steps=4, seed=5))),
        ("denoise", lambda: tasks.denoise(models, tasks.DenoiseRequest(photo, sigma=30, steps=4, seed=6))),
        ("forward", lambda: tasks.forward(models, tasks.ForwardRequest(photo, t=400, seed=7))),
        ("super_resolution", lambda: tasks.super_resolve(models, tasks.SuperResolutionRequest(
            small, steps=2, samples=1, seed=8))),
    ]


def main() -> None:
    import torch

    from diffdemo.engine import load_models

    torch.set_num_threads(1)
    models = load_models(device="cpu")
    for name, call in runs(models):
        result = call()
        print(name, len(result.images), digest(result.images), flush=True)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
