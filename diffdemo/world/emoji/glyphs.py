"""Glyph tiles: each subject's Noto Color Emoji glyph as a small RGBA PNG, rendered once from the font.

``python -m diffdemo.world.data fetch`` downloads Debian's ``fonts-noto-color-emoji`` and calls
:func:`render_tiles`, which writes ``DIR/emoji/<codepoints>.png`` (cropped to the glyph's visible pixels, about
120×120). Training, the checker and the tests read tiles, never the font, so a machine that trains needs neither
the font nor Pillow's text layout, and the tests run on a few committed tiles (tests/data/emoji/).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from diffdemo.world.emoji.subjects import Subject, subjects

FONT_SIZE = 109  # the one size of Noto Color Emoji's bitmap strikes: 136×128 pixels a glyph
_CANVAS = (2 * 136, 160)  # room for a sequence the layout failed to join, so it can be caught


def render_tiles(font: Path, out: Path, chosen: tuple[Subject, ...] | None = None) -> int:
    """Renders every subject's glyph from ``font`` to ``out/<codepoints>.png``; returns how many were written.

    Raises ValueError for a glyph that did not render as one picture (a ZWJ sequence such as "black cat" needs
    Pillow built with libraqm)."""
    from PIL import ImageDraw, ImageFont

    face = ImageFont.truetype(str(font), FONT_SIZE)
    out.mkdir(parents=True, exist_ok=True)
    for subject in chosen or subjects():
        canvas = Image.new("RGBA", _CANVAS, (0, 0, 0, 0))
        ImageDraw.Draw(canvas).text((0, 0), subject.char, font=face, embedded_color=True)
        box = canvas.getbbox()
        if box is None or box[2] - box[0] > 136:
            raise ValueError(f"The emoji '{subject.name}' did not render as one glyph (box {box}); joined "
                             f"sequences need Pillow with libraqm (PIL.features.check('raqm')).")
        canvas.crop(box).save(out / f"{subject.codepoints}.png", optimize=True)
    return len(chosen or subjects())


class Glyphs:
    """The glyph tiles of some subjects: ``tiles[name]`` is an ``h×w×4`` uint8 RGBA array (straight alpha)."""

    def __init__(self, tiles: dict[str, np.ndarray]):
        if not tiles:
            raise ValueError("Glyphs needs at least one tile")
        self.tiles = tiles
        self.names = tuple(tiles)

    @classmethod
    def from_folder(cls, folder: Path, chosen: tuple[Subject, ...] | None = None) -> Glyphs:
        """The tiles in ``folder`` of the ``chosen`` subjects (default: all) that have one, in table order."""
        folder = Path(folder)
        tiles = {s.name: np.array(Image.open(path).convert("RGBA"))
                 for s in chosen or subjects() if (path := folder / f"{s.codepoints}.png").exists()}
        if not tiles:
            raise FileNotFoundError(f"No emoji glyph tiles in {folder}; run: python -m diffdemo.world.data fetch")
        return cls(tiles)


def load_glyphs(root: Path | str | None = None, require_all: bool = True) -> Glyphs:
    """The fetched tiles under ``root`` (default: :func:`diffdemo.world.data.default_dir`); with ``require_all``,
    raises FileNotFoundError unless every subject of the table has one."""
    from diffdemo.world.data import EMOJI_TILES, default_dir

    folder = Path(root or default_dir()) / EMOJI_TILES
    glyphs = Glyphs.from_folder(folder)
    missing = [s.name for s in subjects() if s.name not in glyphs.tiles]
    if require_all and missing:
        raise FileNotFoundError(f"{len(missing)} emoji subjects have no tile in {folder} (e.g. {missing[0]}); run: "
                                f"python -m diffdemo.world.data fetch")
    return glyphs
