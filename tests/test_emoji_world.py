"""The emoji world: the subject table, captions, held-out combinations, rendering, the checker and the training
stream. Glyphs come from the twenty committed tiles in tests/data/emoji/ (no download)."""
from __future__ import annotations

import random
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from diffdemo.world.emoji.checker import EmojiChecker, clean_accuracy, score
from diffdemo.world.emoji.glyphs import Glyphs
from diffdemo.world.emoji.render import GlyphTensors, render_emoji_scenes
from diffdemo.world.emoji.scene import (EmojiScene, caption_for, emoji_caption_words, is_held_out, recaption_any,
                                        sample_emoji_scene)
from diffdemo.world.emoji.subjects import ARTICLES, SYNONYMS, by_name, families, subjects, with_article
from diffdemo.world.render import to_pil
from diffdemo.world.scene import COLOURS, POSITIONS, SHAPES, Scene, all_caption_words, sample_scene

ROOT = Path(__file__).resolve().parents[1]
TILES = ROOT / "tests" / "data" / "emoji"
# the issue's families, each with at least this many subjects
FAMILY_MINIMUM = {"animals": 40, "animal faces": 8, "fruit and vegetables": 20, "food and drink": 30,
                  "vehicles": 25, "sky and weather": 20, "plants and flowers": 15, "buildings and places": 20,
                  "household objects": 40, "musical instruments and music": 8, "sports balls and sports": 10,
                  "faces": 5}


@pytest.fixture(scope="module")
def glyphs():
    return Glyphs.from_folder(TILES)


@pytest.fixture(scope="module")
def checker(glyphs):
    return EmojiChecker(glyphs)


def test_the_table_has_hundreds_of_subjects_in_the_issues_families():
    assert len(subjects()) >= 300
    counts = {family: len(names) for family, names in families().items()}
    assert all(counts.get(family, 0) >= least for family, least in FAMILY_MINIMUM.items()), counts
    assert len({s.name for s in subjects()}) == len(subjects())
    assert len({s.codepoints for s in subjects()}) == len(subjects())


def test_no_flags_keycaps_or_skin_tones():
    for s in subjects():
        points = [int(p, 16) for p in s.codepoints.split("-")]
        assert not any(0x1F1E6 <= p <= 0x1F1FF for p in points), s  # regional indicators: flags
        assert 0x20E3 not in points and 0x1F3F4 not in points, s  # keycaps, subdivision flags
        assert not any(0x1F3FB <= p <= 0x1F3FF for p in points), s  # skin-tone modifiers


def test_names_are_plain_lower_case_english():
    for s in subjects():
        assert re.fullmatch(r"[a-z0-9][a-z0-9 -]*", s.name), s.name
        assert s.name not in SHAPES and not any(s.name == f"{c} {shape}" for c in COLOURS for shape in SHAPES)


def test_synonyms_name_subjects_and_clash_with_nothing():
    names = {s.name for s in subjects()}
    grammar = all_caption_words()
    for word, name in SYNONYMS.items():
        assert name in names, (word, name)
        assert word not in names and word not in grammar, word
    assert by_name()["automobile"].spellings == ("automobile", "auto", "car")
    assert "donut" in by_name()["doughnut"].spellings


@pytest.mark.parametrize("phrase, expected", [
    ("automobile", "an automobile"), ("unicorn", "a unicorn"), ("hourglass", "an hourglass"), ("owl", "an owl"),
    ("panda", "a panda"), ("grapes", "grapes"), ("milky way", "the milky way"), ("soccer ball", "a soccer ball"),
    ("ufo", "a ufo"), ("cat face", "a cat face"), ("red apple", "a red apple"),
])
def test_articles_read_as_english(phrase, expected):
    assert with_article(phrase) == expected


def test_captions_follow_the_grammar_with_the_subject_in_the_shapes_place():
    rng = random.Random(0)
    words = emoji_caption_words()
    scenes = [sample_emoji_scene(rng) for _ in range(500)]
    for s in scenes:
        assert set(s.caption.replace("-", " ").split()) <= {w for p in words for w in p.replace("-", " ").split()}
        assert any(spelling in s.caption for spelling in by_name()[s.subject].spellings), s.caption
        assert s.subject == "shooting star" or not set(s.caption.split()) & set(SHAPES), s.caption
    plain = EmojiScene("rocket", "blue", "small", "top left", 0.25, 0.25, 0.12,
                       frozenset({"size", "position", "background"}))
    assert caption_for(plain) == "a small rocket in the top left corner on a blue background"
    assert caption_for(replace(plain, subject="automobile", mentioned=frozenset())) == "an automobile"
    assert caption_for(replace(plain, subject="grapes", mentioned=frozenset({"size"}))) == "small grapes"
    cars = [sample_emoji_scene(rng, fixed={"subject": "automobile"}).caption.split() for _ in range(80)]
    assert any("automobile" in c for c in cars) and any("car" in c or "auto" in c for c in cars)


