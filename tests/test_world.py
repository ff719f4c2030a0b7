"""The shape world: scenes, captions, held-out combinations, rendering, the checker and the training script."""
from __future__ import annotations

import json
import random
import shutil

import numpy as np
import pytest
import torch

from diffdemo.world import train
from diffdemo.world.checker import judge, score
from diffdemo.world.render import render_scenes, to_pil
from diffdemo.world.scene import (COLOURS, HELD_OUT_COLOUR_SHAPE, HELD_OUT_COLOURS_ON, HELD_OUT_SHAPE_POSITION,
                                  SHAPES, all_caption_words, caption_for, is_held_out, sample_scene)


def test_sample_scene_is_deterministic():
    a = [sample_scene(random.Random(123)) for _ in range(3)]
    rng1, rng2 = random.Random(7), random.Random(7)
    first = [sample_scene(rng1) for _ in range(100)]
    second = [sample_scene(rng2) for _ in range(100)]
    assert first == second
    assert a[0] == a[1] == a[2]
    assert first != [sample_scene(random.Random(8)) for _ in range(100)]


@pytest.fixture(scope="module")
def training_scenes():
    rng = random.Random(0)
    return [sample_scene(rng) for _ in range(2000)]


def test_training_scenes_never_held_out(training_scenes):
    for s in training_scenes:
        assert not is_held_out(s.shape, s.colour, s.background, s.position), s
        assert (s.colour, s.shape) not in HELD_OUT_COLOUR_SHAPE
        assert (s.colour, s.background) not in HELD_OUT_COLOURS_ON
        assert (s.shape, s.position) not in HELD_OUT_SHAPE_POSITION
        assert s.colour != s.background
    # the stream still covers the whole vocabulary
    assert {s.shape for s in training_scenes} == set(SHAPES)
    assert {s.colour for s in training_scenes} == set(COLOURS)


def test_held_out_scenes_are_always_held_out():
    rng = random.Random(1)
    scenes = [sample_scene(rng, held_out=True) for _ in range(300)]
    assert all(is_held_out(s.shape, s.colour, s.background, s.position) for s in scenes)
    assert any((s.colour, s.shape) in HELD_OUT_COLOUR_SHAPE for s in scenes)
    assert any((s.colour, s.background) in HELD_OUT_COLOURS_ON for s in scenes)
    assert any((s.shape, s.position) in HELD_OUT_SHAPE_POSITION for s in scenes)


def test_captions_name_the_shape_and_use_the_grammar(training_scenes):
    vocabulary = all_caption_words()
    for s in training_scenes:
        words = s.caption.split()
        assert s.shape in words, s.caption
        assert words[0] in ("a", "an")
        assert set(words) <= vocabulary, s.caption
        if "background" in s.mentioned:
            assert s.background in words, s.caption
        if "colour" not in s.mentioned:
            # the shape's colour can only appear as the background's
            assert s.colour not in words or s.colour == s.background, s.caption


def test_fixed_attributes_are_pinned_and_mentioned():
    fixed = dict(shape="star", colour="yellow", background="purple", size="large", position="left")
    s = sample_scene(random.Random(0), fixed=fixed)
    assert (s.shape, s.colour, s.background, s.size, s.position) == tuple(fixed.values())
    assert {"colour", "background", "size", "position"} <= s.mentioned
    assert caption_for(s) == "a large yellow star on the left on a purple background"


def test_render_scenes_shape_range_and_colours():
    rng = random.Random(3)
    scenes = [sample_scene(rng) for _ in range(16)]
    images = render_scenes(scenes, 48)
    assert images.shape == (16, 3, 48, 48)
    assert images.dtype == torch.float32
    assert images.min() >= -1 and images.max() <= 1
    for scene, image in zip(scenes, images):
        corner = ((image[:, 0, 0] + 1) * 127.5).round().tolist()  # shapes never reach the corners
        assert corner == list(COLOURS[scene.background])
        cx, cy = int(scene.cx * 48), int(scene.cy * 48)
        centre = ((image[:, cy, cx] + 1) * 127.5).round().tolist()
        assert centre == list(COLOURS[scene.colour]), scene
    jittered = render_scenes(scenes, 48, rng=random.Random(0))
    assert jittered.shape == images.shape and jittered.min() >= -1 and jittered.max() <= 1
    assert not torch.equal(jittered, images)
    assert (jittered - images).abs().max() <= 2 * 8 / 255 + 1e-6  # the ±8 colour jitter


def test_checker_is_perfect_on_clean_renders():
    rng = random.Random(5)
    scenes = [sample_scene(rng, mention_prob=1.0) for _ in range(150)]
    scenes += [sample_scene(rng, held_out=True, mention_prob=1.0) for _ in range(50)]
    images = to_pil(render_scenes(scenes, 128))
    wrong = []
    for scene, image in zip(scenes, images):
        result = score(scene, judge(image))
        assert set(result) == {"shape", *scene.mentioned}
        if not all(result.values()):
            wrong.append((scene.caption, result))
    assert wrong == []


