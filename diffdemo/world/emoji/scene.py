"""Emoji scenes: one emoji subject on a flat background, its caption, and the combinations training never shows.

Captions follow the shapes grammar with a subject in the shape's place and no colour (an emoji has its own):

    a [small|large] <subject> [position] [on a <colour> background]

("a panda", "an automobile", "a small rocket in the top left corner on a blue background"). Size, position and
background words come from the shapes grammar itself (:func:`diffdemo.world.scene.caption_for`), so the two
worlds share one vocabulary for them. Held out: each subject at its own position and on its own background
(``subjects.json``, docs/EMOJI.md); :func:`sample_emoji_scene` draws them only when asked.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, replace

from diffdemo.world.emoji.subjects import by_name, subjects, with_article
from diffdemo.world.checker import _position_name as position_name
from diffdemo.world.scene import COLOURS, POSITIONS, SHAPES, SIZES, Scene, all_caption_words
from diffdemo.world.scene import caption_for as shape_caption

# Half-extent of the glyph's longer side, as a fraction of the image side: larger than the shapes' (0.09-0.20),
# because a 24-pixel emoji is hard to tell apart at 128², and still whole at a corner (0.25 - 0.03 - 0.21 > 0).
SIZE_RANGES = {"small": (0.11, 0.13), "large": (0.18, 0.21)}
SIZE_THRESHOLD = 0.155  # checker: a measured half-extent above this is "large"
POSITION_JITTER = 0.03
SYNONYM_SHARE = 0.25  # of captions of a subject that has synonyms: one of them instead of the CLDR name
_OPTIONAL = ("background", "size", "position")
_PLACEHOLDER = "circle"  # the shape whose place the subject takes in a shapes caption


@dataclass(frozen=True)
class EmojiScene:
    """One emoji scene; ``mentioned`` lists which optional attributes (background, size, position) the caption
    names. Geometry as fractions of the image side; ``radius`` is half the glyph's longer side."""

    subject: str
    background: str
    size: str
    position: str | None  # None: placed anywhere (the caption says nothing about where)
    cx: float
    cy: float
    radius: float
    mentioned: frozenset[str] = frozenset()
    caption: str = ""


def is_held_out(subject: str, background: str, position: str | None) -> bool:
    """True for the subject on its held-out background or at its held-out position."""
    s = by_name()[subject]
    return background == s.held_out_background or position == s.held_out_position


def sample_emoji_scene(rng: random.Random, *, held_out: bool = False, mention_prob: float = 0.6,
                       fixed: dict | None = None, names: tuple[str, ...] | None = None) -> EmojiScene:
    """Draws a scene and its caption from the subjects ``names`` (default: all); ``held_out=True`` draws only
    held-out combinations. ``fixed`` pins attributes (subject, background, size, position) and marks them
    mentioned."""
    fixed, names = dict(fixed or {}), names or tuple(s.name for s in subjects())
    while True:
        subject = fixed.get("subject") or rng.choice(names)
        background = fixed.get("background") or rng.choice(list(COLOURS))
        size = fixed.get("size") or rng.choice(SIZES)
        position = fixed["position"] if "position" in fixed else (
            rng.choice(list(POSITIONS)) if rng.random() < 0.7 else None)
        if is_held_out(subject, background, position) == held_out:
            break
    radius = rng.uniform(*SIZE_RANGES[size])
    if position is None:  # anywhere it fits, but never where a checker would read the held-out position
        cx, cy = rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.7)
        while not held_out and position_name(cx, cy) == by_name()[subject].held_out_position:
            cx, cy = rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.7)
    else:
        px, py = POSITIONS[position]
        cx = px + rng.uniform(-POSITION_JITTER, POSITION_JITTER)
        cy = py + rng.uniform(-POSITION_JITTER, POSITION_JITTER)
    mentioned = {k for k in _OPTIONAL if k in fixed}
    mentioned |= {k for k in _OPTIONAL if k not in fixed and rng.random() < mention_prob}
    if held_out:  # the caption must ask for the combination that makes it held out
        s = by_name()[subject]
        mentioned |= {"background"} if background == s.held_out_background else {"position"}
    if position is None:
        mentioned.discard("position")
    scene = EmojiScene(subject, background, size, position, cx, cy, radius, frozenset(mentioned))
    return replace(scene, caption=caption_for(scene, rng))


def recaption(scene: EmojiScene, rng: random.Random, mention_prob: float = 0.6) -> EmojiScene:
    """The same picture with a freshly drawn caption (which optional attributes it names, which synonym)."""
    mentioned = {k for k in _OPTIONAL if rng.random() < mention_prob}
    if scene.position is None:
        mentioned.discard("position")
    scene = replace(scene, mentioned=frozenset(mentioned))
    return replace(scene, caption=caption_for(scene, rng))


def caption_for(scene: EmojiScene, rng: random.Random | None = None) -> str:
    """The caption naming the scene's mentioned attributes; ``rng`` picks synonyms (None: canonical words)."""
    proxy = Scene(_PLACEHOLDER, "white", scene.background, scene.size, scene.position, scene.cx, scene.cy,
                  scene.radius, scene.mentioned - {"colour"})
    words = shape_caption(proxy, rng).split()[1:]  # without the article, which depends on the subject
    spellings = by_name()[scene.subject].spellings
    name = spellings[0]
    if rng is not None and len(spellings) > 1 and rng.random() < SYNONYM_SHARE:
        name = rng.choice(spellings[1:])
    words[words.index(_PLACEHOLDER)] = name
    return with_article(name, " ".join(words))


def recaption_any(scene, rng: random.Random):
    """:func:`recaption` for an emoji scene, the shapes world's for a shape scene (a mixed training pool)."""
    if isinstance(scene, EmojiScene):
        return recaption(scene, rng)
    from diffdemo.world.scene import recaption as recaption_shape

    return recaption_shape(scene, rng)


def emoji_captions(rng: random.Random, n: int) -> list[str]:
    """``n`` captions of fresh training scenes, then every spelling of every subject once (for a tokenizer)."""
    captions = [sample_emoji_scene(rng, mention_prob=0.7).caption for _ in range(n)]
    return captions + [with_article(spelling) for s in subjects() for spelling in s.spellings]


def emoji_caption_words() -> set[str]:
    """Every word an emoji caption can contain: subject names, their synonyms and the shared grammar words."""
    words = all_caption_words() - set(SHAPES)
    for s in subjects():
        for spelling in s.spellings:
            words.update(spelling.split())
    return words
