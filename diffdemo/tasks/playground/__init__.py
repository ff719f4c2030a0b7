"""The 2-D playground (Sohl-Dickstein et al. 2015's demonstration): a tiny diffusion model on toy point sets.

data.py: the point sets; model.py: the MLP denoiser and its training; run.py: the task (training cached, sampling
through the engine's loop, every step recorded); render.py: PIL drawings of a run.
"""
from diffdemo.tasks.playground.data import DATASETS, DEFAULT_DATASET
from diffdemo.tasks.playground.render import frame_image, frame_size, overview_image
from diffdemo.tasks.playground.run import (PLAYGROUND_SAMPLERS, PlaygroundCache, PlaygroundRequest, PlaygroundRun,
                                           playground)

__all__ = ["DATASETS", "DEFAULT_DATASET", "PLAYGROUND_SAMPLERS", "PlaygroundCache", "PlaygroundRequest",
           "PlaygroundRun", "frame_image", "frame_size", "overview_image", "playground"]
