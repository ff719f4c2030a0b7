"""Compare: 2–4 recorded runs from the same initial noise, differing in sampler, guidance, prompt or step count,
stepped together by the fraction of each run done.

Each variant is one :func:`~diffdemo.tasks.trajectory.trajectory` run (the one loop, every step kept), run one
after another with the same seed, so all start from the same ε (times each sampler's own init σ). Runs with
different step counts are aligned by progress: at p % the run of N steps shows step ⌈p·N⌉, so step 5 of 10 sits
beside step 10 of 20. :func:`step_count_note` makes the point that a 10-step run is not the first half of a
20-step run: after 10 steps the short run is finished (t near 0) while the long one is half-way down the schedule.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace

import torch

from diffdemo.engine.loading import ModelSet
from diffdemo.tasks.common import InvalidRequest, TaskResult, library_versions, resolve_seed
from diffdemo.tasks.settings import PromptSettings
from diffdemo.tasks.trajectory import (DECODE_MODES, TrajectoryRequest, TrajectoryRun, check_decode_mode, frame,
                                       json_numbers, trajectory)
from diffdemo.tasks.trajectory import validate as validate_trajectory

MIN_VARIANTS, MAX_VARIANTS = 2, 4
VARIANT_KEYS = {"prompt": "prompt", "negative_prompt": "negative_prompt", "negative": "negative_prompt",
                "sampler": "sampler", "steps": "steps", "guidance": "guidance_scale",
                "guidance_scale": "guidance_scale", "cfg": "guidance_scale"}
NUMERIC_KEYS = ("steps", "guidance_scale")


@dataclass(frozen=True)
class CompareRequest(PromptSettings):
    """Shared settings plus ``variants``: one line per variant (2–4), each ``key=value`` pairs separated by ``;``
    that override the shared ones, e.g. ``"steps=10\\nsteps=20"`` or ``"sampler=Euler a; guidance=7.5"``. Keys:
    prompt, negative_prompt, sampler, steps, guidance. ``seed`` -1 draws one seed, shared by every variant."""

    variants: str = "steps=10\nsteps=20"
    seed: int = -1
    decode: str = "vae"


@dataclass
class Comparison:
    """Recorded runs side by side: ``runs[i]`` is labelled ``labels[i]``; ``metadata`` is JSON-able."""

    runs: list[TrajectoryRun]
    labels: list[str]
    metadata: dict = field(default_factory=dict)


def parse_variants(text: str) -> list[dict]:
    """``"steps=10; sampler=Euler"`` lines -> one dict of overrides per non-empty line (keys canonical)."""
    if not isinstance(text, str):
        raise InvalidRequest(f"variants must be text, one variant per line; got {type(text).__name__}.")
    variants = []
    for number, line in enumerate([line for line in text.splitlines() if line.strip()], start=1):
        overrides = {}
        for pair in (p for p in line.split(";") if p.strip()):
            key, sep, value = pair.partition("=")
            key = key.strip().lower()
            if not sep or key not in VARIANT_KEYS:
                raise InvalidRequest(f"Variant {number} ('{line.strip()}'): write key=value pairs separated by ';' "
                                     f"with keys {', '.join(sorted(set(VARIANT_KEYS.values())))}.")
            overrides[VARIANT_KEYS[key]] = value.strip()
        variants.append(overrides)
    if not MIN_VARIANTS <= len(variants) <= MAX_VARIANTS:
        raise InvalidRequest(f"Give {MIN_VARIANTS} to {MAX_VARIANTS} variants, one per line (e.g. 'steps=10' and "
                             f"'steps=20'); got {len(variants)}.")
    return variants


def variant_requests(models: ModelSet, request: CompareRequest) -> tuple[list[TrajectoryRequest], list[str]]:
    """One validated :class:`TrajectoryRequest` per variant, all with the same (resolved) seed, and its label."""
    if request.decode not in DECODE_MODES:
        raise InvalidRequest(f"Unknown decode mode '{request.decode}'; choose one of: {', '.join(DECODE_MODES)}.")
    check_decode_mode(request.decode, models)
    base = TrajectoryRequest(prompt=request.prompt, negative_prompt=request.negative_prompt,
                             sampler=request.sampler, steps=request.steps, guidance_scale=request.guidance_scale,
                             seed=resolve_seed(request.seed), decode=request.decode, every=1)
    checked, labels = [], []
    for number, overrides in enumerate(parse_variants(request.variants), start=1):
        try:  # numbers arrive as text: the checks parse them and say which field is wrong
            variant = validate_trajectory(models, replace(base, **overrides))
        except InvalidRequest as error:
            raise InvalidRequest(f"Variant {number}: {error}") from None
        if variant in checked:
            raise InvalidRequest(f"Variant {number} is the same as variant {checked.index(variant) + 1}; "
                                 "change its sampler, steps, guidance or prompt.")
        checked.append(variant)
        labels.append(label_of(variant, overrides))
    return checked, labels


def label_of(request: TrajectoryRequest, overrides: dict) -> str:
    """A short caption naming what a variant changed, e.g. ``"steps=10"`` or ``"sampler=Euler a · guidance=7.5"``."""
    names = {"guidance_scale": "guidance", "negative_prompt": "negative"}
    return " · ".join(f"{names.get(k, k)}={getattr(request, k):g}" if k in NUMERIC_KEYS else
                      f"{names.get(k, k)}={getattr(request, k)}" for k in overrides) or "shared settings"


def compare(models: ModelSet, request: CompareRequest, callback=None) -> TaskResult:
    """Runs every variant one after another through :func:`trajectory` (``callback`` sees every step of each).

    ``images``: the final image of each variant (PIL); ``comparison``: the :class:`Comparison`;
    ``metadata``: seed, model, one record per variant (settings, seconds, per-step numbers) and
    ``step_count_note`` when two variants differ in step count.
    """
    started = time.perf_counter()
    requests, labels = variant_requests(models, request)
    results = [trajectory(models, r, callback) for r in requests]
    runs = [result.run for result in results]
    records = [{"label": label, **{k: r.metadata[k] for k in ("prompt", "negative_prompt", "sampler", "steps",
                                                              "guidance_scale", "seconds")},
                "numbers": json_numbers(r.numbers)} for label, r in zip(labels, runs)]
    metadata = {"task": "compare", "seed": requests[0].seed, "decode": request.decode, "model": models.name,
                "variants": records, "seconds": round(time.perf_counter() - started, 3),
                "versions": library_versions()}
    comparison = Comparison(runs=runs, labels=labels, metadata=metadata)
    note = step_count_note(comparison)
    if note is not None:
        metadata["step_count_note"] = note
    return TaskResult(images=[run.image for run in runs], metadata=metadata, comparison=comparison)


# ---- stepping together ------------------------------------------------------------------------------------------

def aligned_index(run: TrajectoryRun, percent: float) -> int:
    """The kept step of ``run`` (0..K−1) that has done ``percent`` % of its steps: ⌈p·N⌉−1, at least 0."""
    total = run.numbers[0]["total"]
    step = max(math.ceil(percent / 100 * total - 1e-9) - 1, 0)
    return max(i for i, n in enumerate(run.numbers) if n["step"] <= step)  # kept steps start at step 0


def rms(a: torch.Tensor, b: torch.Tensor) -> float:
    """Root-mean-square difference of two latent tensors (float32)."""
    return float((a.float() - b.float()).pow(2).mean().sqrt())


def numbers_at(comparison: Comparison, percent: float) -> list[dict]:
    """One row per run at ``percent`` %: label, step, total, t, σ, ᾱ, guidance and ``to_final`` (RMS between this
    step's x̂_0 and the run's final latents: how much the picture will still change)."""
    rows = []
    for label, run in zip(comparison.labels, comparison.runs):
        i = aligned_index(run, percent)
        n = run.numbers[i]
        rows.append({"label": label, "index": i, **{k: n[k] for k in ("step", "total", "t", "sigma", "alpha_bar",
                                                                      "guidance_scale")},
                     "to_final": rms(run.x0[i], run.final[0])})
    return rows


def frames_at(comparison: Comparison, percent: float, views=("x0", "x_t")) -> list[list]:
    """For each run, its images of ``views`` at ``percent`` % (decoded lazily and cached, no U-Net call)."""
    return [[frame(run, aligned_index(run, percent), view) for view in views] for run in comparison.runs]


def step_count_note(comparison: Comparison) -> dict | None:
    """Contrasts the fewest-step run's last step with the most-step run's step of the same number.

    None when all runs have the same step count. Otherwise a dict with both steps' t and σ, ``x0_rms`` (RMS
    between the two x̂_0 latents) and ``text``, one sentence for the UI.
    """
    totals = [run.numbers[0]["total"] for run in comparison.runs]
    if len(set(totals)) < 2:
        return None
    short, long = totals.index(min(totals)), totals.index(max(totals))
    run_s, run_l, n = comparison.runs[short], comparison.runs[long], min(totals)
    i_s, i_l = len(run_s) - 1, aligned_index(run_l, 100 * n / max(totals))
    a, b = run_s.numbers[i_s], run_l.numbers[i_l]
    difference = rms(run_s.x0[i_s], run_l.x0[i_l])
    text = (f"After {n} steps the {n}-step run is done: its last step is at t = {a['t']} (σ = {a['sigma']:.3g}). "
            f"Step {n} of the {max(totals)}-step run is at t = {b['t']} (σ = {b['sigma']:.3g}), still "
            f"{100 * (1 - n / max(totals)):.0f} % of the way from the end, and its x̂₀ differs from the short run's "
            f"by RMS {difference:.3g} (latents). Fewer steps cover the same range of t in longer strides, so a "
            f"{n}-step run is not the first {n} steps of a {max(totals)}-step run.")
    return {"short": comparison.labels[short], "long": comparison.labels[long], "step": n,
            "short_t": a["t"], "short_sigma": a["sigma"], "long_t": b["t"], "long_sigma": b["sigma"],
            "x0_rms": difference, "text": text}