def test_strict_reading_passes_clean_renders_and_fails_cushions_and_blobs():
    """The strict geometric reading: every clean render passes; a square with rounded corners (a cushion) and a
    star without points (a blob) fail it, though the best-template checker may still name them right."""
    from PIL import Image, ImageDraw

    from diffdemo.world.checker import strict_reading

    rng = random.Random(6)
    scenes = [sample_scene(rng) for _ in range(200)]
    passed = [strict_reading(image, scene.shape)["passes"] for scene, image in
              zip(scenes, to_pil(render_scenes(scenes, 128)))]
    assert sum(passed) / len(passed) >= 0.98
    cushion = Image.new("RGB", (128, 128), (40, 80, 220))
    ImageDraw.Draw(cushion).rounded_rectangle((34, 34, 94, 94), radius=18, fill=(245, 220, 40))
    assert judge(cushion).shape == "square" and not strict_reading(cushion, "square")["passes"]
    blob = Image.new("RGB", (128, 128), (20, 20, 20))
    ImageDraw.Draw(blob).ellipse((40, 40, 88, 88), fill=(220, 40, 40))
    assert not strict_reading(blob, "star")["passes"]


def test_the_vae_strict_ceiling_reads_the_round_trips_of_renders():
    """A perfect autoencoder leaves the strict reading of clean renders (≥ 98%); one that blurs rounds corners and
    fills the star's points, and the ceiling falls."""
    import torch.nn.functional as F

    from diffdemo.world.evaluate import vae_strict_ceiling

    class Autoencoder:
        def __init__(self, blur: int):
            self.blur, self.config = blur, type("Config", (), {"sample_size": 128})()

        def encode(self, x):
            return type("Encoded", (), {"latent_dist": type("Dist", (), {"mode": lambda _: x})()})()

        def decode(self, z):
            if self.blur:
                z = F.avg_pool2d(z, 2 * self.blur + 1, stride=1, padding=self.blur, count_include_pad=False)
            return type("Decoded", (), {"sample": z})()

    exact, blurred = vae_strict_ceiling(Autoencoder(0), n=40), vae_strict_ceiling(Autoencoder(6), n=40)
    assert exact["strict_geometry"] >= 0.95 and set(exact["strict_by_shape"]) <= set(SHAPES)
    assert exact["shape"] >= 0.95 and sum(exact["shape_misses"].values()) == round(40 * (1 - exact["shape"]))
    assert blurred["strict_geometry"] < exact["strict_geometry"] - 0.2
    assert blurred["shape"] < exact["shape"] and all(k.split("/")[0] in SHAPES for k in blurred["shape_misses"])


@pytest.mark.slow
def test_evaluate_vae_only_reads_the_round_trips_of_a_model_folder(tiny_model_dir, tmp_path, capsys):
    import json

    from diffdemo.world.evaluate import main

    out = tmp_path / "vae.json"
    main([str(tiny_model_dir.parent), "--vae-only", "--json", str(out)])
    results = json.loads(out.read_text())
    assert json.loads(capsys.readouterr().out) == results and set(results) == {"vae_psnr_db", "vae_round_trip"}
    trip = results["vae_round_trip"]
    assert 0 <= trip["shape"] <= 1 and 0 <= trip["strict_geometry"] <= 1 and results["vae_psnr_db"] > 0
    assert sum(trip["shape_misses"].values()) == round(200 * (1 - trip["shape"]))


def test_checker_sees_an_empty_image():
    from PIL import Image

    j = judge(Image.new("RGB", (128, 128), COLOURS["blue"]))
    assert j.shape is None and j.background == "blue"


def loss_curve(out, stage):
    record = json.loads((out / "logs" / f"{stage}.json").read_text())
    return [[step, round(loss, 3)] for step, loss in record["log"]["loss_curve"]]