def test_sampling_is_seeded():
    first = [sample_emoji_scene(random.Random(5)) for _ in range(3)]
    assert first[0] == first[1] == first[2]
    rng1, rng2 = random.Random(9), random.Random(9)
    assert [sample_emoji_scene(rng1) for _ in range(50)] == [sample_emoji_scene(rng2) for _ in range(50)]


def test_training_scenes_are_never_held_out_and_held_out_ones_always_are():
    from diffdemo.world.checker import _position_name

    rng = random.Random(1)
    for _ in range(3000):
        s = sample_emoji_scene(rng)
        subject = by_name()[s.subject]
        assert not is_held_out(s.subject, s.background, s.position), s
        assert _position_name(s.cx, s.cy) != subject.held_out_position, s  # also where the caption says nothing
    held = [sample_emoji_scene(rng, held_out=True) for _ in range(300)]
    assert all(is_held_out(s.subject, s.background, s.position) for s in held)
    # the caption asks for the held-out combination
    for s in held:
        subject = by_name()[s.subject]
        asks = ("background" in s.mentioned and s.background == subject.held_out_background) or \
            ("position" in s.mentioned and s.position == subject.held_out_position)
        assert asks, s
    assert {s.held_out_position for s in subjects()} == set(POSITIONS)
    assert {s.held_out_background for s in subjects()} == set(COLOURS)


def test_docs_list_every_subject_synonym_and_held_out_combination():
    page = (ROOT / "docs" / "EMOJI.md").read_text(encoding="utf-8")
    assert f"{len(subjects())} subjects" in page
    for s in subjects():
        assert f"| {with_article(s.name)} | {s.held_out_position} | {s.held_out_background} |" in page, s.name
    for word, name in SYNONYMS.items():
        assert f"| {word} | {name} |" in page
    assert set(ARTICLES) <= {sp for s in subjects() for sp in s.spellings}


def test_rendering_puts_the_glyph_at_the_scenes_size_and_place(glyphs):
    tensors = GlyphTensors(glyphs)
    scene = EmojiScene("panda", "blue", "large", "top left", 0.3, 0.35, 0.2)
    image = render_emoji_scenes([scene], tensors, 128)
    assert image.shape == (1, 3, 128, 128) and -1 <= image.min() and image.max() <= 1
    pixels = ((image[0] + 1) / 2).permute(1, 2, 0).numpy()
    bg = np.array(COLOURS["blue"]) / 255
    ys, xs = np.nonzero(np.abs(pixels - bg).max(-1) > 0.02)
    assert abs(max(np.ptp(ys), np.ptp(xs)) + 1 - 0.4 * 128) <= 2  # longer side = 2 · radius · size
    assert abs((xs.min() + xs.max() + 1) / 256 - 0.3) < 0.02 and abs((ys.min() + ys.max() + 1) / 256 - 0.35) < 0.02
    assert np.allclose(pixels[-1, -1], bg, atol=1e-6)  # exact background without rng jitter


def test_the_checker_reads_clean_renders_at_least_98_percent(checker):
    found = clean_accuracy(checker, 200, seed=3)
    assert found["subject"] >= 0.98, found
    assert found["background"] >= 0.98 and found["size"] >= 0.98 and found["position"] >= 0.98, found


def test_read_back_through_a_round_trip_scores_what_comes_out(checker, tiny_model_dir):
    """``through``: the identity reads as the clean renders do (infinite PSNR aside); a round trip that keeps only
    the background loses every subject; an untrained autoencoder's round trip runs and reports its PSNR."""
    from diffdemo.world.emoji.checker import autoencoder_round_trip

    clean = clean_accuracy(checker, 64, seed=5)
    same = clean_accuracy(checker, 64, seed=5, through=lambda x: x.clone())
    assert {k: same[k] for k in ("subject", "background", "size", "position")} == \
        {k: clean[k] for k in ("subject", "background", "size", "position")}
    flat = clean_accuracy(checker, 64, seed=5, through=lambda x: x[:, :, :1, :1].expand_as(x).clone())
    assert flat["subject"] == 0.0 and flat["background"] >= 0.95 and flat["round_trip_psnr_db"] < 25
    untrained = clean_accuracy(checker, 16, seed=5, through=autoencoder_round_trip(str(tiny_model_dir / "vae")))
    assert 0 < untrained["round_trip_psnr_db"] < 40 and 0 <= untrained["subject"] <= 1


