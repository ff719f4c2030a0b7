"""The captioned shape world: vocabulary, scene sampling, captions and the held-out combinations.

A scene is one flat-coloured shape on a flat background. Every caption follows

    a [small|large] [colour] <shape> [position] [on a <colour> background]

and every part but the shape is optional, so partial prompts ("a triangle", "a red star on black")
mean something. Scenes are drawn from a seeded ``random.Random`` so a seed gives the same data on any
machine. Held-out combinations are never rendered for training; evaluation uses them to measure
generalisation (see ``HELD_OUT_*`` and docs/MODEL_CARD.md).
"""
from __future__ import annotations

import random
from dataclasses import dataclass, replace

# name -> sRGB 0..255. Spread apart so a nearest-colour checker is unambiguous.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "orange": (245, 140, 20),
    "yellow": (245, 220, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "purple": (140, 60, 190),
    "pink": (245, 135, 195),
    "white": (245, 245, 245),
    "gray": (128, 128, 128),
    "black": (20, 20, 20),
}
SHAPES = ("circle", "square", "triangle", "star", "heart")
SIZES = ("small", "large")
# position name -> centre as a fraction of the image side (x right, y down)
POSITIONS: dict[str, tuple[float, float]] = {
    "center": (0.5, 0.5),
    "left": (0.25, 0.5),
    "right": (0.75, 0.5),
    "top": (0.5, 0.25),
    "bottom": (0.5, 0.75),
    "top left": (0.25, 0.25),
    "top right": (0.75, 0.25),
    "bottom left": (0.25, 0.75),
    "bottom right": (0.75, 0.75),
}
# shape "radius" (half-extent) as a fraction of the image side
SIZE_RANGES = {"small": (0.09, 0.11), "large": (0.17, 0.20)}
SIZE_THRESHOLD = 0.14  # checker: estimated radius above this is "large"
POSITION_JITTER = 0.05

# Never rendered in training: (colour, shape), (shape colour, background colour), (shape, position).
HELD_OUT_COLOUR_SHAPE = {("purple", "triangle"), ("orange", "square"), ("blue", "star"),
                         ("green", "heart"), ("pink", "circle")}
HELD_OUT_COLOURS_ON = {("red", "blue"), ("yellow", "black"), ("white", "green"), ("green", "purple")}
HELD_OUT_SHAPE_POSITION = {("star", "top left"), ("circle", "bottom right"), ("square", "top")}

# Words users type that mean the same as ours; captions use them too so the tokenizer knows them.
SYNONYMS = {"big": "large", "tiny": "small", "little": "small", "grey": "gray", "violet": "purple",
            "middle": "center", "centre": "center"}
_POSITION_PHRASES = {
    "center": ("in the center", "in the middle", "in the centre"),
    "left": ("on the left",), "right": ("on the right",),
    "top": ("at the top",), "bottom": ("at the bottom",),
    **{p: (f"in the {p} corner", f"at the {p}") for p in ("top left", "top right", "bottom left", "bottom right")},
}


@dataclass(frozen=True)
class Scene:
    """One rendered scene; ``mentioned`` lists which optional attributes the caption names."""

    shape: str
    colour: str
    background: str
    size: str
    position: str | None  # None: placed anywhere (caption says nothing about where)
    cx: float  # centre, fraction of side
    cy: float
    radius: float  # half-extent, fraction of side
    mentioned: frozenset[str] = frozenset()
    caption: str = ""


def is_held_out(shape: str, colour: str, background: str, position: str | None) -> bool:
    """True when a scene contains a combination that training never shows."""
    return ((colour, shape) in HELD_OUT_COLOUR_SHAPE or (colour, background) in HELD_OUT_COLOURS_ON
            or (shape, position) in HELD_OUT_SHAPE_POSITION)


def sample_scene(rng: random.Random, *, held_out: bool = False, mention_prob: float = 0.6,
                 fixed: dict | None = None) -> Scene:
    """Draws a scene (and its caption). ``held_out=True`` draws only held-out combinations.

    ``fixed`` pins attributes (shape, colour, background, size, position) and marks them mentioned.
    """
    fixed = dict(fixed or {})
    while True:
        shape = fixed.get("shape") or rng.choice(SHAPES)
        colour = fixed.get("colour") or rng.choice(list(COLOURS))
        background = fixed.get("background") or rng.choice(list(COLOURS))
        size = fixed.get("size") or rng.choice(SIZES)
        position = fixed["position"] if "position" in fixed else (
            rng.choice(list(POSITIONS)) if rng.random() < 0.7 else None)
        if colour == background or is_held_out(shape, colour, background, position) != held_out:
            continue
        break
    radius = rng.uniform(*SIZE_RANGES[size])
    if position is None:  # anywhere the shape fits
        cx, cy = rng.uniform(0.25, 0.75), rng.uniform(0.25, 0.75)
    else:
        px, py = POSITIONS[position]
        cx = px + rng.uniform(-POSITION_JITTER, POSITION_JITTER)
        cy = py + rng.uniform(-POSITION_JITTER, POSITION_JITTER)
    mentioned = {k for k in ("colour", "background", "size", "position") if k in fixed}
    for key in ("colour", "background", "size", "position"):
        if key not in fixed and rng.random() < mention_prob:
            mentioned.add(key)
    if position is None:
        mentioned.discard("position")
    scene = Scene(shape, colour, background, size, position, cx, cy, radius, frozenset(mentioned))
    return replace(scene, caption=caption_for(scene, rng))


def recaption(scene: Scene, rng: random.Random, mention_prob: float = 0.6) -> Scene:
    """The same picture with a freshly drawn caption (which optional attributes it names)."""
    mentioned = {k for k in ("colour", "background", "size", "position") if rng.random() < mention_prob}
    if scene.position is None:
        mentioned.discard("position")
    scene = replace(scene, mentioned=frozenset(mentioned))
    return replace(scene, caption=caption_for(scene, rng))


def caption_for(scene: Scene, rng: random.Random | None = None) -> str:
    """The caption naming the scene's mentioned attributes; ``rng`` picks synonyms (None: canonical words)."""
    pick = (lambda options: rng.choice(options)) if rng else (lambda options: options[0])
    m = scene.mentioned
    words = []
    if "size" in m:
        size_words = {"small": ("small", "small", "tiny", "little"), "large": ("large", "large", "big")}
        words.append(pick(size_words[scene.size]))
    if "colour" in m:
        words.append(pick({"gray": ("gray", "grey"), "purple": ("purple", "purple", "violet")}.get(
            scene.colour, (scene.colour,))))
    words.append(scene.shape)
    if "position" in m and scene.position:
        words.append(pick(_POSITION_PHRASES[scene.position]))
    if "background" in m:
        article = "an" if scene.background[0] in "aeiou" else "a"
        words.append(f"on {article} {scene.background} background" if not rng or rng.random() < 0.8
                     else f"on {scene.background}")
    article = "an" if words[0][0] in "aeiou" else "a"
    return " ".join([article, *words])


def all_caption_words() -> set[str]:
    """Every word the caption grammar can produce (for tests and the tokenizer)."""
    words = {"a", "an", "on", "background", "in", "the", "at", "corner", *SHAPES, *COLOURS, *SIZES, *SYNONYMS}
    for phrases in _POSITION_PHRASES.values():
        for phrase in phrases:
            words.update(phrase.split())
    return words
