"""Trajectory downloads: MP4 videos of x_t and x̂_0, and one call that writes every export of a recorded run.

Exports are the only place a whole run is decoded: each kept frame of a view is decoded once (VAE or the fast
linear map, as the run was recorded) and cached on the run, so scrubbing afterwards is free.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from diffdemo.tasks.trajectory import TrajectoryRun, contact_sheet, export_gif, labelled_frames, save_run

MACRO_BLOCK = 16  # H.264 codes 16×16 blocks; frames are padded to a multiple so ffmpeg never rescales them
MIN_VIDEO_WIDTH = 256  # small frames (the embedded model's 128 px) are enlarged, pixel-exact, to stay watchable


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
