"""Trajectory viewer: record x_t and x̂_0 at every step of one text-to-image run, scrub, save the raw run (the GIFs,
videos and contact sheet are in trajectory_export.py).

Maths map (Ho et al. 2020; Song et al. 2021), latents scaled as the U-Net sees them (``C×h×w``):
  x_t        the sample entering step i (at timestep t_i); step 0's is the initial noise
  alpha_bar  ᾱ_t; VP form x_t = √ᾱ·x_0 + √(1−ᾱ)·ε;  sigma σ_t = √((1−ᾱ)/ᾱ);  SNR = ᾱ/(1−ᾱ) = 1/σ²
  x0         x̂_0, the model's estimate of the clean latents at step i (as the loop's callback reports it)
  eps        ε̂ = (x_t − √ᾱ·x̂_0)/√(1−ᾱ), derived on demand, never computed per step. Euler-type samplers keep
             x in the VE form x = x_0 + σ·ε; dividing by √(1+σ²) (= multiplying by √ᾱ) gives the VP form first.
The recorder is "just a callback" on text_to_image's one loop: it only keeps what each Step already holds.
"""
from __future__ import annotations

import json
import math
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from diffdemo.engine.images import decode_latents, encode_pixels, initial_noise, pil_to_tensor, tensor_to_pil
from diffdemo.engine.loading import ModelSet
from diffdemo.engine.sampling import Step, StepCallback, combine_callbacks, make_scheduler
from diffdemo.engine.threads import single_threaded_beside
from diffdemo.tasks.common import InvalidRequest, TaskResult, as_number
from diffdemo.tasks.settings import MAX_STEPS, PromptSettings
from diffdemo.tasks.text_to_image import TextToImageRequest, text_to_image
from diffdemo.tasks.text_to_image import validate as validate_text_to_image

DECODE_MODES = ("vae", "tiny", "fast")  # exact VAE decode, the distilled tiny VAE, the linear map
VIEWS = ("x_t", "x0", "eps")
EULER_TYPE = ("Euler", "Euler a")  # samplers whose x is in the VE form x_0 + σ·ε
_LATENT_RGB: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # vae -> the fast decoder's base pairs


@dataclass(frozen=True)
class TrajectoryRequest(PromptSettings):
    """Text-to-image settings for one image plus ``decode`` ("vae", "tiny" VAE or "fast" linear map) and ``every``
    (keep steps 0, N, 2N, …: ceil(steps/N) frames). ``seed`` -1 means random."""

    seed: int = -1
    decode: str = "vae"
    every: int = 1


def snr_of(alpha_bar: float) -> float:
    """ᾱ/(1−ᾱ): 0 at pure noise, inf at ᾱ = 1."""
    return math.inf if alpha_bar >= 1 else alpha_bar / (1 - alpha_bar)


class TrajectoryRecorder:
    """A step callback keeping, for each kept step, x_t (the step's input) and x̂_0 in float16, plus t, σ, ᾱ, SNR
    and the guidance scale. ``initial`` is the loop's starting sample (x_t of step 0). Kept tensors stay on the
    model's device during the run (a copy to the CPU per step would sync a GPU every step); ``x_t``/``x0`` give
    them on the CPU, moved in one copy."""

    def __init__(self, initial: torch.Tensor, *, every: int = 1, guidance_scale: float = 0.0,
                 euler_type: bool = False):
        self.every, self.guidance_scale, self.euler_type = every, guidance_scale, euler_type
        self._x_t: list[torch.Tensor] = []
        self._x0: list[torch.Tensor] = []
        self.numbers: list[dict] = []
        self._previous = initial  # a reference only; copied when its step is kept

    @property
    def x_t(self) -> list[torch.Tensor]:
        """Kept x_t, ``1×C×h×w`` float16 each, on the CPU."""
        return list(torch.cat(self._x_t).cpu().split(1)) if self._x_t else []

    @property
    def x0(self) -> list[torch.Tensor]:
        """Kept x̂_0, ``1×C×h×w`` float16 each, on the CPU."""
        return list(torch.cat(self._x0).cpu().split(1)) if self._x0 else []

    def keeps(self, step: Step) -> bool:
        return step.index % self.every == 0

    def __call__(self, step: Step) -> None:
        if self.keeps(step):
            self._x_t.append(self._previous[:1].detach().to(torch.float16, copy=True))
            self._x0.append(step.x0_pred[:1].detach().to(torch.float16, copy=True))
            self.numbers.append({"step": step.index, "total": step.total, "t": step.timestep, "sigma": step.sigma,
                                 "alpha_bar": step.alpha_bar, "snr": snr_of(step.alpha_bar),
                                 "guidance_scale": self.guidance_scale})
        self._previous = step.latents

    @property
    def final(self) -> torch.Tensor:
        """The loop's output latents ``1×C×h×w`` (float32, CPU)."""
        return self._previous[:1].detach().float().cpu()


