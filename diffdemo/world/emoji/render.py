"""Renders emoji scenes to image tensors: the subject's glyph tile, resized to the scene's size, composited at its
position on the flat background (CPU or GPU).

Output images are ``B×3×S×S`` float tensors in ``[-1, 1]``, like :func:`diffdemo.world.render.render_scenes`.
The glyph's longer side spans ``2 · radius · S`` pixels; resizing is area-averaging (antialiased bilinear) of
premultiplied colour, so edges blend into any background without a dark or light fringe.
"""
from __future__ import annotations

import random

import torch
import torch.nn.functional as F

from diffdemo.world.emoji.glyphs import Glyphs
from diffdemo.world.emoji.scene import EmojiScene
from diffdemo.world.scene import COLOURS

_COLOUR_JITTER = 8  # ±, in 0..255 units, as the shapes world's backgrounds vary


class GlyphTensors:
    """Each tile as a ``4×h×w`` tensor on ``device``: premultiplied RGB and alpha in ``[0, 1]``."""

    def __init__(self, glyphs: Glyphs, device="cpu"):
        self.glyphs, self.device, self._cache = glyphs, torch.device(device), {}

    def __getitem__(self, name: str) -> torch.Tensor:
        if name not in self._cache:
            rgba = torch.from_numpy(self.glyphs.tiles[name]).to(self.device).permute(2, 0, 1).float() / 255
            self._cache[name] = torch.cat([rgba[:3] * rgba[3:], rgba[3:]])
        return self._cache[name]


def glyph_box(tile_shape: tuple[int, int], cx: float, cy: float, radius: float, size: int):
    """(top, left, height, width) in pixels of a glyph whose tile is ``tile_shape`` (h, w), centred at (cx, cy)
    with its longer side ``2 · radius · size`` pixels."""
    h, w = tile_shape
    scale = 2 * radius * size / max(h, w)
    height, width = max(1, round(h * scale)), max(1, round(w * scale))
    return round(cy * size - height / 2), round(cx * size - width / 2), height, width


def resized_glyph(tile: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``4×height×width`` premultiplied RGBA."""
    return F.interpolate(tile[None], size=(height, width), mode="bilinear", antialias=True,
                         align_corners=False)[0].clamp(0, 1)


def composite(canvas: torch.Tensor, glyph: torch.Tensor, top: int, left: int) -> None:
    """Draws premultiplied ``glyph`` (4×h×w) over ``canvas`` (3×S×S, [0, 1]) in place, clipped at the borders."""
    size_y, size_x = canvas.shape[1:]
    h, w = glyph.shape[1:]
    y0, x0, y1, x1 = max(top, 0), max(left, 0), min(top + h, size_y), min(left + w, size_x)
    if y0 >= y1 or x0 >= x1:
        return
    part = glyph[:, y0 - top: y1 - top, x0 - left: x1 - left]
    region = canvas[:, y0:y1, x0:x1]
    canvas[:, y0:y1, x0:x1] = region * (1 - part[3:]) + part[:3]


def background(name: str, rng: random.Random | None, device="cpu") -> torch.Tensor:
    """The RGB of a background colour in [0, 1], jittered a little with ``rng`` (None: exact)."""
    values = [c + (rng.uniform(-_COLOUR_JITTER, _COLOUR_JITTER) if rng else 0) for c in COLOURS[name]]
    return (torch.tensor(values, dtype=torch.float32, device=device) / 255).clamp(0, 1)


def render_emoji_scenes(scenes: list[EmojiScene], glyphs: GlyphTensors, size: int = 128,
                        rng: random.Random | None = None) -> torch.Tensor:
    """Renders scenes to ``B×3×size×size`` in ``[-1, 1]`` on ``glyphs.device``; ``rng`` jitters backgrounds."""
    images = torch.empty(len(scenes), 3, size, size, device=glyphs.device)
    for image, scene in zip(images, scenes):
        image[:] = background(scene.background, rng, glyphs.device)[:, None, None]
        tile = glyphs[scene.subject]
        top, left, height, width = glyph_box(tile.shape[1:], scene.cx, scene.cy, scene.radius, size)
        composite(image, resized_glyph(tile, height, width), top, left)
    return images * 2 - 1
