"""Measures the embedded model set: ``python -m diffdemo.world.evaluate DIR [--samples N] [--json OUT]``.

* Prompt adherence of the text-to-image model, per attribute (shape, colour, background, size, position), on
  captions of seen combinations and of held-out ones (never rendered in training), judged by the analytic
  checker in :mod:`diffdemo.world.checker` — not by eye.
* VAE reconstruction PSNR on fresh world images, and the checker's reading (shape, strict geometry) of those round
  trips: the ceiling the autoencoder sets for the text-to-image model (a U-Net can at best sample the latents of a
  perfect render). ``--vae-only`` measures just these, in about a minute, e.g. on a VAE still training.
* Upscaler ×4 (32² -> 128²) PSNR against bicubic: diffusers' upscale pipeline as is, and the app's default.
* When the model's vocabulary lists emoji subjects: subject adherence on emoji captions, seen and held out
  (:mod:`diffdemo.world.emoji.evaluate`; needs the fetched glyph tiles).
Writes a JSON record and, with ``--grid``, a sample grid PNG.
"""
from __future__ import annotations

import argparse
import json
import random
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from diffdemo.engine import DEFAULT_SAMPLER, SAMPLERS, load_models
from diffdemo.engine.sampling import DEFAULT_GUIDANCE, DEFAULT_STEPS
from diffdemo.world.checker import ATTRIBUTES, judge, score, strict_reading
from diffdemo.world.emoji.evaluate import evaluate_emoji, knows_emoji
from diffdemo.world.render import render_scenes, to_pil
from diffdemo.world.scene import sample_scene