def epsilon(x_t: torch.Tensor, x0: torch.Tensor, alpha_bar: float, euler_type: bool) -> torch.Tensor:
    """ε̂ from x_t and x̂_0 (any shape, float32); Euler-type x_t is first put in VP form x_t/√(1+σ²) = √ᾱ·x_t."""
    alpha_bar = min(max(alpha_bar, 1e-12), 1.0)
    x_t = x_t.float() * math.sqrt(alpha_bar) if euler_type else x_t.float()
    return (x_t - math.sqrt(alpha_bar) * x0.float()) / math.sqrt(max(1 - alpha_bar, 1e-12))


@dataclass
class TrajectoryRun:
    """One recorded run. ``x_t``/``x0``: ``K×C×h×w`` float16 (K kept steps); ``final``: ``1×C×h×w`` float32;
    ``numbers``: one dict per kept step; ``latent_rgb``: the fast decoder's ``(C+1)×3`` matrix."""

    models: object
    x_t: torch.Tensor
    x0: torch.Tensor
    final: torch.Tensor
    numbers: list
    metadata: dict
    latent_rgb: torch.Tensor
    image: object = None  # the final image (PIL), as text_to_image returned it
    cache: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.numbers)


class LazyFrames(Sequence):
    """The kept frames of one view as a sequence of PIL images, each decoded by :func:`frame` (and cached) only
    when it is read: a run costs no decode until a frame is scrubbed to or exported."""

    def __init__(self, run: TrajectoryRun, view: str = "x0"):
        self.run, self.view = run, view

    def __len__(self) -> int:
        return len(self.run)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(len(self))[index]]
        if not -len(self) <= index < len(self):
            raise IndexError(f"frame {index} of {len(self)}")
        return frame(self.run, index % len(self), self.view)


def validate(models: ModelSet, request: TrajectoryRequest) -> TrajectoryRequest:
    """Fills defaults and checks every field; raises :class:`InvalidRequest`."""
    if request.decode not in DECODE_MODES:
        raise InvalidRequest(f"Unknown decode mode '{request.decode}'; choose one of: {', '.join(DECODE_MODES)}.")
    check_decode_mode(request.decode, models)
    every = as_number("every", request.every, integer=True, low=1, high=MAX_STEPS)
    checked = validate_text_to_image(models, _as_text_to_image(request))
    return replace(request, prompt=checked.prompt, negative_prompt=checked.negative_prompt, steps=checked.steps,
                   guidance_scale=checked.guidance_scale, seed=checked.seed, every=int(every))


def check_decode_mode(mode: str, models: ModelSet) -> None:
    """Raises :class:`InvalidRequest` when ``mode`` needs a part this model set lacks."""
    if mode == "tiny" and models.tiny_vae is None:
        raise InvalidRequest("This model has no tiny VAE; choose 'vae' or 'fast', or start the app with --tiny-vae "
                             "(for Stable Diffusion 1.x: madebyollin/taesd).")


