"""Trajectory exports and recording cost: MP4s read back with the right frame count; a run decodes nothing up front."""
from __future__ import annotations

from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest

from diffdemo.tasks.trajectory import TrajectoryRequest, latent_rgb_matrix, preview, trajectory
from diffdemo.tasks.trajectory_export import MACRO_BLOCK, MIN_VIDEO_WIDTH, export_mp4, export_run

PROMPT = "a large red star on a blue background"


def run_of(models, **settings):
    return trajectory(models, TrajectoryRequest(**{"prompt": PROMPT, "steps": 4, "seed": 7, **settings}))


def read_video(path) -> np.ndarray:
    """All frames of a video, ``K×H×W×3`` uint8."""
    return iio.imread(path, plugin="FFMPEG", index=None)


@pytest.mark.parametrize("view", ["x0", "x_t"])
def test_mp4_has_one_frame_per_kept_step(tiny_models, tmp_path, view):
    run = run_of(tiny_models, steps=5, every=2, decode="fast").run
    path = export_mp4(run, tmp_path / f"{view}.mp4", view)
    frames = read_video(path)
    assert frames.shape[0] == len(run) == 3
    assert frames.shape[1] % MACRO_BLOCK == 0 and frames.shape[2] % MACRO_BLOCK == 0
    assert frames.shape[2] >= MIN_VIDEO_WIDTH
    assert iio.improps(path, plugin="FFMPEG").shape[-1] == 3
    assert frames[0].std() > 1  # a picture, not a blank frame


def test_export_run_writes_every_download(tiny_models, tmp_path):
    run = run_of(tiny_models, decode="fast").run
    paths = export_run(run, tmp_path)
    assert sorted(paths) == ["gif_x0", "gif_x_t", "mp4_x0", "mp4_x_t", "raw", "raw_json", "sheet"]
    assert all(Path(p).is_file() and Path(p).stat().st_size > 0 for p in paths.values())
    assert read_video(paths["mp4_x_t"]).shape[0] == 4
    assert len(run.cache) == 2 * len(run)  # every x̂₀ and x_t frame decoded once, then reused by GIF, MP4, sheet


def count_decodes(models, monkeypatch) -> list:
    calls, decode = [], models.vae.decode
    monkeypatch.setattr(models.vae, "decode", lambda *a, **k: calls.append(1) or decode(*a, **k))
    return calls


def test_recording_decodes_only_the_final_image(tiny_models, monkeypatch):
    latent_rgb_matrix(tiny_models)  # the fast map's base pairs are fitted once per VAE; not part of a run
    calls = count_decodes(tiny_models, monkeypatch)
    result = run_of(tiny_models, steps=6, decode="vae")
    assert calls == [1]  # text_to_image's own decode of the final latents
    frames = result.images
    assert len(frames) == 6 and frames[-1].size == (64, 64) and calls == [1, 1]
    assert [f.size for f in frames[:2]] == [(64, 64)] * 2 and len(calls) == 4
    assert frames[-1] is frames[5] and len(calls) == 4  # cached
    with pytest.raises(IndexError):
        frames[6]
    assert len(list(frames)) == 6


@pytest.mark.parametrize("mode, decodes", [("fast", 0), ("vae", 1)])
def test_preview_modes(tiny_models, monkeypatch, mode, decodes):
    steps = []
    trajectory(tiny_models, TrajectoryRequest(prompt=PROMPT, steps=2, seed=1, decode="fast"), steps.append)
    latent_rgb_matrix(tiny_models)
    calls = count_decodes(tiny_models, monkeypatch)
    image = preview(tiny_models, steps[-1], mode)
    assert image.size == (64, 64) and len(calls) == decodes
