"""GPU benchmark: full-size SD1.5-architecture components built from configs (random weights: FLOPs are what
matter), fp16 — a plain diffusers pipeline as a user writes it vs our engine, plain and with its fast path.

    pip install --no-index --find-links build/wheels diffusers==0.42.1   # only where diffusers is missing
    python bench/gpu.py                          # 512²/768², batch 1/4, 25/50 steps; about 10 min on an H100
    python bench/gpu.py --tiny                   # CPU smoke test: tiny configs, fp32, 64², 3/5 steps
    python bench/gpu.py --from-json gpu.json     # rewrite the table in docs/BENCHMARKS.md from a saved run

Per (size, batch) every variant gets a fresh copy of the same weights on the device, so peak memory is its own.
it/s comes from CUDA events recorded at each step's end (no sync), latency is wall time to PIL images.
"""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import argparse
import copy
import gc
import json
import statistics
import sys
import time
from pathlib import Path

import torch

import common
import sd15

common.setup_paths()
PROMPT = "a photo of an astronaut riding a horse on mars"
GUIDANCE = 7.5
VARIANTS = ("diffusers", "engine", "fast", "fast+cache")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny configs on the CPU in fp32: a smoke test")
    parser.add_argument("--sizes", type=int, nargs="+", help="image sides (default 512 768; tiny: 64)")
    parser.add_argument("--batches", type=int, nargs="+", help="images per prompt (default 1 4; tiny: 1 2)")
    parser.add_argument("--steps", type=int, nargs="+", help="denoise steps (default 25 50; tiny: 3 5)")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--repeats", type=int, help="measured runs per point (default 3; tiny: 1)")
    parser.add_argument("--compile", default=None, choices=["off", "default", "max-autotune"],
                        help="the fast path's torch.compile (default: 'default', i.e. CUDA graphs through "
                             "reduce-overhead; tiny: off)")
    parser.add_argument("--step-cache", type=int, default=2, help="interval of the fast+cache variant")
    parser.add_argument("--budget-s", type=float, default=540, help="start nothing new after this many seconds")
    parser.add_argument("--json", type=Path, help="write results here (after every point; --resume reads it)")
    parser.add_argument("--resume", action="store_true", help="keep the points already in --json, measure the rest")
    parser.add_argument("--from-json", type=Path, help="only render this saved run into the docs")
    parser.add_argument("--doc", type=Path, default=common.DOC)
    parser.add_argument("--no-write", action="store_true", help="print only (the default with --tiny)")
    args = parser.parse_args(argv)
    defaults = dict(sizes=[64], batches=[1, 2], steps=[3, 5], repeats=1, compile="off") if args.tiny else \
        dict(sizes=[512, 768], batches=[1, 4], steps=[25, 50], repeats=3, compile="default")
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


class StepClock:
    """Marks the end of each step: CUDA events on a GPU (no sync), host time on the CPU."""

    def __init__(self, device: torch.device):
        self.cuda, self.marks = device.type == "cuda", []

    def mark(self) -> None:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks.append(event)
        else:
            self.marks.append(time.perf_counter())

    def its(self) -> float:
        """Steps per second between the first and the last step's end (call after the run finished)."""
        if len(self.marks) < 2:
            return float("nan")
        seconds = (self.marks[0].elapsed_time(self.marks[-1]) / 1000 if self.cuda else self.marks[-1] - self.marks[0])
        return (len(self.marks) - 1) / seconds