def _as_text_to_image(request: TrajectoryRequest) -> TextToImageRequest:
    return TextToImageRequest(prompt=request.prompt, negative_prompt=request.negative_prompt, sampler=request.sampler,
                              steps=request.steps, guidance_scale=request.guidance_scale, seed=request.seed)


def starting_noise(models: ModelSet, request: TrajectoryRequest) -> torch.Tensor:
    """x_t of step 0 exactly as text_to_image draws it (seeded CPU noise × the sampler's init_noise_sigma)."""
    scheduler = make_scheduler(request.sampler, models.scheduler.config)
    scheduler.set_timesteps(request.steps, device=models.device)
    side = models.native_size // models.vae_scale
    shape = (1, models.latent_channels, side, side)
    return initial_noise(shape, request.seed, models.device, models.dtype) * scheduler.init_noise_sigma


def trajectory(models: ModelSet, request: TrajectoryRequest, callback: StepCallback | None = None) -> TaskResult:
    """Runs text_to_image with a :class:`TrajectoryRecorder` chained to ``callback``; renders every kept x̂_0.

    ``images``: the kept x̂_0 frames (PIL, native size) as :class:`LazyFrames`, decoded when read, so recording
    costs no decode beyond text_to_image's own; ``run``: the :class:`TrajectoryRun`;
    ``metadata``: text_to_image's record plus decode, every and ``numbers`` (JSON-safe: inf as "inf").
    """
    request = validate(models, request)
    recorder = TrajectoryRecorder(starting_noise(models, request), every=request.every,
                                  guidance_scale=request.guidance_scale, euler_type=request.sampler in EULER_TYPE)
    result = text_to_image(models, _as_text_to_image(request), combine_callbacks(recorder, callback))
    metadata = {**result.metadata, "task": "trajectory", "decode": request.decode, "every": request.every,
                "euler_type": recorder.euler_type, "kept_steps": len(recorder.numbers)}
    run = TrajectoryRun(models=models, x_t=torch.cat(recorder.x_t), x0=torch.cat(recorder.x0), final=recorder.final,
                        numbers=recorder.numbers, metadata=metadata,
                        latent_rgb=latent_rgb_matrix(models, recorder.final, result.images[0]),
                        image=result.images[0])
    return TaskResult(images=LazyFrames(run, "x0"), metadata={**metadata, "numbers": json_numbers(run.numbers)},
                      run=run)


def json_numbers(numbers: list) -> list:
    return [{k: ("inf" if isinstance(v, float) and math.isinf(v) else v) for k, v in row.items()} for row in numbers]


# ---- decoding -------------------------------------------------------------------------------------------------

