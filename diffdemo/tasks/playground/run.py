"""The 2-D playground task: train (or reuse) a point denoiser, then record the forward and the reverse process.

Maths map (Sohl-Dickstein et al. 2015; Ho et al. 2020; Song et al. 2021), points ``N×2``:
  x_t        a point at timestep t; q(x_t|x_0) = N(√ᾱ_t·x_0, (1−ᾱ_t)·I), so x_T ≈ N(0, I)
  eps        ε̂ = ε_θ(x_t, t), the network's guess of the noise in x_t
  score      s_θ(x, t) = −ε̂/√(1−ᾱ_t) ≈ ∇_x log p_t(x): where density rises, i.e. where the reverse chain pushes
Sampling is the engine's one denoise loop with a diffusers DDPMScheduler/DDIMScheduler; the recording is a callback.
Frames: frame 0 is x_T (pure noise), frame i is the sample after i reverse steps, the last frame is x_0.
"""
from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch

from diffdemo.engine.sampling import StepCallback, combine_callbacks, denoise_loop, make_scheduler
from diffdemo.engine.threads import one_thread
from diffdemo.tasks.common import TaskResult, as_number, check_choice, library_versions, resolve_seed
from diffdemo.tasks.playground import model as point_model
from diffdemo.tasks.playground.data import DATASETS, DEFAULT_DATASET, LIMIT, REFERENCE_POINTS, mean_distance, sample
from diffdemo.tasks.playground.render import frame_image, overview_image

PLAYGROUND_SAMPLERS = ("DDPM", "DDIM")  # ancestral (adds fresh noise every step) / deterministic
MAX_STEPS, MAX_POINTS, MAX_ITERATIONS = 250, 3000, 10_000
GRID = 21  # score arrows per side
REFERENCE_SEED = 2015  # the dense data sample distances are measured to is the same for every run


@dataclass(frozen=True)
class PlaygroundRequest:
    """``dataset``: one of :data:`DATASETS`; ``sampler``: DDPM or DDIM; ``steps``: reverse steps (1–250);
    ``points``: samples drawn (10–3000); ``iterations``: training steps (10–10,000); ``seed``: −1 = random.

    The model is trained from ``seed`` (so it is reused for any sampler, steps or points); sampling draws from
    ``seed + 1``."""

    dataset: str = DEFAULT_DATASET
    sampler: str = "DDPM"
    steps: int = 50
    points: int = 1000
    seed: int = 0
    iterations: int = 2000


@dataclass
class PlaygroundRun:
    """One recorded run; F = steps + 1 frames, P points, arrays are float32 numpy.

    ``data`` P×2 and ``forward`` F×P×2 (q(x_t|x_0) of ``data`` at each frame's t, one ε per point); ``reverse``
    F×P×2 (the samples); ``grid`` G×G×2 and ``score`` F×G×G×2 (s_θ at each frame's t; the last frame reuses the
    last step's t); ``timesteps`` and ``alpha_bars``: F values, the last frame being t = 0 with ᾱ = 1."""

    request: PlaygroundRequest
    data: np.ndarray
    forward: np.ndarray
    reverse: np.ndarray
    grid: np.ndarray
    score: np.ndarray
    timesteps: list
    alpha_bars: list
    metadata: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.timesteps)


class Bounded:
    """A thread-safe least-recently-used memory holding at most ``size`` values."""

    def __init__(self, size: int):
        self.size, self._items, self._lock = size, OrderedDict(), threading.Lock()

    def get(self, key):
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
            return self._items.get(key)

    def put(self, key, value) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)


@dataclass
class PlaygroundCache:
    """Trained models by (dataset, seed, iterations) and finished runs by request, both bounded."""

    models: Bounded = field(default_factory=lambda: Bounded(8))
    runs: Bounded = field(default_factory=lambda: Bounded(8))

    def trained(self, dataset: str, seed: int, iterations: int) -> tuple[point_model.TrainedModel, bool]:
        """The model for these settings and whether it came from memory (else it is trained now)."""
        key = (dataset, seed, iterations)
        found = self.models.get(key)
        if found is None:
            found = point_model.train(dataset, seed, iterations)
            self.models.put(key, found)
            return found, False
        return found, True


def validate(request: PlaygroundRequest) -> PlaygroundRequest:
    """Returns the request with numbers normalised and the seed drawn; raises InvalidRequest."""
    check_choice("data set", request.dataset, DATASETS)
    check_choice("sampler", request.sampler, PLAYGROUND_SAMPLERS)
    return replace(request, steps=as_number("steps", request.steps, integer=True, low=1, high=MAX_STEPS),
                   points=as_number("points", request.points, integer=True, low=10, high=MAX_POINTS),
                   iterations=as_number("iterations", request.iterations, integer=True, low=10,
                                        high=MAX_ITERATIONS),
                   seed=resolve_seed(request.seed))


