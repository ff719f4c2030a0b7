"""Opt-in speed-ups for a loaded model set: memory layout, fused attention projections, torch.compile (CUDA graphs
when shapes are fixed), VAE tiling/slicing and DeepCache-style step caching (engine/step_cache.py).

Every option is off by default, and a model set with every option off is returned untouched, so results stay
bit-identical. Module settings are applied in place on the shared modules (one copy in memory); step caching wraps
the U-Net. The denoise loop is never copied: only the modules and the model call behind ``predict`` change.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, dataclass, fields, replace

import torch

from diffdemo.engine.sampling import DEFAULT_GUIDANCE
from diffdemo.engine.step_cache import StepCachedUNet

log = logging.getLogger("diffdemo")

COMPILE_MODES = ("off", "default", "max-autotune")
# (compile, static_shapes) -> torch.compile mode: CUDA graphs only where every call has the same shapes
_TORCH_MODES = {("default", False): "default", ("default", True): "reduce-overhead",
                ("max-autotune", False): "max-autotune-no-cudagraphs", ("max-autotune", True): "max-autotune"}
MIN_VAE_TILE = 512  # px: VAE tiles no smaller than the SD VAE's own sample size (see enable_vae_tiling)
# "exact": speed-ups that change a picture by float rounding only; VAE tiling is a memory bound and stays separate
PRESETS = {"off": {}, "exact": {"channels_last": True, "fuse_qkv": True}}
PRESETS["compiled"] = {**PRESETS["exact"], "compile": "default"}
PRESETS["static"] = {**PRESETS["exact"], "compile": "max-autotune", "static_shapes": True}


@dataclass(frozen=True)
class FastPath:
    """What to speed up; the defaults change nothing.

    channels_last  NHWC layout for U-Net and VAE convolutions (faster GPU kernels; float rounding may differ)
    fuse_qkv       one matmul for q, k, v in self-attention (k, v in cross-attention), U-Net and VAE
    compile        "off", "default" or "max-autotune": torch.compile of the U-Net (off on ZeroGPU Spaces)
    static_shapes  with compile: one graph per (batch, size), replayed as a CUDA graph; a new size costs a new
                   compile, so use it only when sizes are fixed (a benchmark, a server with one size); on CUDA
                   also cuDNN's per-shape algorithm search (torch.backends.cudnn.benchmark, process-wide)
    vae_tiling     decode/encode images larger than the VAE's sample size, and than MIN_VAE_TILE px, in
                   overlapping tiles (bounded memory; seams blended, so the picture changes a little)
    vae_slicing    VAE calls on a batch work one image at a time
    step_cache     N >= 2: the deep part of the U-Net runs only every N-th step of a run and the shallow part
                   reuses its features in between (DeepCache, Ma et al. 2024); changes the picture a little
    """

    channels_last: bool = False
    fuse_qkv: bool = False
    compile: str = "off"
    static_shapes: bool = False
    vae_tiling: bool = False
    vae_slicing: bool = False
    step_cache: int = 0

    def __post_init__(self):
        if self.compile not in COMPILE_MODES:
            raise ValueError(f"Unknown compile mode '{self.compile}'; use one of: {', '.join(COMPILE_MODES)}.")
        if not isinstance(self.step_cache, int) or self.step_cache < 0:
            raise ValueError(f"step_cache must be 0 (off) or a whole number of steps >= 2; got {self.step_cache}.")

    @property
    def is_off(self) -> bool:
        return self == FastPath()

    def describe(self) -> dict:
        """The options that are on, for metadata (empty when all are off)."""
        return {k: v for k, v in asdict(self).items() if v != getattr(FastPath(), k)}

    @classmethod
    def parse(cls, spec: str | None) -> FastPath:
        """``"exact,step_cache=2"``: presets (off, exact, compiled, static) and ``name[=value]`` items, in order."""
        values: dict = {}
        types = {f.name: f.type for f in fields(cls)}
        for item in filter(None, (part.strip() for part in (spec or "").split(","))):
            name, _, value = item.partition("=")
            name = name.strip().replace("-", "_")
            if name in PRESETS and not value:
                values.update(PRESETS[name])
            elif name not in types:
                raise ValueError(f"Unknown fast-path option '{name}'; use presets {', '.join(PRESETS)} or "
                                 f"{', '.join(types)}.")
            elif types[name] == "bool":
                values[name] = value.strip().lower() not in ("0", "false", "no", "off") if value else True
            elif types[name] == "int":
                if value and not value.strip().isdigit():
                    raise ValueError(f"Fast-path option '{name}' takes a whole number; got '{value.strip()}'.")
                values[name] = int(value) if value else 2
            else:
                values[name] = value.strip()
        return cls(**values)


def on_zero_gpu() -> bool:
    """True inside a Hugging Face ZeroGPU Space, whose GPU is attached per call: compiling there costs every call."""
    return os.environ.get("SPACES_ZERO_GPU", "").strip().lower() not in ("", "0", "false")


def compile_settings(options: FastPath) -> dict | None:
    """``torch.compile`` keyword arguments for ``options``, or None when compiling is off (or on ZeroGPU)."""
    if options.compile == "off":
        return None
    if on_zero_gpu():
        log.warning("torch.compile is off on ZeroGPU: the GPU is attached per call, so every call would recompile.")
        return None
    return {"mode": _TORCH_MODES[options.compile, options.static_shapes],
            "dynamic": False if options.static_shapes else None}


def apply_fast_path(models, options: FastPath):
    """Applies ``options`` to a :class:`~diffdemo.engine.loading.ModelSet` and returns the set to use.

    Layout, fused projections, compile and VAE tiling/slicing change the shared modules in place (call once per
    model set); ``step_cache`` returns a copy of the set whose ``unet`` is a :class:`StepCachedUNet`. The options
    applied are kept in ``extras["fast_path"]``. All options off: ``models`` itself, untouched.
    """
    if options.is_off:
        return models
    unet, vae = models.unet, models.vae
    if options.channels_last:
        unet.to(memory_format=torch.channels_last)
        vae.to(memory_format=torch.channels_last)
    if options.fuse_qkv:
        for module in (unet, vae):
            fuse_qkv(module)
    if options.vae_tiling:
        enable_vae_tiling(vae)
    if options.vae_slicing:
        vae.enable_slicing()
    settings = compile_settings(options)
    if options.static_shapes and models.device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: time cuDNN's convolution algorithms once, keep the best
    if options.step_cache >= 2:
        unet = StepCachedUNet(unet, options.step_cache, settings)
    elif settings is not None:
        configure_inductor()
        unet.compile(**settings)
    return replace(models, unet=unet, extras={**models.extras, "fast_path": options})


def fuse_qkv(module) -> bool:
    """diffusers' ``fuse_qkv_projections`` on ``module`` unless already fused; False if it has no such API.

    diffusers keeps the separate q/k/v layers beside the fused one; they are pointed at row slices of the fused
    matrix, so fusing costs no memory (≈110 MB of fp16 weights on the SD1.5 U-Net) and unfusing still works.
    """
    from diffusers.models.attention_processor import Attention

    if not hasattr(module, "fuse_qkv_projections"):
        return False
    attention = [m for m in module.modules() if isinstance(m, Attention)]
    if not any(getattr(m, "fused_projections", False) for m in attention):
        module.fuse_qkv_projections()
        for m in attention:
            if hasattr(m, "to_qkv"):  # self-attention: q, k, v fused
                _share_rows(m.to_qkv, (m.to_q, m.to_k, m.to_v))
            else:  # cross-attention: k, v fused
                _share_rows(m.to_kv, (m.to_k, m.to_v))
    return True


def _share_rows(fused: torch.nn.Linear, parts) -> None:
    start = 0
    for part in parts:
        rows = slice(start, start + part.out_features)
        part.weight = torch.nn.Parameter(fused.weight.data[rows], requires_grad=False)
        if part.bias is not None:
            part.bias = torch.nn.Parameter(fused.bias.data[rows], requires_grad=False)
        start = rows.stop


def enable_vae_tiling(vae) -> None:
    """diffusers' tiled VAE, with tiles of at least :data:`MIN_VAE_TILE` pixels a side.

    diffusers tiles at the VAE's ``sample_size``. Each tile's GroupNorm statistics are its own, so small tiles
    of flat colour turn into blotches: the embedded model's VAE (sample size 128) tiled at 128 px scored 18 dB
    PSNR against the untiled decode of a 256² image. Tiling bounds memory, which only large outputs need.
    """
    vae.enable_tiling()
    if hasattr(vae, "tile_latent_min_size"):  # AutoencoderKL; other VAEs keep their own tiling
        levels = 2 ** (len(vae.config.block_out_channels) - 1)
        size = max(vae.tile_sample_min_size, MIN_VAE_TILE)
        vae.tile_sample_min_size, vae.tile_latent_min_size = size, size // levels


def configure_inductor() -> None:
    """1×1 convolutions as matmuls: the U-Net's projections then reach the tuned GEMM kernels (diffusers' advice)."""
    import torch._inductor.config as inductor

    inductor.conv_1x1_as_mm = True


# ---- warm-up and previews -------------------------------------------------------------------------------------

def warm_up(models, height: int, width: int, batch: int = 1, guidance_scale: float = DEFAULT_GUIDANCE,
            steps: int = 3) -> float:
    """Runs ``steps`` denoise steps plus a VAE decode at one shape so compilation and CUDA-graph capture happen
    now, not in the first request; returns the seconds it took (the warm-up cost). The empty prompt is used."""
    from diffdemo.engine.conditioning import generation_inputs
    from diffdemo.engine.images import decode_latents
    from diffdemo.engine.prompts import encode_prompt
    from diffdemo.engine.sampling import DEFAULT_SAMPLER, denoise_loop, guided, make_scheduler

    started = time.perf_counter()
    scheduler = make_scheduler(DEFAULT_SAMPLER, models.scheduler.config)
    # step caching compiles two graphs: enough steps for a full call and a cached one
    scheduler.set_timesteps(max(steps, getattr(models.unet, "interval", 0) + 1), device=models.device)
    prompt = encode_prompt(models, "", "", batch)
    scale = models.vae_scale
    latents = torch.randn(batch, models.latent_channels, height // scale, width // scale,
                          generator=torch.Generator("cpu").manual_seed(0)).to(models.device, models.dtype)
    with torch.inference_mode():
        predict = guided(models.unet, prompt.cond, prompt.uncond, guidance_scale,
                         **generation_inputs(models, prompt, batch, height, width))
        latents = denoise_loop(scheduler, predict, latents)
        decode_latents(models.vae, latents)
    if models.device.type == "cuda":
        torch.cuda.synchronize(models.device)
    return time.perf_counter() - started