def test_a_decoders_stray_pixels_at_the_edge_do_not_move_the_object(checker, glyphs):
    """A few off-colour pixels in a corner (as a weak decoder leaves them) change neither subject, size nor
    position; a real object there still counts."""
    rng = random.Random(7)
    scene = next(s for s in (sample_emoji_scene(rng, mention_prob=1.0, names=glyphs.names) for _ in range(500))
                 if s.position == "top left" and s.size == "small")
    pixels = np.asarray(to_pil(render_emoji_scenes([scene], checker.tensors))[0]).copy()
    before = checker.judge(pixels)
    speckled = pixels.copy()
    speckled[-2:, -2:] = speckled[:2, :3] = 255 - pixels[0, 0]  # two specks of 4 and 6 pixels
    after = checker.judge(speckled)
    assert all(score(scene, after).values()) and replace(after, error=0) == replace(before, error=0)
    speckled[-12:, -12:] = 255 - pixels[0, 0]  # a 144-pixel blob is part of the picture
    assert checker.judge(speckled).position != "top left"


def test_the_checker_scores_only_what_the_caption_asks(checker, glyphs):
    scene = sample_emoji_scene(random.Random(2), mention_prob=0.0, names=glyphs.names)
    judgement = checker.judge(to_pil(render_emoji_scenes([scene], checker.tensors))[0])
    assert set(score(scene, judgement)) == {"subject"}
    blank = checker.judge(np.full((128, 128, 3), 40, np.uint8))
    assert blank.subject is None and blank.background == "black"


def test_the_world_stream_mixes_emoji_in_by_share_and_is_unchanged_without(glyphs):
    from diffdemo.world.training import WorldStream

    scenes, images = WorldStream(0, 64, torch.device("cpu"), emoji_share=0.5, glyphs=glyphs).batch(200)
    assert images.shape == (200, 3, 64, 64)
    emoji = [s for s in scenes if isinstance(s, EmojiScene)]
    assert 0.35 < len(emoji) / len(scenes) < 0.65 and {s.subject for s in emoji} <= set(glyphs.names)
    assert all(not is_held_out(s.subject, s.background, s.position) for s in emoji)
    rng = random.Random(4)
    shapes_only, _ = WorldStream(4, 64, torch.device("cpu")).batch(20)
    assert shapes_only == [sample_scene(rng) for _ in range(20)]  # today's stream, draw for draw
    mixed_rng = random.Random(0)
    assert all(recaption_any(s, mixed_rng).caption for s in scenes)
    assert isinstance(recaption_any(shapes_only[0], mixed_rng), Scene)


@pytest.mark.slow
def test_a_tiny_training_run_with_emoji_writes_their_vocabulary(tmp_path):
    """Tokenizer and U-Net stages of the tiny preset with half the world scenes emoji (tiles: the committed few)."""
    import json
    import shutil

    from transformers import CLIPTokenizer

    from diffdemo.world import train

    data = tmp_path / "data"
    shutil.copytree(TILES, data / "emoji")
    out = tmp_path / "run"
    train.main(["--preset", "tiny", "--stages", "tokenizer,vae,unet", "--device", "cpu", "--out", str(out),
                "--emoji-share", "0.5", "--data-dir", str(data)])
    vocabulary = json.loads((out / "model" / "vocabulary.json").read_text())
    assert {"panda", "automobile", "car", "circle", "background"} <= set(vocabulary["words"])
    assert "an automobile" in vocabulary["subjects"]["vehicles"]
    tokenizer = CLIPTokenizer.from_pretrained(out / "model" / "tokenizer")
    assert tokenizer.tokenize("a panda on a blue background") == [
        w + "</w>" for w in "a panda on a blue background".split()]
    assert json.loads((out / "logs" / "unet.json").read_text())["config"]["emoji_share"] == 0.5


def test_evaluation_scores_a_model_that_knows_emoji(tiny_models, checker):
    from diffdemo.world.emoji.evaluate import emoji_adherence, knows_emoji
    from diffdemo.world.vocabulary import grammar_vocabulary

    assert not knows_emoji(tiny_models)  # no vocabulary file: nothing says it learned emoji
    assert not knows_emoji(replace(tiny_models, vocabulary=grammar_vocabulary()))
    assert knows_emoji(replace(tiny_models, vocabulary=grammar_vocabulary(with_emoji=True)))
    found, images, scenes = emoji_adherence(tiny_models, checker, 3, held_out=True, seed=0, steps=1, guidance=2.0,
                                            sampler="DDIM")
    assert len(images) == len(scenes) == 3 and all(s.subject in checker.names for s in scenes)
    assert 0 <= found["subject"] <= 1 and set(found["subject_by_family"]) <= set(families())
