"""Renders shape-world scenes to image tensors with anti-aliased signed distance functions (CPU or GPU).

Output images are ``B×3×S×S`` float tensors in ``[-1, 1]``. Rendering is pure tensor maths, so training
can draw fresh images on the GPU every step instead of storing a data set.
"""
from __future__ import annotations

import math
import random

import torch

from diffdemo.world.scene import COLOURS, Scene

_COLOUR_JITTER = 8  # ±, in 0..255 units: colours vary a little so models learn ranges, not single values
_SQRT3 = math.sqrt(3.0)


def _sd_circle(x, y, r):
    return torch.sqrt(x * x + y * y) - r


def _sd_square(x, y, r):
    half = 0.85 * r  # equal-area-ish with the circle
    dx, dy = x.abs() - half, y.abs() - half
    outside = torch.sqrt(dx.clamp(min=0) ** 2 + dy.clamp(min=0) ** 2)
    return outside + torch.maximum(dx, dy).clamp(max=0)


def _sd_triangle(x, y, r):
    # Equilateral triangle pointing up (Inigo Quilez's sdEquilateralTriangle; image y points down).
    half_side = 1.05 * r
    px, py = x.abs() - half_side, -y + half_side / _SQRT3
    fold = px + _SQRT3 * py > 0
    px, py = torch.where(fold, (px - _SQRT3 * py) / 2, px), torch.where(fold, (-_SQRT3 * px - py) / 2, py)
    px = px - torch.minimum(torch.maximum(px, -2 * half_side), torch.zeros_like(px))
    return -torch.sqrt(px * px + py * py) * torch.sign(py)


def _sd_star(x, y, r):
    # Five-pointed star, one point up (Inigo Quilez's sdStar5, inner radius factor 0.45).
    outer, inner_factor = 1.2 * r, 0.45
    k1x, k1y = 0.809016994375, -0.587785252292
    px, py = x.abs(), -y
    d = (k1x * px + k1y * py).clamp(min=0)
    px, py = px - 2 * d * k1x, py - 2 * d * k1y
    d = (-k1x * px + k1y * py).clamp(min=0)
    px, py = px + 2 * d * k1x, py - 2 * d * k1y
    px, py = px.abs(), py - outer
    bax, bay = inner_factor * -k1y, inner_factor * k1x - 1
    h = torch.minimum(((px * bax + py * bay) / (bax * bax + bay * bay)).clamp(min=0), outer * torch.ones_like(px))
    qx, qy = px - bax * h, py - bay * h
    return torch.sqrt(qx * qx + qy * qy) * torch.sign(py * bax - px * bay)


def _sd_heart(x, y, r):
    # Inigo Quilez's sdHeart: tip at the origin, about 1.1 tall; scaled and centred on (x, y) = 0.
    scale = 1.75 * r
    px, py = x.abs() / scale, -y / scale + 0.55
    lobe = torch.sqrt((px - 0.25) ** 2 + (py - 0.75) ** 2) - math.sqrt(2) / 4
    m = (px + py).clamp(min=0) * 0.5
    body = torch.sqrt(torch.minimum(px ** 2 + (py - 1) ** 2, (px - m) ** 2 + (py - m) ** 2)) * torch.sign(px - py)
    return torch.where(px + py > 1, lobe, body) * scale


SDFS = {"circle": _sd_circle, "square": _sd_square, "triangle": _sd_triangle, "star": _sd_star, "heart": _sd_heart}


def shape_coverage(shape: str, cx: float, cy: float, radius: float, size: int, device="cpu") -> torch.Tensor:
    """Anti-aliased coverage ``size×size`` in ``[0, 1]`` of one shape (geometry as fractions of the side)."""
    coords = (torch.arange(size, device=device, dtype=torch.float32) + 0.5) / size
    y, x = torch.meshgrid(coords - cy, coords - cx, indexing="ij")
    sdf_pixels = SDFS[shape](x, y, torch.tensor(radius, device=device)) * size
    return (0.5 - sdf_pixels).clamp(0, 1)


def render_scenes(scenes: list[Scene], size: int = 128, device="cpu", rng: random.Random | None = None) -> torch.Tensor:
    """Renders scenes to ``B×3×size×size`` in ``[-1, 1]``; ``rng`` adds the small colour jitter used in training.

    Scenes are grouped by shape so a batch costs a few tensor ops per shape, not per scene.
    """
    centres = torch.tensor([[s.cx, s.cy, s.radius] for s in scenes], device=device, dtype=torch.float32)
    fg = torch.stack([_rgb(s.colour, rng) for s in scenes]).to(device)
    bg = torch.stack([_rgb(s.background, rng) for s in scenes]).to(device)
    coords = (torch.arange(size, device=device, dtype=torch.float32) + 0.5) / size
    coverage = torch.empty(len(scenes), size, size, device=device)
    for shape, sdf in SDFS.items():
        index = torch.tensor([i for i, s in enumerate(scenes) if s.shape == shape], device=device, dtype=torch.long)
        if len(index) == 0:
            continue
        cx, cy, r = (centres[index, k, None, None] for k in range(3))
        x, y = coords[None, None, :] - cx, coords[None, :, None] - cy
        x, y = torch.broadcast_tensors(x, y)
        coverage[index] = (0.5 - sdf(x, y, r) * size).clamp(0, 1)
    images = bg[:, :, None, None] + (fg - bg)[:, :, None, None] * coverage[:, None]
    return images * 2 - 1


def _rgb(name: str, rng: random.Random | None) -> torch.Tensor:
    values = [c + (rng.uniform(-_COLOUR_JITTER, _COLOUR_JITTER) if rng else 0) for c in COLOURS[name]]
    return (torch.tensor(values, dtype=torch.float32) / 255).clamp(0, 1)


def to_pil(images: torch.Tensor):
    """``B×3×H×W`` in ``[-1, 1]`` -> list of PIL RGB images."""
    from PIL import Image

    array = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(a) for a in array]
