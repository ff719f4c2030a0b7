"""Trajectory downloads: GIFs and MP4 videos of x_t and x̂_0, a contact sheet, and one call that writes every
export of a recorded run (with the raw run, whose format is trajectory.py's save_run).

Exports are the only place a whole run is decoded: each kept frame of a view is decoded once (VAE or the fast
linear map, as the run was recorded) and cached on the run, so scrubbing afterwards is free.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from diffdemo.tasks.trajectory import TrajectoryRun, frame, save_run

MACRO_BLOCK = 16  # H.264 codes 16×16 blocks; frames are padded to a multiple so ffmpeg never rescales them
MIN_VIDEO_WIDTH = 256  # small frames (the embedded model's 128 px) are enlarged, pixel-exact, to stay watchable


def _labelled(image, text: str, height: int = 12):
    """``image`` with a black footer strip carrying ``text`` (also keeps GIF frames distinct, so none merge)."""
    from PIL import Image, ImageDraw

    out = Image.new("RGB", (image.width, image.height + height))
    out.paste(image.convert("RGB"), (0, 0))
    ImageDraw.Draw(out).text((2, image.height), text, fill=(255, 255, 255))
    return out


def labelled_frames(run: TrajectoryRun, view: str = "x0") -> list[np.ndarray]:
    """One ``H+12×W×3`` uint8 array per kept step of ``view``, labelled with its step (for GIF and MP4)."""
    return [np.asarray(_labelled(frame(run, i, view), f"{n['step'] + 1}/{n['total']}"))
            for i, n in enumerate(run.numbers)]


def export_gif(run: TrajectoryRun, path, view: str = "x0", ms_per_frame: int = 120) -> str:
    """An animated GIF of ``view`` with one frame per kept step, each labelled with its step."""
    import imageio.v3 as iio

    iio.imwrite(path, np.stack(labelled_frames(run, view)), extension=".gif", duration=ms_per_frame, loop=0)
    return str(path)


def contact_sheet(run: TrajectoryRun, path, cell: int = 128) -> str:
    """A PNG grid of the kept x̂_0 frames (at most ``cell`` px a side each), labelled with step and t."""
    from PIL import Image

    cols = math.ceil(math.sqrt(len(run)))
    rows = math.ceil(len(run) / cols)
    tiles = []
    for i, n in enumerate(run.numbers):
        image = frame(run, i, "x0").copy()
        image.thumbnail((cell, cell))
        tiles.append(_labelled(image, f"{n['step'] + 1} t={n['t']}"))
    width, height = tiles[0].size
    sheet = Image.new("RGB", (cols * width, rows * height), (40, 40, 40))
    for i, tile in enumerate(tiles):
        sheet.paste(tile, ((i % cols) * width, (i // cols) * height))
    sheet.save(path, format="PNG")
    return str(path)


def video_frames(run: TrajectoryRun, view: str = "x0") -> np.ndarray:
    """``K×H'×W'×3`` uint8: the labelled frames of ``view``, enlarged ×n (nearest) to at least
    :data:`MIN_VIDEO_WIDTH` px wide, then padded with black to multiples of :data:`MACRO_BLOCK`."""
    frames = np.stack(labelled_frames(run, view))
    factor = max(1, -(-MIN_VIDEO_WIDTH // frames.shape[2]))
    frames = frames.repeat(factor, axis=1).repeat(factor, axis=2)
    pad_h, pad_w = (-frames.shape[1]) % MACRO_BLOCK, (-frames.shape[2]) % MACRO_BLOCK
    return np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)))


def export_mp4(run: TrajectoryRun, path, view: str = "x0", fps: int = 8) -> str:
    """An H.264 MP4 (yuv420p, plays in browsers) of ``view`` with one frame per kept step, each labelled with its
    step. Needs the ``imageio-ffmpeg`` package (it ships the ffmpeg binary)."""
    import imageio.v3 as iio

    iio.imwrite(path, video_frames(run, view), extension=".mp4", fps=fps, codec="libx264",
                macro_block_size=MACRO_BLOCK, pixelformat="yuv420p")
    return str(path)


def export_run(run: TrajectoryRun, folder) -> dict[str, str]:
    """Writes every download of ``run`` into ``folder``; returns their paths by name: ``gif_x0``, ``gif_x_t``,
    ``mp4_x0``, ``mp4_x_t``, ``sheet`` (PNG), ``raw`` (.safetensors) and ``raw_json``. Decodes every kept x̂_0
    and x_t frame once (cached on the run)."""
    folder = Path(folder)
    paths = {}
    for view in ("x0", "x_t"):
        paths[f"gif_{view}"] = export_gif(run, folder / f"trajectory-{view}.gif", view)
        paths[f"mp4_{view}"] = export_mp4(run, folder / f"trajectory-{view}.mp4", view)
    paths["sheet"] = contact_sheet(run, folder / "trajectory-sheet.png")
    paths["raw"], paths["raw_json"] = save_run(run, folder / "trajectory-run.safetensors")
    return paths
