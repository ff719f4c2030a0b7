"""Emoji subjects of the caption world: Noto Color Emoji glyphs on flat backgrounds, with checkable captions.

``subjects`` (the committed table and synonyms), ``scene`` (sampling, captions, held-out combinations), ``glyphs``
(the fetched glyph tiles), ``render`` (scenes to tensors), ``checker`` (names the subject in an image) and
``evaluate`` (subject adherence of a text-to-image model).
"""