def vocabulary(out):
    return json.loads((out / "model" / "tokenizer" / "tokenizer.json").read_text())["model"]["vocab"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """``python -m diffdemo.world.train --preset tiny`` with the stages that make a loadable text-to-image model."""
    out = tmp_path_factory.mktemp("train") / "first"
    train.main(["--preset", "tiny", "--out", str(out), "--stages", "tokenizer,vae,unet,tiny_vae,assemble",
                "--device", "cpu"])
    return out


@pytest.mark.slow
def test_tiny_training_run_is_loadable(tiny_run):
    from diffusers import StableDiffusionPipeline
    from safetensors import safe_open

    for stage in ("tokenizer", "vae", "unet", "tiny_vae", "assemble"):
        assert (tiny_run / "logs" / f"{stage}.json").exists()
    curve = loss_curve(tiny_run, "unet")
    assert [step for step, _ in curve] == list(range(1, train.TINY.unet_steps + 1))
    assert all(np.isfinite(loss) for _, loss in curve)
    with safe_open(tiny_run / "model" / "unet" / "diffusion_pytorch_model.safetensors", "pt") as weights:
        assert weights.get_tensor(next(iter(weights.keys()))).dtype == torch.float16  # assembled in fp16

    pipe = StableDiffusionPipeline.from_pretrained(str(tiny_run / "model"))
    pipe.set_progress_bar_config(disable=True)
    assert pipe.unet.config.sample_size == 8 and pipe.tokenizer.model_max_length == 24
    assert pipe.text_encoder.dtype == pipe.unet.dtype == torch.float32
    image = pipe("a red circle", num_inference_steps=1, height=64, width=64,
                 generator=torch.Generator().manual_seed(0)).images[0]
    assert image.size == (64, 64)


@pytest.mark.slow
def test_tiny_vae_stage_writes_a_loadable_autoencoder_tiny(tiny_run):
    from diffusers import AutoencoderTiny

    tiny = AutoencoderTiny.from_pretrained(tiny_run / "tiny_vae")
    assert next(tiny.parameters()).dtype == torch.float32  # stored fp16 by assemble, loaded as asked
    record = json.loads((tiny_run / "logs" / "tiny_vae.json").read_text())["log"]
    assert record["steps"] == train.TINY.tiny_vae_steps and np.isfinite(record["psnr_vs_vae_db"])
    with torch.no_grad():
        assert tiny.decode(torch.randn(2, 4, 8, 8)).sample.shape == (2, 3, 64, 64)
        assert tiny.encode(torch.rand(1, 3, 64, 64) * 2 - 1).latents.shape == (1, 4, 8, 8)


@pytest.mark.slow
def test_tiny_training_run_is_reproducible(tiny_run, tmp_path):
    """Same seed, same loss curves (given the same tokenizer: see the next test)."""
    second = tmp_path / "second"
    shutil.copytree(tiny_run / "model" / "tokenizer", second / "model" / "tokenizer")
    train.main(["--preset", "tiny", "--out", str(second), "--stages", "vae,unet", "--device", "cpu"])
    assert loss_curve(second, "vae") == loss_curve(tiny_run, "vae")
    assert loss_curve(second, "unet") == loss_curve(tiny_run, "unet")


@pytest.mark.slow
def test_tokenizer_stage_is_reproducible(tiny_run, tmp_path):
    again = tmp_path / "again"
    train.main(["--preset", "tiny", "--out", str(again), "--stages", "tokenizer", "--device", "cpu"])
    assert vocabulary(again) == vocabulary(tiny_run)


@pytest.mark.slow
def test_upscaler_decoder_stage_tunes_only_the_decoder(tmp_path):
    """``--stages upscaler,upscaler_decoder``: the second stage samples the U-Net, fine-tunes the 4× decoder and
    leaves the encoder (and so the U-Net's latent space) alone."""
    from diffusers import AutoencoderKL

    train.main(["--preset", "tiny", "--out", str(tmp_path), "--stages", "upscaler", "--device", "cpu"])
    before = AutoencoderKL.from_pretrained(tmp_path / "upscaler" / "vae").state_dict()
    train.main(["--preset", "tiny", "--out", str(tmp_path), "--stages", "upscaler_decoder", "--device", "cpu"])
    after = AutoencoderKL.from_pretrained(tmp_path / "upscaler" / "vae").state_dict()
    changed = {name.split(".")[0] for name in before if not torch.equal(before[name], after[name])}
    assert changed == {"decoder", "post_quant_conv"}
    record = json.loads((tmp_path / "logs" / "upscaler_decoder.json").read_text())["log"]
    assert record["steps"] == train.TINY.upscaler_decoder_steps
    for key in ("raw_db", "back_projected_db", "raw_db_before", "back_projected_db_before"):
        assert 0 < record[key] < 100, record


def test_train_rejects_unknown_stage(tmp_path, capsys):
    with pytest.raises(SystemExit):
        train.main(["--preset", "tiny", "--out", str(tmp_path), "--stages", "tokenizer,bogus"])
    assert "bogus" in capsys.readouterr().err


def test_shipped_weights_fit_the_budget():
    """assets/ holds at most 30 MB of weights in all, no file over 16 MiB (a fresh clone downloads all of it)."""
    from pathlib import Path

    files = sorted((Path(__file__).resolve().parents[1] / "assets").rglob("*.safetensors"))
    sizes = {f.relative_to(f.parents[2]).as_posix(): f.stat().st_size for f in files}
    assert len(files) >= 7, sizes  # model: text encoder, VAE, U-Net; upscaler: VAE, U-Net; denoiser; tiny VAE
    assert sum(sizes.values()) <= 30_000_000 and max(sizes.values()) <= 16 * 2**20, sizes
