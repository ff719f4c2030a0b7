"""Draws playground runs with PIL: one frame (forward | reverse with trails | score field) and an overview figure.

Views show the square [-LIMIT, LIMIT]² with y up. Text in images is ASCII ("abar" is ᾱ_t): PIL's built-in font
has no Greek letters. Points are drawn as 2×2 pixel blocks straight into a numpy canvas, so a frame of 3,000
points renders in milliseconds and scrubbing stays instant.
"""
from __future__ import annotations

import functools
import math

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from diffdemo.tasks.playground.data import LIMIT

PANEL = 256  # frame panels, pixels a side
CELL = 160  # overview panels
PAD, HEADER, FOOTER, LABEL = 8, 20, 20, 64
TRAILS = 24  # reverse trajectories drawn as lines
TAIL = 8  # frames of each trajectory drawn darker
BACKGROUND, AXES, DATA = (255, 255, 255), (225, 225, 225), (205, 205, 205)
FORWARD, REVERSE, ARROW, TEXT = (40, 100, 200), (225, 100, 20), (40, 50, 60), (30, 30, 30)
TRAIL, TRAIL_OLD, TRACKED = (90, 90, 90), (215, 215, 215), (110, 40, 0)
TITLES = ("forward: q(x_t | x_0)", "reverse: samples x_t", "score field s(x, t)")


def frame_size(panel: int = PANEL) -> tuple[int, int]:
    """(width, height) of :func:`frame_image`: three panels side by side with a title row and a footer."""
    return 3 * panel + 4 * PAD, PAD + HEADER + panel + FOOTER + PAD


def frame_image(run, index: int, panel: int = PANEL) -> Image.Image:
    """Frame ``index`` (0 = pure noise … len(run) − 1 = samples) as an RGB image of :func:`frame_size`."""
    index = min(max(int(index), 0), len(run) - 1)
    image = Image.new("RGB", frame_size(panel), BACKGROUND)
    draw = ImageDraw.Draw(image)
    views = (forward_view(run, index, panel), reverse_view(run, index, panel), score_view(run, index, panel))
    for column, (title, view) in enumerate(zip(TITLES, views)):
        left = PAD + column * (panel + PAD)
        image.paste(view, (left, PAD + HEADER))
        draw.text((left, PAD + 3), title, fill=TEXT, font=font())
    draw.text((PAD, PAD + HEADER + panel + 4), caption(run, index), fill=TEXT, font=font())
    return image


def caption(run, index: int) -> str:
    steps = len(run) - 1
    where = "x_T, pure noise" if index == 0 else "x_0, the samples" if index == steps else f"after {index} steps"
    return (f"frame {index}/{steps} ({where})   t = {run.timesteps[index]}   abar = {run.alpha_bars[index]:.4f}   "
            f"{run.request.sampler}, {run.request.dataset}")


def forward_view(run, index: int, size: int) -> Image.Image:
    """The data (grey) and q(x_t|x_0) of the same points at this frame's t (blue)."""
    canvas = blank(size)
    dots(canvas, run.data, DATA)
    dots(canvas, run.forward[index], FORWARD)
    return Image.fromarray(canvas)


def reverse_view(run, index: int, size: int, trails: int = TRAILS) -> Image.Image:
    """Samples at this frame (orange). The first ``trails`` points are followed: their paths from x_T (faint,
    under the samples), their last TAIL moves (dark) and where they are now (dark squares)."""
    image = Image.fromarray(blank(size))
    paths = [to_pixels(path, size) for path in np.swapaxes(run.reverse[: index + 1, :trails], 0, 1)]
    start = max(0, index - TAIL)
    if index > 0:
        _lines(image, [path[: start + 1] for path in paths], TRAIL_OLD)
    canvas = np.array(image)
    dots(canvas, run.reverse[index], REVERSE)
    image = Image.fromarray(canvas)
    if index > 0:
        _lines(image, [path[start:] for path in paths], TRAIL)
    canvas = np.array(image)
    dots(canvas, run.reverse[index, :trails], TRACKED, size=3)
    return Image.fromarray(canvas)


def _lines(image: Image.Image, paths: list, colour) -> None:
    draw = ImageDraw.Draw(image)
    for path in paths:
        if len(path) > 1:
            draw.line([tuple(p) for p in path], fill=colour, width=1)


