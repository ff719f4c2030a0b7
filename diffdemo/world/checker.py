"""An analytic judge of shape-world images: which shape, colours, size and position an image shows.

Used to measure prompt adherence without looking (``python -m diffdemo.world.evaluate``). It reads the
background from the image border, splits shape from background by nearest colour, and names the shape
by the best intersection-over-union with each shape's template fitted to the mask's area and centroid.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache

import numpy as np

from diffdemo.world.render import shape_coverage
from diffdemo.world.scene import COLOURS, POSITIONS, SHAPES, SIZE_THRESHOLD, Scene

CHECK_SIZE = 128
_PALETTE = np.array(list(COLOURS.values()), dtype=np.float32)
_NAMES = list(COLOURS)


@dataclass(frozen=True)
class Judgement:
    """What the checker sees; ``shape`` is None when no shape was found."""

    shape: str | None
    colour: str | None
    background: str
    size: str | None
    position: str | None
    shape_iou: float


def nearest_colour(rgb) -> str:
    return _NAMES[int(np.argmin(((_PALETTE - np.asarray(rgb, np.float32)) ** 2).sum(1)))]


@cache
def _unit_area(shape: str) -> float:
    """Area (fraction of the image) of ``shape`` at radius 0.1; area scales with radius²."""
    return float(shape_coverage(shape, 0.5, 0.5, 0.1, 256).mean())


def judge(image) -> Judgement:
    """Judges a PIL image or ``H×W×3`` uint8 array (resized to 128²)."""
    mask, fg, bg = _split(image)
    if mask is None:
        return Judgement(None, None, nearest_colour(bg), None, None, 0.0)
    return _judge_mask(mask, fg, bg)


def _split(image):
    """(shape mask or None, shape colour, background colour) of an image, resized to 128²."""
    from PIL import Image

    if not isinstance(image, Image.Image):
        image = Image.fromarray(np.asarray(image))
    pixels = np.asarray(image.convert("RGB").resize((CHECK_SIZE, CHECK_SIZE), Image.BILINEAR), np.float32)
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    bg = np.median(border, axis=0)
    dist_bg = np.linalg.norm(pixels - bg, axis=-1)
    candidates = dist_bg > 40
    if candidates.sum() < 12:
        return None, None, bg
    core = dist_bg >= np.percentile(dist_bg[candidates], 50)  # the far half: inside the shape, not its edge
    fg = np.median(pixels[core & candidates], axis=0)
    return np.linalg.norm(pixels - fg, axis=-1) < dist_bg, fg, bg


def _judge_mask(mask: np.ndarray, fg, bg) -> Judgement:
    area = mask.mean()
    ys, xs = np.nonzero(mask)
    cx, cy = (xs.mean() + 0.5) / CHECK_SIZE, (ys.mean() + 0.5) / CHECK_SIZE
    best, best_iou, best_radius = None, -1.0, 0.0
    for shape in SHAPES:
        radius = 0.1 * math.sqrt(area / _unit_area(shape))
        template = _centred_template(shape, cx, cy, radius)
        iou = float((template & mask).sum() / max((template | mask).sum(), 1))
        if iou > best_iou:
            best, best_iou, best_radius = shape, iou, radius
    size = "large" if best_radius > SIZE_THRESHOLD else "small"
    return Judgement(best, nearest_colour(fg), nearest_colour(bg), size, _position_name(cx, cy), best_iou)


def _centred_template(shape: str, cx: float, cy: float, radius: float) -> np.ndarray:
    """Binary template whose centroid (not its nominal centre) sits at (cx, cy)."""
    cover = shape_coverage(shape, 0.5, 0.5, radius, CHECK_SIZE).numpy()
    weight = cover.sum() or 1.0
    coords = (np.arange(CHECK_SIZE) + 0.5) / CHECK_SIZE
    ox = (cover.sum(0) * coords).sum() / weight - 0.5
    oy = (cover.sum(1) * coords).sum() / weight - 0.5
    return shape_coverage(shape, cx - ox, cy - oy, radius, CHECK_SIZE).numpy() > 0.5


def _position_name(cx: float, cy: float) -> str:
    column = "left" if cx < 0.375 else "right" if cx > 0.625 else ""
    row = "top" if cy < 0.375 else "bottom" if cy > 0.625 else ""
    return f"{row} {column}".strip() or "center"


# The strict geometric reading: a shape passes when its largest blob matches the template well (IoU) and has the
# shape's own geometry. Squares come out of a weak decoder as cushions (rounded corners: low extent), triangles
# with concave sides and circles with dents (low solidity), stars without points (high solidity).
STRICT_IOU = 0.8
STRICT_RULES = {  # shape -> (measure, lowest, highest); extent = area / bounding box, solidity = area / convex hull
    "square": ("extent", 0.94, 1.0), "triangle": ("solidity", 0.92, 1.0), "circle": ("solidity", 0.94, 1.0),
    "star": ("solidity", 0.0, 0.8), "heart": ("solidity", 0.9, 0.99),
}


def strict_reading(image, shape: str) -> dict:
    """Whether ``image`` shows ``shape`` with crisp geometry: ``passes``, the template ``iou`` and the measures."""
    from skimage.measure import label, regionprops

    mask, fg, bg = _split(image)
    if mask is None:
        return {"passes": False, "iou": 0.0, "extent": 0.0, "solidity": 0.0}
    blobs = label(mask)
    region = max(regionprops(blobs), key=lambda r: r.area)
    blob = blobs == region.label
    judgement = _judge_mask(blob, fg, bg)
    measures = {"extent": float(region.extent), "solidity": float(region.solidity)}
    name, low, high = STRICT_RULES[shape]
    iou = _template_iou(blob, shape)
    return {"passes": judgement.shape == shape and iou >= STRICT_IOU and low <= measures[name] <= high,
            "iou": round(iou, 3), **{k: round(v, 3) for k, v in measures.items()}}


def _template_iou(mask: np.ndarray, shape: str) -> float:
    ys, xs = np.nonzero(mask)
    cx, cy = (xs.mean() + 0.5) / CHECK_SIZE, (ys.mean() + 0.5) / CHECK_SIZE
    template = _centred_template(shape, cx, cy, 0.1 * math.sqrt(mask.mean() / _unit_area(shape)))
    return float((template & mask).sum() / max((template | mask).sum(), 1))


ATTRIBUTES = ("shape", "colour", "background", "size", "position")


def score(scene: Scene, judgement: Judgement) -> dict[str, bool]:
    """Per-attribute correctness for what the caption asked for (the shape always)."""
    asked = {"shape", *scene.mentioned}
    return {a: getattr(judgement, a) == getattr(scene, a) for a in ATTRIBUTES if a in asked}


assert set(POSITIONS) == {_position_name(x, y) for x, y in POSITIONS.values()}