def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two uint8 arrays."""
    from skimage.metrics import peak_signal_noise_ratio

    return float(peak_signal_noise_ratio(a, b, data_range=255))


def adherence(models, n: int, held_out: bool, seed: int, steps: int, guidance: float, sampler: str):
    """Generates ``n`` images through the app's own task from fully specified captions.

    Returns (per-attribute accuracy with the shape confusions, images, scenes).
    """
    from diffdemo.tasks import TextToImageRequest, text_to_image

    rng = random.Random(seed + (1 if held_out else 0))
    scenes = [sample_scene(rng, held_out=held_out, mention_prob=1.0) for _ in range(n)]
    images, ok, total, confusions, strict = [], Counter(), Counter(), Counter(), Counter()
    for i, scene in enumerate(scenes):
        request = TextToImageRequest(prompt=scene.caption, sampler=sampler, steps=steps, guidance_scale=guidance,
                                     seed=seed * 10_000 + i)
        image = text_to_image(models, request).images[0]
        images.append(image)
        judgement = judge(image)
        for attribute, correct in score(scene, judgement).items():
            total[attribute] += 1
            ok[attribute] += correct
        if judgement.shape != scene.shape:
            confusions[f"{scene.size} {scene.shape} -> {judgement.shape}"] += 1
        strict[scene.shape] += strict_reading(image, scene.shape)["passes"]
    accuracy = {a: round(ok[a] / total[a], 3) for a in ATTRIBUTES if total[a]}
    shapes = Counter(scene.shape for scene in scenes)
    return {**accuracy, "strict_geometry": round(sum(strict.values()) / len(scenes), 3),
            "strict_by_shape": {k: round(strict[k] / shapes[k], 3) for k in sorted(shapes)},
            "shape_errors": dict(confusions.most_common())}, images, scenes


def vae_psnr(vae, n: int = 64, seed: int = 7) -> float:
    rng = random.Random(seed)
    x = render_scenes([sample_scene(rng) for _ in range(n)], vae.config.sample_size)
    with torch.no_grad():
        recon = torch.cat([vae.decode(vae.encode(c).latent_dist.mode()).sample for c in x.split(16)])
    ref, out = to_pil(x), to_pil(recon)
    return float(np.median([psnr(np.asarray(a), np.asarray(b)) for a, b in zip(ref, out)]))


def vae_strict_ceiling(vae, n: int = 200, seed: int = 8) -> dict:
    """The checker's readings of the VAE's round trips of ``n`` fresh renders, the ceiling this latent space sets
    on any U-Net: ``shape`` (the shape read right), ``shape_misses`` (``"shape/size"`` -> count of those read
    wrong), and the strict geometric reading, overall and per shape."""
    rng = random.Random(seed)
    scenes = [sample_scene(rng) for _ in range(n)]
    x = render_scenes(scenes, vae.config.sample_size)
    with torch.no_grad():
        recon = torch.cat([vae.decode(vae.encode(c).latent_dist.mode()).sample for c in x.split(20)])
    passes, misses, shapes = Counter(), Counter(), Counter(scene.shape for scene in scenes)
    for scene, image in zip(scenes, to_pil(recon)):
        passes[scene.shape] += strict_reading(image, scene.shape)["passes"]
        if not score(scene, judge(image))["shape"]:
            misses[f"{scene.shape}/{scene.size}"] += 1
    return {"shape": round(1 - sum(misses.values()) / n, 3), "shape_misses": dict(sorted(misses.items())),
            "strict_geometry": round(sum(passes.values()) / n, 3),
            "strict_by_shape": {k: round(passes[k] / shapes[k], 3) for k in sorted(shapes)}}


def upscaler_gain(pipeline, models, n: int = 40, seed: int = 4049) -> dict:
    """×4 upscaling of ``n`` fresh world pictures, 32² -> 128² (bicubic-downscaled), median PSNR in dB:

    * ``pipeline_*``: diffusers' ``StableDiffusionUpscalePipeline`` on the folder as is (one 20-step sample);
    * ``task_*``: the super-resolution task as the app runs it by default (evaluate mode: 4 samples of 5 steps,
      half mirrored, averaged, then back-projected), which also scores bicubic and Lanczos.
    ``*_gain_db`` is the median of the per-image differences to bicubic.
    """
    from PIL import Image

    from diffdemo.tasks.super_resolution import SuperResolutionRequest, super_resolve

    rng = random.Random(seed)
    originals = to_pil(render_scenes([sample_scene(rng) for _ in range(n)], 128))
    rows = []
    for i, original in enumerate(originals):
        small = original.resize((32, 32), Image.BICUBIC)
        out = pipeline(prompt="", image=small, num_inference_steps=20, guidance_scale=1.0, noise_level=20,
                       generator=torch.Generator().manual_seed(i)).images[0]
        request = SuperResolutionRequest(image=original, seed=i, evaluate=True)
        metrics = super_resolve(models, request).metadata["metrics"]
        rows.append([psnr(np.asarray(original), np.asarray(out))] +
                    [metrics[m]["psnr"] for m in ("diffusion", "bicubic", "lanczos")])
    pipe, task, bicubic, lanczos = np.array(rows).T
    return {"images": n, "seed": seed, "bicubic_db": float(np.median(bicubic)), "lanczos_db": float(np.median(lanczos)),
            "pipeline_db": float(np.median(pipe)), "pipeline_gain_db": float(np.median(pipe - bicubic)),
            "task_db": float(np.median(task)), "task_gain_db": float(np.median(task - bicubic)),
            "task_beats_bicubic": int((task > bicubic).sum())}


def save_grid(images, path: Path, columns: int = 8) -> None:
    from PIL import Image

    w, h = images[0].size
    rows = (len(images) + columns - 1) // columns
    grid = Image.new("RGB", (columns * w, rows * h), "white")
    for i, image in enumerate(images):
        grid.paste(image, ((i % columns) * w, (i // columns) * h))
    grid.save(path)


def main(argv=None) -> None:
    from diffusers import StableDiffusionUpscalePipeline

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dir", type=Path, help="folder holding model/ (and upscaler/)")
    parser.add_argument("--samples", type=int, default=96, help="images per caption set")
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    parser.add_argument("--guidance", type=float, default=DEFAULT_GUIDANCE)
    parser.add_argument("--sampler", default=DEFAULT_SAMPLER, help=f"one of {', '.join(SAMPLERS)}")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="write results here")
    parser.add_argument("--grid", type=Path, help="write a sample grid PNG here")
    parser.add_argument("--emoji-samples", type=int, default=None, help="images per emoji caption set (default: "
                        "--samples); only for a model that knows emoji")
    parser.add_argument("--data-dir", default=None, help="fetched data with the emoji tiles (default: the cache)")
    parser.add_argument("--vae-only", action="store_true", help="only the VAE's round trips (DIR/model/vae)")
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    if args.vae_only:
        from diffusers import AutoencoderKL

        vae = AutoencoderKL.from_pretrained(args.dir / "model" / "vae", torch_dtype=torch.float32).eval()
        return report({"vae_psnr_db": vae_psnr(vae), "vae_round_trip": vae_strict_ceiling(vae)}, args.json)
    upscaler = args.dir / "upscaler"
    models = load_models(str(args.dir / "model"), upscaler=str(upscaler) if upscaler.exists() else None, device="cpu")
    results = {"steps": args.steps, "guidance": args.guidance, "sampler": args.sampler,
               "samples": args.samples, "vae_psnr_db": vae_psnr(models.vae),
               "vae_round_trip": vae_strict_ceiling(models.vae)}
    for name, held_out in (("seen", False), ("held_out", True)):
        accuracy, images, scenes = adherence(models, args.samples, held_out, args.seed, args.steps, args.guidance,
                                             args.sampler)
        results[name] = accuracy
        print(name, accuracy, flush=True)
        if args.grid and name == "seen":
            save_grid(images[:32], args.grid)
            results["grid_captions"] = [s.caption for s in scenes[:32]]
    if knows_emoji(models):
        emoji_grid = args.grid.with_name(args.grid.stem + "_emoji.png") if args.grid else None
        results["emoji"] = evaluate_emoji(models, args.emoji_samples or args.samples, args.seed, args.steps,
                                          args.guidance, args.sampler, args.data_dir, emoji_grid)
    if models.upscaler is not None:
        pipeline = StableDiffusionUpscalePipeline.from_pretrained(upscaler, torch_dtype=torch.float32)
        pipeline.set_progress_bar_config(disable=True)
        results["upscaler_x4"] = upscaler_gain(pipeline, models)
    report(results, args.json)


def report(results: dict, path: Path | None) -> None:
    """Prints ``results`` as JSON, and writes them to ``path`` if given."""
    print(json.dumps(results, indent=1))
    if path:
        path.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