def playground(models, request: PlaygroundRequest, callback: StepCallback | None = None, *,
               cache: PlaygroundCache | None = None) -> TaskResult:
    """Trains (or reuses from ``cache``) the point denoiser and records one run; ``models`` is not used.

    ``images``: the last frame and the overview figure (PIL, see :mod:`.render`); ``run``: the
    :class:`PlaygroundRun`; metadata: settings, timings, losses and distances of noise/samples to the data, and
    whether the model (``reused_model``) or the whole run (``reused_run``) came from memory.
    """
    request = validate(request)
    cache = cache or PlaygroundCache()
    run = held = cache.runs.get(request)
    if run is None:
        with one_thread():
            trained, reused = cache.trained(request.dataset, request.seed, request.iterations)
            run = record_run(trained, request, callback)
            run.metadata = describe(request, trained, reused, run)
        cache.runs.put(request, run)
    return TaskResult(images=[frame_image(run, len(run) - 1), overview_image(run)],
                      metadata={**run.metadata, "reused_run": held is not None}, run=run)


def record_run(trained: point_model.TrainedModel, request: PlaygroundRequest,
               callback: StepCallback | None = None) -> PlaygroundRun:
    """Samples ``request.points`` points through the engine's denoise loop, keeping x after every step."""
    started = time.perf_counter()
    generator = torch.Generator("cpu").manual_seed(request.seed + 1)
    scheduler = make_scheduler(request.sampler, point_model.noise_scheduler().config)
    scheduler.set_timesteps(request.steps)
    x_T = torch.randn(request.points, 2, generator=generator)
    frames = [x_T]

    def keep(step) -> None:
        frames.append(step.latents.clone())

    with torch.inference_mode():
        denoise_loop(scheduler, trained.net, x_T, generator=generator, callback=combine_callbacks(keep, callback))
        timesteps = [int(t) for t in scheduler.timesteps] + [0]
        alpha_bars = [float(scheduler.alphas_cumprod[t]) for t in timesteps[:-1]] + [1.0]
        data = sample(request.dataset, request.points, generator)
        eps = torch.randn(request.points, 2, generator=generator)
        forward = [scheduler.add_noise(data, eps, torch.tensor(t)) for t in timesteps[:-1]] + [data]
        # the score at ᾱ = 1 is undefined: the last frame (x_0) shows the field of the last step's t
        grid, score = score_field(trained.net, timesteps[:-1] + [timesteps[-2]], alpha_bars[:-1] + [alpha_bars[-2]])
    run = PlaygroundRun(request=request, data=data.numpy(), forward=torch.stack(forward).numpy(),
                        reverse=torch.stack(frames).numpy(), grid=grid, score=score, timesteps=timesteps,
                        alpha_bars=alpha_bars)
    run.metadata["sample_seconds"] = round(time.perf_counter() - started, 3)
    return run


def score_field(net, timesteps: list, alpha_bars: list) -> tuple[np.ndarray, np.ndarray]:
    """The learned score s_θ(x, t) = −ε̂/√(1−ᾱ_t) on a GRID×GRID lattice over the view, for each t.

    Returns the lattice ``G×G×2`` and the scores ``F×G×G×2`` (one network call for all frames)."""
    axis = torch.linspace(-LIMIT, LIMIT, GRID + 2)[1:-1]  # no arrows on the border
    grid = torch.stack(torch.meshgrid(axis, axis, indexing="xy"), dim=-1)
    points = grid.reshape(1, -1, 2).expand(len(timesteps), -1, -1).reshape(-1, 2)
    t = torch.tensor(timesteps).repeat_interleave(GRID * GRID)
    scale = torch.tensor([(1 - a) ** 0.5 for a in alpha_bars]).repeat_interleave(GRID * GRID)[:, None]
    score = -net(points, t) / scale
    return grid.numpy(), score.reshape(len(timesteps), GRID, GRID, 2).numpy()


def describe(request: PlaygroundRequest, trained, reused: bool, run: PlaygroundRun) -> dict:
    """Settings, timings, loss at the start/end of training and mean nearest-neighbour distances to the data."""
    reference = sample(request.dataset, REFERENCE_POINTS, torch.Generator("cpu").manual_seed(REFERENCE_SEED))
    distance = {name: round(mean_distance(torch.from_numpy(points), reference), 4)
                for name, points in (("noise", run.reverse[0]), ("samples", run.reverse[-1]), ("data", run.data))}
    losses = trained.losses
    head, tail = max(1, min(50, len(losses) // 10)), max(1, min(200, len(losses) // 5))
    stride = max(1, len(losses) // 100)
    curve = [{"iteration": i + 1, "loss": round(float(np.mean(losses[max(0, i - stride + 1): i + 1])), 4)}
             for i in range(stride - 1, len(losses), stride)]
    return {"task": "playground", **asdict(request), "train_seconds": round(trained.seconds, 3),
            "reused_model": reused, "sample_seconds": run.metadata.get("sample_seconds"),
            "loss_start": round(float(np.mean(losses[:head])), 4), "loss_end": round(float(np.mean(losses[-tail:])), 4),
            "distance_to_data": distance, "loss_curve": curve, "schedule": point_model.SCHEDULE,
            "network": f"MLP, 3 residual SiLU blocks of width {point_model.HIDDEN}, ε-prediction",
            "versions": library_versions()}
