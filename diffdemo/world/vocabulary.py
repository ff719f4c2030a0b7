"""The vocabulary a training run teaches, written beside the model it trains (``DIR/model/vocabulary.json``).

    python -m diffdemo.world.vocabulary MODEL_DIR [--emoji] [--write] [--docs docs/API.md]

``--write`` writes ``MODEL_DIR/vocabulary.json`` from the caption grammar (shapes, plus the emoji subjects with
``--emoji``), as the tokenizer stage does; ``--docs`` rewrites the section of that page between the
``<!-- vocabulary -->`` markers from the folder's vocabulary file. The app reads the file to report the words of
a prompt the model does not know (:mod:`diffdemo.engine.vocabulary`).
"""
from __future__ import annotations

import argparse
import re
from pathlib import Path

from diffdemo.engine.vocabulary import Vocabulary, prompt_words, read_vocabulary, write_vocabulary
from diffdemo.world import scene as shapes
from diffdemo.world.emoji import subjects as emoji
from diffdemo.world.emoji.scene import emoji_caption_words

DOCS_START, DOCS_END = "<!-- vocabulary -->", "<!-- /vocabulary -->"


def grammar_vocabulary(with_emoji: bool = False, extra_captions=()) -> Vocabulary:
    """Every word of the shapes grammar (and with ``with_emoji`` of the emoji subjects), plus the words of
    ``extra_captions`` (e.g. the plain captions of photo crops)."""
    words = set(shapes.all_caption_words())
    subjects = {"shapes": tuple(emoji.with_article(s) for s in shapes.SHAPES)}
    synonyms = dict(shapes.SYNONYMS)
    if with_emoji:
        words |= emoji_caption_words()
        subjects |= {family: tuple(emoji.with_article(name) for name in names)
                     for family, names in emoji.families().items()}
        synonyms |= emoji.SYNONYMS
    for caption in extra_captions:
        words.update(prompt_words(caption))
    attributes = {"colours": tuple(shapes.COLOURS), "sizes": shapes.SIZES, "positions": tuple(shapes.POSITIONS)}
    return Vocabulary(words=frozenset(words), subjects=subjects, attributes=attributes, synonyms=synonyms)


def model_vocabulary(cfg) -> Vocabulary:
    """What a model trained with the recipe ``cfg`` (a :class:`~diffdemo.world.training.TrainConfig`) knows."""
    from diffdemo.world.stages.unet import CAPTIONS

    photos = cfg.unet_photo_pool > 0 and cfg.photo_share + cfg.art_share > 0
    extra = [c for kind in ("photo", "art") for c in CAPTIONS[kind]] if photos else []
    return grammar_vocabulary(with_emoji=cfg.emoji_share > 0, extra_captions=extra)


def docs_section(vocabulary: Vocabulary) -> str:
    """The Markdown section of docs/API.md: counts, then :meth:`Vocabulary.markdown`, between the markers."""
    return "\n".join([DOCS_START, "", f"The built-in model knows {vocabulary.subject_count} subjects and "
                      f"{len(vocabulary.words)} words in all; `metadata[\"unknown_words\"]` lists the others.", "",
                      vocabulary.markdown(), "", DOCS_END])


def update_docs(page: Path, vocabulary: Vocabulary) -> None:
    """Replaces the section between the markers of ``page`` with :func:`docs_section`."""
    text = page.read_text(encoding="utf-8")
    pattern = re.compile(re.escape(DOCS_START) + ".*?" + re.escape(DOCS_END), flags=re.S)
    if not pattern.search(text):
        raise ValueError(f"{page} has no {DOCS_START} ... {DOCS_END} section")
    page.write_text(pattern.sub(lambda _: docs_section(vocabulary), text), encoding="utf-8")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dir", type=Path, help="a model folder (e.g. assets/model)")
    parser.add_argument("--write", action="store_true", help="write MODEL_DIR/vocabulary.json from the grammar")
    parser.add_argument("--emoji", action="store_true", help="with --write: the model knows the emoji subjects")
    parser.add_argument("--docs", type=Path, help="rewrite this page's vocabulary section")
    args = parser.parse_args(argv)
    if args.write:
        print(write_vocabulary(args.model_dir, grammar_vocabulary(with_emoji=args.emoji)))
    if args.docs:
        vocabulary = read_vocabulary(args.model_dir)
        if vocabulary is None:
            parser.error(f"{args.model_dir} has no vocabulary file; write one with --write")
        update_docs(args.docs, vocabulary)


if __name__ == "__main__":
    main()