def score_view(run, index: int, size: int, stride: int = 1) -> Image.Image:
    """Arrows of the learned score at this frame's t (every ``stride``-th grid point) over faint samples; lengths
    are scaled per frame (the 90th percentile arrow is 0.9 of a grid cell; longer ones are clipped), so the
    directions stay readable at every t."""
    canvas = blank(size)
    dots(canvas, run.reverse[index], (250, 205, 170))
    image = Image.fromarray(canvas)
    draw = ImageDraw.Draw(image)
    vectors = run.score[index, stride // 2::stride, stride // 2::stride].reshape(-1, 2)
    starts = to_pixels(run.grid[stride // 2::stride, stride // 2::stride].reshape(-1, 2), size)
    lengths = np.linalg.norm(vectors, axis=1)
    reference = max(float(np.percentile(lengths, 90)), 1e-12)
    cell = stride * size / (run.grid.shape[0] + 1)
    for start, vector, length in zip(starts, vectors, lengths):
        if length > 0:
            arrow(draw, start, vector / length, 0.9 * cell * min(length / reference, 1.0))
    return image


def arrow(draw: ImageDraw.ImageDraw, start, direction, length: float) -> None:
    """An arrow of ``length`` pixels from ``start`` (pixels) along ``direction`` (a unit vector, y up)."""
    dx, dy = direction[0] * length, -direction[1] * length  # image rows grow downwards
    end = (start[0] + dx, start[1] + dy)
    draw.line([tuple(start), end], fill=ARROW, width=1)
    head, angle = max(2.0, 0.35 * length), math.atan2(dy, dx)
    for side in (-0.5, 0.5):
        tip = (end[0] - head * math.cos(angle + side), end[1] - head * math.sin(angle + side))
        draw.line([end, tip], fill=ARROW, width=1)


def overview_image(run, columns: int = 5, size: int = CELL) -> Image.Image:
    """The DPM paper's figure: rows forward / reverse / score field, columns t from 0 (data) to T (noise)."""
    frames = [round(i) for i in np.linspace(len(run) - 1, 0, columns)]
    width = LABEL + columns * (size + PAD) + PAD
    image = Image.new("RGB", (width, HEADER + 3 * (size + PAD) + PAD), BACKGROUND)
    draw = ImageDraw.Draw(image)
    views = (forward_view, lambda r, i, s: reverse_view(r, i, s, trails=0), lambda r, i, s: score_view(r, i, s, 2))
    for row, (name, view) in enumerate(zip(("forward", "reverse", "score"), views)):
        top = HEADER + row * (size + PAD)
        draw.text((PAD, top + size // 2 - 6), name, fill=TEXT, font=font())
        for column, index in enumerate(frames):
            image.paste(view(run, index, size), (LABEL + column * (size + PAD), top))
    for column, index in enumerate(frames):
        draw.text((LABEL + column * (size + PAD), 3), f"t = {run.timesteps[index]}", fill=TEXT, font=font())
    return image


def blank(size: int) -> np.ndarray:
    """A white ``size×size×3`` uint8 canvas with light axes through the origin."""
    canvas = np.full((size, size, 3), BACKGROUND, dtype=np.uint8)
    centre = size // 2
    canvas[centre, :], canvas[:, centre] = AXES, AXES
    return canvas


def to_pixels(points: np.ndarray, size: int) -> np.ndarray:
    """``N×2`` view coordinates -> ``N×2`` float pixel positions (x right, y up in the view)."""
    scaled = (np.asarray(points, dtype=np.float64) + LIMIT) / (2 * LIMIT) * (size - 1)
    return np.stack([scaled[:, 0], size - 1 - scaled[:, 1]], axis=1)


def dots(canvas: np.ndarray, points: np.ndarray, colour, size: int = 2) -> None:
    """Paints each point as a ``size``×``size`` block of ``colour`` (points outside the view are skipped)."""
    side = canvas.shape[0]
    pixels = np.floor(to_pixels(points, side)).astype(np.int64) - (size - 1) // 2
    inside = ((pixels >= 0) & (pixels < side - size + 1)).all(axis=1)
    x, y = pixels[inside, 0], pixels[inside, 1]
    for dx in range(size):
        for dy in range(size):
            canvas[y + dy, x + dx] = colour


@functools.lru_cache(maxsize=1)
def font() -> ImageFont.ImageFont:
    return ImageFont.load_default(size=12)