def diffusers_runner(parts: dict, device, dtype):
    """``StableDiffusionPipeline(...).to(device, dtype)`` and a plain call, as in the diffusers docs."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(**parts, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False).to(device, dtype)
    pipe.set_progress_bar_config(disable=True)

    def run(steps: int, size: int, batch: int, clock: StepClock):
        def on_step(pipeline, index, timestep, kwargs):
            clock.mark()
            return kwargs

        return pipe(PROMPT, num_inference_steps=steps, guidance_scale=GUIDANCE, height=size, width=size,
                    num_images_per_prompt=batch, generator=torch.Generator("cpu").manual_seed(0),
                    callback_on_step_end=on_step).images

    return run, pipe


def engine_runner(parts: dict, device, dtype, fast=None):
    """Our text-to-image task on a ModelSet of the same parts, optionally with a fast path applied."""
    from diffdemo.engine.fast import apply_fast_path
    from diffdemo.engine.loading import ModelSet
    from diffdemo.tasks.text_to_image import TextToImageRequest, text_to_image

    modules = {name: parts[name].to(device, dtype).eval().requires_grad_(False)
               for name in ("text_encoder", "vae", "unet")}
    models = ModelSet(name="sd15-architecture (random weights)", tokenizer=parts["tokenizer"],
                      scheduler=parts["scheduler"], device=torch.device(device), dtype=dtype, **modules)
    if fast is not None:
        models = apply_fast_path(models, fast)

    def run(steps: int, size: int, batch: int, clock: StepClock):
        request = TextToImageRequest(prompt=PROMPT, steps=steps, guidance_scale=GUIDANCE, width=size, height=size,
                                     seed=0, num_images=batch)
        return text_to_image(models, request, lambda step: clock.mark()).images

    return run, models


def build_variant(name: str, template: dict, args, device, dtype):
    """(run function, object holding the modules) for one variant, on a fresh copy of the template weights."""
    from diffdemo.engine.fast import FastPath

    parts = {k: (v if k == "tokenizer" else copy.deepcopy(v)) for k, v in template.items()}
    if name == "diffusers":
        return diffusers_runner(parts, device, dtype)
    if name == "engine":
        return engine_runner(parts, device, dtype)
    options = dict(channels_last=True, fuse_qkv=True, compile=args.compile, static_shapes=True)
    if name == "fast+cache":
        options["step_cache"] = args.step_cache
    return engine_runner(parts, device, dtype, FastPath(**options))


def measure_point(name: str, template: dict, size: int, batch: int, args, device, dtype) -> list[dict]:
    """All step counts of one (variant, size, batch): warm-up (compile) timed, then medians over repeats."""
    from diffdemo.engine.fast import warm_up

    free_device(device)
    run, holder = build_variant(name, template, args, device, dtype)
    started = time.perf_counter()
    if name.startswith("fast"):
        warm_up(holder, size, size, batch=batch, guidance_scale=GUIDANCE)
    run(min(args.steps), size, batch, StepClock(device))  # first real call: lazy inits, cuDNN autotuning
    warmup = time.perf_counter() - started
    results = []
    for steps in args.steps:
        reset_peak(device)
        latencies, rates = [], []
        for _ in range(args.repeats):
            clock = StepClock(device)
            begun = time.perf_counter()
            run(steps, size, batch, clock)
            synchronize(device)
            latencies.append(time.perf_counter() - begun)
            rates.append(clock.its())
        results.append(dict(variant=name, size=size, batch=batch, steps=steps, its=statistics.median(rates),
                             latency=statistics.median(latencies), latencies=latencies, warmup=warmup,
                             **peak_memory(device)))
    del run, holder
    free_device(device)
    return results


def free_device(device) -> None:
    gc.collect()
    torch._dynamo.reset()  # drops compiled graphs (and their CUDA-graph pools) of the previous variant
    if device.type == "cuda":
        torch.cuda.empty_cache()


def reset_peak(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def synchronize(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory(device) -> dict:
    if device.type == "cuda":
        return {"peak_allocated_gib": torch.cuda.max_memory_allocated(device) / 2**30,
                "peak_reserved_gib": torch.cuda.max_memory_reserved(device) / 2**30}
    return {"peak_rss_gib": common.peak_rss_mb() / 1024}


def unet_flops(config, size: int, batch: int) -> dict:
    """FLOPs of one U-Net call on a CFG batch (2×batch) at ``size`` pixels, whole (``full``) and as a step-cache
    step runs it (``partial``: outermost level only). Counted by FlopCounterMode on the meta device: shapes only,
    no memory, no time; attention through the math backend, whose matmuls the counter sees."""
    from diffusers import UNet2DConditionModel
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    from diffdemo.engine.step_cache import StepCachedUNet

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(config)
        latent = torch.randn(2 * batch, unet.config.in_channels, size // 8, size // 8)
        text = torch.randn(2 * batch, 77, unet.config.cross_attention_dim)
        t = torch.tensor(500)
    wrapped, counts = StepCachedUNet(unet, 2), {}
    with torch.inference_mode(), sdpa_kernel(SDPBackend.MATH):
        with FlopCounterMode(display=False) as counter:
            _, feature = wrapped.full(latent, t, text)
        counts["full"] = float(counter.get_total_flops())
        with FlopCounterMode(display=False) as counter:
            wrapped.partial(latent, t, text, None, feature)
        counts["partial"] = float(counter.get_total_flops())
    return counts


def matmul_peak(device, dtype, n: int = 8192, repeats: int = 30) -> float:
    """Measured dense matmul FLOP/s in ``dtype`` (the compute floor's denominator); NaN on the CPU."""
    if device.type != "cuda":
        return float("nan")
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    for _ in range(3):
        a @ b
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        a @ b
    end.record()
    torch.cuda.synchronize(device)
    return 2 * n**3 * repeats / (start.elapsed_time(end) / 1000)


def run_all(args, device, dtype) -> dict:
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()  # no "modules that should be kept in float32: []" notes on every copy
    data = json.loads(args.json.read_text()) if args.resume and args.json and args.json.exists() else {}
    data.setdefault("machine", common.machine({"benchmark": "python bench/gpu.py " + " ".join(sys.argv[1:])}))
    data.setdefault("points", [])
    data.update(dtype=str(dtype).replace("torch.", ""), compile=args.compile, step_cache=args.step_cache,
                tiny=args.tiny, guidance=GUIDANCE)
    started = time.perf_counter()
    template = sd15.components(tiny=args.tiny, dtype=dtype)
    data["peak_flops"] = data.get("peak_flops") or matmul_peak(device, dtype)
    data.setdefault("flops", {})
    done = {(p["variant"], p["size"], p["batch"]) for p in data["points"]}
    for size in args.sizes:
        for batch in args.batches:
            if f"{size}x{batch}" not in data["flops"]:
                data["flops"][f"{size}x{batch}"] = unet_flops(template["unet"].config, size, batch)
            for name in args.variants:
                if (name, size, batch) in done:
                    continue
                # a compiled variant needs a few minutes: do not start one that cannot finish in the budget
                needs = 150 if name.startswith("fast") and args.compile != "off" else 20
                if time.perf_counter() - started + needs > args.budget_s:
                    data.setdefault("skipped", []).append(f"{name} {size}² batch {batch}")
                    continue
                print(f"[gpu] {name} {size}² batch {batch} …", file=sys.stderr, flush=True)
                data["points"] += measure_point(name, template, size, batch, args, device, dtype)
                if args.json:
                    args.json.write_text(json.dumps(data, indent=1))
    return data


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.from_json:
        data = json.loads(args.from_json.read_text())
    else:
        device = torch.device("cpu" if args.tiny or not torch.cuda.is_available() else "cuda")
        dtype = torch.float32 if device.type == "cpu" else torch.float16
        data = run_all(args, device, dtype)
    import report

    text = report.render(data)
    print(text)
    if not (args.no_write or data.get("tiny")):
        print(f"[gpu] wrote {common.update_section('gpu', text, args.doc)}", file=sys.stderr)


if __name__ == "__main__":
    main()