def latent_rgb_matrix(models: ModelSet, latents: torch.Tensor | None = None, image=None) -> torch.Tensor:
    """A ``(C+1)×3`` least-squares map from one latent cell (plus a bias) to its block's mean RGB in [-1, 1].

    The base pairs come from a few VAE decodes, made once per VAE and cached (:func:`_base_pairs`). A run adds its
    own final ``latents`` (``1×C×h×w``) and their decoded ``image`` (PIL) — a free, prompted pair — so the map fits
    the colours actually in play; the fitted matrix is stored with the run, so reloads decode identically.
    """
    inputs, rgb = _base_pairs(models)
    if latents is not None:
        extra_in, extra_rgb = _pairs(latents.float().cpu(), pil_to_tensor(image), models.vae_scale)
        weight = max(1, len(inputs) // len(extra_in))  # the run's own pair counts as much as all the base ones
        inputs, rgb = torch.cat([inputs, extra_in.repeat(weight, 1)]), torch.cat([rgb, extra_rgb.repeat(weight, 1)])
    return torch.linalg.lstsq(inputs.double(), rgb.double()).solution.float()


def _pairs(latents: torch.Tensor, pixels: torch.Tensor, scale: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per latent cell: ``[z, 1]`` rows (N×(C+1)) and the mean RGB of its ``scale``² pixel block (N×3)."""
    rgb = torch.nn.functional.avg_pool2d(pixels.float(), scale).permute(0, 2, 3, 1).reshape(-1, 3)
    ones = torch.ones_like(latents[:, :1])
    return torch.cat([latents, ones], 1).permute(0, 2, 3, 1).reshape(-1, latents.shape[1] + 1), rgb


def _base_pairs(models: ModelSet, samples: int = 8):
    """Seeded images of random 4×4 colour blocks (half sharp, half smooth), encoded, each latent paired with its
    own decode. (Random Gaussian latents fit badly: real latents lie on a much narrower set than N(0, I).)"""
    if models.vae in _LATENT_RGB:
        return _LATENT_RGB[models.vae]
    generator = torch.Generator("cpu").manual_seed(0)
    size = models.native_size
    colours = torch.rand((samples, 3, 4, 4), generator=generator) * 2 - 1
    sharp = torch.nn.functional.interpolate(colours[: samples // 2], size=(size, size), mode="nearest")
    smooth = torch.nn.functional.interpolate(colours[samples // 2:], size=(size, size), mode="bilinear")
    with torch.inference_mode():
        latents = encode_pixels(models.vae, torch.cat([sharp, smooth]))
        pixels = decode_latents(models.vae, latents).float().cpu()
    _LATENT_RGB[models.vae] = _pairs(latents.float().cpu(), pixels, models.vae_scale)
    return _LATENT_RGB[models.vae]


def fast_decode(latents: torch.Tensor, matrix: torch.Tensor, scale: int) -> torch.Tensor:
    """``B×C×h×w`` latents -> ``B×3×(scale·h)×(scale·w)`` in [-1, 1] by the linear map, bilinear upsampling."""
    x = latents.float().cpu()
    rgb = torch.einsum("bchw,cd->bdhw", x, matrix[:-1]) + matrix[-1].view(1, 3, 1, 1)
    return torch.nn.functional.interpolate(rgb, scale_factor=scale, mode="bilinear", align_corners=False).clamp(-1, 1)


def decode(run: TrajectoryRun, latents: torch.Tensor):
    """``1×C×h×w`` latents -> a PIL image, with the run's decode mode."""
    models = run.models
    if run.metadata["decode"] == "fast":
        return tensor_to_pil(fast_decode(latents, run.latent_rgb, models.vae_scale))[0]
    with torch.inference_mode():
        return tensor_to_pil(decode_latents(_decoder(models, run.metadata["decode"]),
                                            latents.to(models.device, models.dtype)))[0]


def _decoder(models: ModelSet, mode: str):
    """The module that decodes for ``mode`` "vae" or "tiny"."""
    if mode == "tiny":
        check_decode_mode(mode, models)
        return models.tiny_vae
    return models.vae


def preview(models: ModelSet, step: Step, mode: str = "fast"):
    """An image of this step's x̂_0 for live previews: "fast" (the linear map, about free), "tiny" (the distilled
    tiny VAE, about a tenth of a VAE decode) or "vae" (exact, one VAE decode per preview)."""
    if mode in ("vae", "tiny"):
        with torch.inference_mode():
            return tensor_to_pil(decode_latents(_decoder(models, mode), step.x0_pred[:1]))[0]
    return tensor_to_pil(fast_decode(step.x0_pred[:1], latent_rgb_matrix(models), models.vae_scale))[0]


def epsilon_image(eps: torch.Tensor, scale: int):
    """ε̂ ``1×C×h×w`` as an image: its first three channels, ±3 mapped to 0–255, nearest-upsampled ×``scale``."""
    rgb = (eps[:, :3].float() / 3).clamp(-1, 1)
    return tensor_to_pil(torch.nn.functional.interpolate(rgb, scale_factor=scale, mode="nearest"))[0]


@single_threaded_beside  # scrubbing calls it from the server's threads, maybe while a job runs
def frame(run: TrajectoryRun, index: int, view: str = "x0"):
    """The image of kept step ``index`` (0..K−1) for ``view`` in x_t / x0 / eps, decoded from the kept latents
    only (no model call but the VAE, none at all in fast mode) and cached."""
    if view not in VIEWS:
        raise InvalidRequest(f"Unknown view '{view}'; choose one of: {', '.join(VIEWS)}.")
    if not 0 <= index < len(run):
        raise InvalidRequest(f"Step index must be between 0 and {len(run) - 1}; got {index}.")
    key = (index, view)
    if key not in run.cache:
        x_t, x0 = run.x_t[index: index + 1].float(), run.x0[index: index + 1].float()
        alpha_bar, euler = run.numbers[index]["alpha_bar"], run.metadata["euler_type"]
        if view == "x0":
            run.cache[key] = decode(run, x0)
        elif view == "x_t":  # shown in VP form so Euler's large-σ samples stay in range
            run.cache[key] = decode(run, x_t * math.sqrt(max(alpha_bar, 1e-12)) if euler else x_t)
        else:
            run.cache[key] = epsilon_image(epsilon(x_t, x0, alpha_bar, euler), run.models.vae_scale)
    return run.cache[key]


def describe_step(run: TrajectoryRun, index: int) -> str:
    """One Markdown line: step, t, σ, ᾱ, SNR and guidance of kept step ``index``."""
    n = run.numbers[index]
    return (f"step {n['step'] + 1}/{n['total']} · t = {n['t']} · σ = {n['sigma']:.4g} · ᾱ = {n['alpha_bar']:.4g} · "
            f"SNR = {n['snr']:.4g} · guidance = {n['guidance_scale']:g}")


# ---- the raw run (its file format; pictures and videos are in trajectory_export.py) ----------------------

NUMBER_KEYS = ("step", "total", "t", "sigma", "alpha_bar", "snr", "guidance_scale")


def save_run(run: TrajectoryRun, path) -> tuple[str, str]:
    """Writes ``path`` (.safetensors: x_t, x0, final, latent_rgb, one float64 vector per number) and a ``.json``
    next to it (the metadata); returns both paths."""
    from safetensors.torch import save_file

    path = Path(path)
    tensors = {"x_t": run.x_t.contiguous(), "x0": run.x0.contiguous(), "final": run.final.contiguous(),
               "latent_rgb": run.latent_rgb.contiguous()}
    tensors.update({key: torch.tensor([n[key] for n in run.numbers], dtype=torch.float64) for key in NUMBER_KEYS})
    text = json.dumps({**run.metadata, "numbers": json_numbers(run.numbers)})
    save_file(tensors, str(path), metadata={"diffdemo": text})
    json_path = path.with_suffix(".json")
    json_path.write_text(text)
    return str(path), str(json_path)


def load_run(path, models: ModelSet) -> TrajectoryRun:
    """Reads a run written by :func:`save_run`; frames are then decoded with ``models`` (the same model set)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        tensors = {key: f.get_tensor(key) for key in f.keys()}
        metadata = json.loads(f.metadata()["diffdemo"])
    metadata.pop("numbers", None)
    columns = {key: tensors[key].tolist() for key in NUMBER_KEYS}
    integers = ("step", "total", "t")
    numbers = [{key: (int(columns[key][i]) if key in integers else columns[key][i]) for key in NUMBER_KEYS}
               for i in range(len(columns["step"]))]
    return TrajectoryRun(models=models, x_t=tensors["x_t"], x0=tensors["x0"], final=tensors["final"],
                         numbers=numbers, metadata=metadata, latent_rgb=tensors["latent_rgb"])

