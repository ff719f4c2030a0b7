"""Renders a bench/gpu.py run (its JSON) as the Markdown GPU section of docs/BENCHMARKS.md."""
from __future__ import annotations

import math

import common

LABELS = {"diffusers": "diffusers, plain", "engine": "our engine, plain", "fast": "our engine, fast path",
          "fast+cache": "fast path + step cache"}
TARGET_SPEEDUP, TARGET_VRAM_GIB = 2.0, 3.0


def render(data: dict) -> str:
    """The section: machine, settings, the table, the acceptance checks and what was skipped."""
    points = data["points"]
    device = data["machine"].get("gpu", "CPU (smoke test)")
    peak = data.get("peak_flops") or float("nan")
    parts = [f"## GPU: SD1.5 architecture, random weights, {data['dtype']} — {device}",
             common.machine_lines(data["machine"]),
             f"\nGuidance {data['guidance']} (classifier-free: the U-Net runs on 2× the batch), DDIM, seed 0. "
             f"Fast path: channels_last + fused QKV + {_compiled(data['compile'])}; step cache: the deep U-Net "
             f"every {data['step_cache']} steps. it/s from CUDA events at each "
             f"step's end; latency is prompt to PIL images (text encoder and VAE included). Compute floor: U-Net "
             f"FLOPs per step (FlopCounterMode) ÷ measured dense {data['dtype']} matmul peak "
             f"({_tflops(peak)})."]
    parts += ["", _table(points, data.get("flops", {}), peak), "", *_checks(points)]
    if data.get("skipped"):
        parts.append(f"\nNot measured (time budget): {', '.join(data['skipped'])}.")
    return "\n".join(parts)


def _compiled(mode: str) -> str:
    if mode == "off":
        return "no torch.compile"
    return f"torch.compile `{mode}` with static shapes (CUDA graphs: mode " + \
        ("`reduce-overhead`)" if mode == "default" else "`max-autotune`)")


def _tflops(value: float) -> str:
    return "not measured" if math.isnan(value) else f"{value / 1e12:.0f} TFLOP/s"


def _find(points, variant, size, batch, steps):
    return next((p for p in points if (p["variant"], p["size"], p["batch"], p["steps"]) ==
                 (variant, size, batch, steps)), None)


def _table(points: list, flops: dict, peak: float) -> str:
    keys = sorted({(p["size"], p["batch"], p["steps"]) for p in points})
    rows = []
    for size, batch, steps in keys:
        base = _find(points, "diffusers", size, batch, steps)
        step_flops = flops.get(f"{size}x{batch}", {}).get("full", float("nan"))
        for variant, label in LABELS.items():
            p = _find(points, variant, size, batch, steps)
            if p is None:
                continue
            speedup = f"{p['its'] / base['its']:.2f}×" if base else "–"
            floor = step_flops * p["its"] / peak if peak == peak and step_flops == step_flops else float("nan")
            rows.append([f"{size}²", batch, steps, label, f"{p['its']:.1f}", common.ms(p["latency"]), speedup,
                         _memory(p), "–" if math.isnan(floor) else f"{floor:.0%}", f"{p['warmup']:.1f} s"])
    gmac = "; ".join(f"{k.replace('x', '², batch ')}: {v['full'] / 2e9:.4g} GMAC per step, "
                     f"{v['full'] / 2e9 / (2 * int(k.split('x')[1])):.4g} per image per U-Net call; a step-cache "
                     f"step does {v['partial'] / v['full']:.0%} of it" for k, v in flops.items())
    table = common.markdown_table(["size", "batch", "steps", "variant", "it/s", "latency", "it/s vs diffusers",
                                   "peak memory", "of compute floor", "warm-up"], rows)
    return table + f"\n\nU-Net work (FlopCounterMode, CFG doubles the batch) — {gmac}. For the step-cache rows " \
        "the compute-floor share counts every step as a whole U-Net call (work avoided, not done)."


def _memory(p: dict) -> str:
    if "peak_allocated_gib" in p:
        return f"{p['peak_allocated_gib']:.2f} GiB ({p['peak_reserved_gib']:.2f} reserved)"
    return f"RSS {p.get('peak_rss_gib', float('nan')):.2f} GiB"


def _checks(points: list) -> list[str]:
    lines = ["Targets (512², batch 1, 25 steps):"]
    base = _find(points, "diffusers", 512, 1, 25)
    for variant in ("fast", "fast+cache"):
        p = _find(points, variant, 512, 1, 25)
        if p and base:
            ratio = p["its"] / base["its"]
            mark = "met" if ratio >= TARGET_SPEEDUP else "missed"
            lines.append(f"- {LABELS[variant]}: {ratio:.2f}× the it/s of plain diffusers "
                         f"(target ≥ {TARGET_SPEEDUP:.1f}×: {mark}).")
        if p and "peak_allocated_gib" in p:
            mark = "met" if p["peak_allocated_gib"] <= TARGET_VRAM_GIB else "missed"
            lines.append(f"- {LABELS[variant]}: peak VRAM {p['peak_allocated_gib']:.2f} GiB allocated "
                         f"(target ≤ {TARGET_VRAM_GIB:.0f} GB: {mark}).")
    return lines if len(lines) > 1 else []
