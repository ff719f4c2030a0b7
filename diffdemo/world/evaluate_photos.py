"""Measures the embedded model set on real photographs: ``python -m diffdemo.world.evaluate_photos DIR``.

Two sets, never trained or tuned on: scikit-image's bundled photographs (the public set) and the held-out Debian
photographs of :mod:`diffdemo.world.data` (run its ``fetch`` first), 256² centre crops unless said; ``--world N``
adds N fresh world scenes (128²) so that one run shows what a photo fine-tune costs the shapes world. Everything
goes through the app's own tasks with their defaults; reported numbers are medians over the images (and seeds).

* ``vae``: the VAE's round-trip PSNR.
* ``denoise``: clean photo in, the task adds σ = 25 and 50; the diffusion result (and the one-step x̂0) against
  classical methods tuned per image with the clean image as oracle (NL-means over its ``h``, TV over its weight),
  and BM3D with ``--bm3d`` (the ``bm3d`` package: non-commercial licence, used for measuring only, not a
  dependency). ``clipped``: an 8-bit noisy file at σ = 25 uploaded as already noisy; every method gets the same
  estimated σ.
* ``inpaint``: a 64×64 hole in the middle, empty prompt, PSNR inside the hole against two classical fills: the mean
  colour of its border, and a smooth (biharmonic) continuation of the surroundings; and a check that every pixel
  outside the mask is unchanged. ``inpaint_fill``: the same with "Masked content: fill" at ``--fill-strength``
  (the repaint starts from the smooth continuation, never from what is under the hole).
* ``forward``: the forward-process tab's latent path at t = 50 and 100, PSNR of the decoded x_t to the photo.
* ``upscale``: the Super-resolution tab's evaluate mode with its defaults (the photo downscaled ×4 with bicubic,
  upscaled back), the diffusion result against bicubic and Lanczos, and the worst single image's gain.
* ``upscaler_vae``: the ceiling the upscaler's own 4× autoencoder sets: the true high-res image's latents decoded
  (what a perfect U-Net would sample) and back-projected onto the bicubic low-res image as the tab does, against
  bicubic. When ``upscale`` is near this, the autoencoder, not the U-Net, is what limits the result.
* ``linear_code``: the same ceiling for a plain linear code with as many numbers per 4×4 pixel block as the
  autoencoder has latent channels, and with 16: the principal components of 4×4×3 blocks of training photographs
  (never the evaluated ones). What an autoencoder of that latent width should at least reach.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

NLM_H = (0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.2)  # × σ
TV_WEIGHTS = (0.5, 0.75, 1.0, 1.5, 2.0, 3.0)  # × σ/255
FILL_STRENGTH = 0.75


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    from skimage.metrics import peak_signal_noise_ratio

    return float(peak_signal_noise_ratio(a.astype(np.float64), b, data_range=255))


def photo_sets(size: int = 256, data_dir: Path | None = None) -> dict[str, dict[str, np.ndarray]]:
    from diffdemo.world import data

    sets = {"public": data.public_photos(size)}
    try:
        sets["held_out"] = data.held_out_photos(size, data_dir)
    except FileNotFoundError:
        print("[photos] no fetched data: held-out Debian photographs skipped", flush=True)
    return sets


def world_set(n: int, seed: int = 2024, size: int = 128) -> dict[str, np.ndarray]:
    """``n`` fresh world scenes, ``size``² uint8, named by their index."""
    import random

    from diffdemo.world.render import render_scenes, to_pil
    from diffdemo.world.scene import sample_scene

    rng = random.Random(seed)
    images = to_pil(render_scenes([sample_scene(rng) for _ in range(n)], size))
    return {f"scene{i:02d}": np.asarray(image) for i, image in enumerate(images)}


def vae_round_trip(models, photos: dict) -> dict:
    import torch

    from diffdemo.engine.images import decode_latents, encode_pixels, pil_to_tensor, tensor_to_pil
    from PIL import Image

    scores = {}
    for name, pixels in photos.items():
        with torch.inference_mode():
            z = encode_pixels(models.vae, pil_to_tensor(Image.fromarray(pixels)).to(models.device, models.dtype))
            back = np.asarray(tensor_to_pil(decode_latents(models.vae, z))[0])
        scores[name] = round(psnr(pixels, back), 2)
    return {"median_db": float(np.median(list(scores.values()))), "per_image": scores}


def tuned_classical(clean: np.ndarray, noisy: np.ndarray, sigma: float, with_bm3d: bool = False) -> dict:
    """Best PSNR over each method's setting grid, given the clean image (an oracle: an upper bound for them)."""
    from skimage.restoration import denoise_nl_means, denoise_tv_chambolle

    y, s = noisy / 255.0, max(sigma, 0.5) / 255.0
    nlm = max(psnr(clean, np.clip(denoise_nl_means(y, h=h * s, sigma=s, fast_mode=True, patch_size=7,
                                                   patch_distance=9, channel_axis=-1), 0, 1) * 255)
              for h in NLM_H)
    tv = max(psnr(clean, np.clip(denoise_tv_chambolle(y, weight=w * s, channel_axis=-1), 0, 1) * 255)
             for w in TV_WEIGHTS)
    result = {"nl_means": nlm, "tv": tv}
    if with_bm3d:
        import bm3d

        result["bm3d"] = psnr(clean, np.clip(bm3d.bm3d_rgb(y, s), 0, 1) * 255)
    return result


def denoise_rows(models, photos: dict, sigmas=(25, 50), seeds=(0,), with_bm3d: bool = False) -> dict:
    from diffdemo.tasks import DenoiseRequest, denoise
    from diffdemo.tasks.denoise import add_noise, to_uint8
    import torch

    rows = {}
    for sigma in sigmas:
        per = []
        for name, clean in photos.items():
            for seed in seeds:
                metadata = denoise(models, DenoiseRequest(image=clean, sigma=sigma, seed=seed)).metadata
                noisy = add_noise(clean, sigma, torch.Generator("cpu").manual_seed(seed))  # what the task drew
                classical = tuned_classical(clean, noisy, sigma, with_bm3d)
                per.append({"image": name, "seed": seed, "noisy": metadata["psnr"]["noisy"],
                            "denoised": metadata["psnr"]["denoised"], "x0_hat": metadata["psnr"]["x0_hat"],
                            "app_classical": metadata["psnr"]["classical"], **classical})
        assert all(abs(r["noisy"] - psnr(photos[r["image"]], to_uint8(
            add_noise(photos[r["image"]], sigma, torch.Generator("cpu").manual_seed(r["seed"]))))) < 1e-2
                   for r in per[:1])
        rows[str(sigma)] = summarise(per)
    return rows


def clipped_rows(models, photos: dict, sigma: float = 25, seeds=(0,)) -> dict:
    """An already-noisy 8-bit upload (σ = 0 in the request: the task estimates σ); scored against the clean photo."""
    import torch

    from diffdemo.tasks import DenoiseRequest, denoise
    from diffdemo.tasks.denoise import add_noise, to_uint8

    per = []
    for name, clean in photos.items():
        for seed in seeds:
            noisy = to_uint8(add_noise(clean, sigma, torch.Generator("cpu").manual_seed(1000 + seed)))
            result = denoise(models, DenoiseRequest(image=noisy, sigma=0, seed=seed))
            estimated = result.metadata["sigma"]
            _, x0_hat, denoised, _ = (np.asarray(im) for im in result.images)
            per.append({"image": name, "seed": seed, "estimated_sigma": estimated, "noisy": psnr(clean, noisy),
                        "denoised": psnr(clean, denoised), "x0_hat": psnr(clean, x0_hat),
                        **tuned_classical(clean, noisy, estimated)})
    return summarise(per)


def summarise(per: list[dict]) -> dict:
    """Medians of every numeric column, the diffusion result's median gain over the best classical method per
    image, and the rows themselves."""
    numeric = [k for k, v in per[0].items() if isinstance(v, float) and k != "seed"]
    medians = {k: round(float(np.median([r[k] for r in per])), 2) for k in numeric}
    classical = [k for k in ("nl_means", "tv", "bm3d") if k in per[0]]
    gains = [r["denoised"] - max(r[k] for k in classical) for r in per]
    x0_gains = [r["x0_hat"] - max(r[k] for k in classical) for r in per]
    return {"median": medians, "gain_over_best_classical_db": round(float(np.median(gains)), 2),
            "x0_gain_over_best_classical_db": round(float(np.median(x0_gains)), 2), "rows": per}


def centre_hole(pixels: np.ndarray, hole: int) -> tuple[np.ndarray, np.ndarray]:
    """A ``hole``² square in the middle of ``pixels`` (``H×W`` bool) and the picture with it filled flat with the
    mean colour of the 4-pixel border around it (the classical baseline)."""
    top, left = (pixels.shape[0] - hole) // 2, (pixels.shape[1] - hole) // 2
    inside = np.zeros(pixels.shape[:2], bool)
    inside[top: top + hole, left: left + hole] = True
    border = np.zeros_like(inside)
    border[top - 4: top + hole + 4, left - 4: left + hole + 4] = True
    border &= ~inside
    flat = pixels.copy()
    flat[inside] = pixels[border].mean(0).round().astype(np.uint8)
    return inside, flat


def inpaint_rows(models, photos: dict, seeds=(0, 1), hole: int = 64, prompt: str = "", **settings) -> dict:
    """``settings``: more InpaintRequest fields (e.g. ``masked_content="fill", strength=0.75``)."""
    from PIL import Image

    from diffdemo.tasks import InpaintRequest, inpaint
    from diffdemo.tasks.inpaint import smooth_fill

    per = []
    for name, pixels in photos.items():
        inside, flat = centre_hole(pixels, hole)
        mask = inside.astype(np.uint8) * 255
        smooth = smooth_fill(pixels, inside)
        for seed in seeds:
            result = inpaint(models, InpaintRequest(image=Image.fromarray(pixels), mask=Image.fromarray(mask),
                                                    prompt=prompt, seed=seed, mask_blur=0, **settings))
            out = np.asarray(result.images[0])
            per.append({"image": name, "seed": seed, "hole_db": psnr(pixels[inside], out[inside]),
                        "mean_fill_db": psnr(pixels[inside], flat[inside]),
                        "smooth_fill_db": psnr(pixels[inside], smooth[inside]),
                        "outside_unchanged": bool(np.array_equal(out[~inside], pixels[~inside]))})
    medians = {k: round(float(np.median([r[k] for r in per])), 2) for k in ("hole_db", "mean_fill_db",
                                                                             "smooth_fill_db")}
    gains = {f"gain_over_{k}_db": round(float(np.median([r["hole_db"] - r[f"{k}_db"] for r in per])), 2)
             for k in ("mean_fill", "smooth_fill")}
    return {"settings": settings, "median": medians, **gains,
            "outside_unchanged": all(r["outside_unchanged"] for r in per), "rows": per}


def inpaint_figure(models, photos: dict, path: Path, hole: int = 64, seed: int = 0,
                   fill_strength: float = FILL_STRENGTH) -> None:
    """A before/after strip per photo: the hole (grey), the mean-colour fill, the smooth fill, the repaint with the
    task's defaults and with "Masked content: fill" at ``fill_strength`` (empty prompt, no feathering)."""
    from PIL import Image, ImageDraw

    from diffdemo.tasks import InpaintRequest, inpaint
    from diffdemo.tasks.inpaint import smooth_fill

    columns = ["hole", "mean colour", "smooth fill", "repaint (strength 1)", f"fill + repaint ({fill_strength:g})"]
    rows = []
    for name in sorted(photos):
        pixels = photos[name]
        inside, flat = centre_hole(pixels, hole)
        shown = pixels.copy()
        shown[inside] = 128
        mask = Image.fromarray(inside.astype(np.uint8) * 255)
        outs = [np.asarray(inpaint(models, InpaintRequest(image=Image.fromarray(pixels), mask=mask, seed=seed,
                                                          mask_blur=0, **settings)).images[0])
                for settings in ({}, {"masked_content": "fill", "strength": fill_strength})]
        rows.append(np.concatenate([shown, flat, smooth_fill(pixels, inside), *outs], axis=1))
    strip = Image.fromarray(np.concatenate(rows, axis=0))
    canvas = Image.new("RGB", (strip.width, strip.height + 16), "white")
    canvas.paste(strip, (0, 16))
    draw = ImageDraw.Draw(canvas)
    for i, label in enumerate(columns):
        draw.text((i * strip.width // len(columns) + 4, 2), label, fill="black")
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)


def forward_rows(models, photos: dict, times=(50, 100)) -> dict:
    from PIL import Image

    from diffdemo.tasks import ForwardRequest, forward

    per = {}
    for name, pixels in photos.items():
        for t in times:
            images = forward(models, ForwardRequest(image=Image.fromarray(pixels), t=t, seed=0)).images
            used, decoded = np.asarray(images[0]), np.asarray(images[1])
            per.setdefault(str(t), {})[name] = round(psnr(used, decoded), 2)
    return {t: {"median_db": float(np.median(list(v.values()))), "per_image": v} for t, v in per.items()}


def upscale_rows(models, photos: dict, scale: int = 4, seed: int = 0) -> dict:
    from diffdemo.tasks import SuperResolutionRequest, super_resolve

    per = []
    for name, pixels in photos.items():
        metrics = super_resolve(models, SuperResolutionRequest(image=pixels, scale=scale, seed=seed,
                                                               evaluate=True)).metadata["metrics"]
        per.append({"image": name, **{method: float(m["psnr"]) for method, m in metrics.items()}})
    gains = [r["diffusion"] - r["bicubic"] for r in per]
    return {"median": {k: round(float(np.median([r[k] for r in per])), 2) for k in ("diffusion", "bicubic", "lanczos")},
            "gain_over_bicubic_db": round(float(np.median(gains)), 2), "worst_gain_db": round(min(gains), 2),
            "rows": per}


def upscaler_vae_rows(models, photos: dict, scale: int = 4) -> dict:
    import torch

    vae = models.upscaler.vae

    def round_trip(high):
        with torch.inference_mode():
            high = high.to(models.device, vae.dtype)
            return vae.decode(vae.encode(high).latent_dist.mode()).sample.float().clamp(-1, 1).cpu()

    return ceiling_rows(photos, round_trip, scale)


def patch_code(images, channels: int, block: int = 4):
    """The ``channels`` principal components of the ``block``×``block``×3 pixel blocks of ``images`` (``N×3×H×W``
    in [-1, 1]): a linear encoder/decoder pair ``(mean, basis)``, ``basis`` ``(3·block², channels)``."""
    import torch

    blocks = torch.nn.functional.unfold(images.float(), block, stride=block).transpose(1, 2).flatten(0, 1)
    mean = blocks.mean(0)
    _, _, vectors = torch.linalg.svd(blocks - mean, full_matrices=False)
    return mean, vectors[:channels].T


def linear_code_rows(photos: dict, codes: dict, scale: int = 4) -> dict:
    """:func:`ceiling_rows` of each linear code ``codes[name] = (mean, basis)`` (from :func:`patch_code`)."""
    import torch

    def through(mean, basis):
        block = round((basis.shape[0] // 3) ** 0.5)

        def round_trip(high):
            blocks = torch.nn.functional.unfold(high, block, stride=block).transpose(1, 2) - mean
            return torch.nn.functional.fold(((blocks @ basis @ basis.T) + mean).transpose(1, 2), high.shape[-2:],
                                            block, stride=block).clamp(-1, 1)
        return round_trip

    return {code: ceiling_rows(photos, through(mean, basis), scale) for code, (mean, basis) in codes.items()}


def ceiling_rows(photos: dict, round_trip, scale: int = 4) -> dict:
    """Each photo's ``round_trip`` (``1×3×H×W`` in [-1, 1] -> the same, on the CPU), raw and back-projected onto
    its bicubic low-res version as the super-resolution tab does, against bicubic: what an upscaler whose U-Net
    samples the true image's code would reach."""
    from PIL import Image

    from diffdemo.engine.images import pil_to_tensor
    from diffdemo.tasks.super_resolution import back_project_tensor, resize, to_uint8

    per = []
    for name, pixels in photos.items():
        height, width = pixels.shape[:2]
        low = resize(pixels, (width // scale, height // scale), Image.BICUBIC)
        decoded = round_trip(pil_to_tensor(Image.fromarray(pixels)))
        projected = back_project_tensor(decoded, pil_to_tensor(Image.fromarray(low)))
        per.append({"image": name, "round_trip": psnr(pixels, to_uint8(decoded)),
                    "back_projected": psnr(pixels, to_uint8(projected)),
                    "bicubic": psnr(pixels, resize(low, (width, height), Image.BICUBIC))})
    return {"median": {k: round(float(np.median([r[k] for r in per])), 2)
                       for k in ("round_trip", "back_projected", "bicubic")},
            "ceiling_gain_over_bicubic_db": round(float(np.median([r["back_projected"] - r["bicubic"] for r in per])),
                                                  2), "rows": per}


def training_patch_codes(channel_counts, n: int = 256, data_dir: Path | None = None) -> dict:
    """:func:`patch_code` of ``n`` random 64² crops of the training photographs, per channel count."""
    import torch

    from diffdemo.world.training import ImageStream, TrainConfig

    cfg = TrainConfig(photo_share=1.0, data_dir=str(data_dir or ""))
    _, crops = ImageStream(cfg, 5, 64, torch.device("cpu")).batch(n)
    return {f"{c}_channels": patch_code(crops, c) for c in sorted(set(channel_counts))}


def evaluate(models, sets: dict, parts=("vae", "denoise", "clipped", "inpaint", "forward", "upscale"),
             bm3d=False, fill_strength: float = FILL_STRENGTH) -> dict:
    results = {}
    codes = {}
    if "linear_code" in parts and models.upscaler is not None:
        codes = training_patch_codes((models.upscaler.vae.config.latent_channels, 16))
    for set_name, photos in sets.items():
        out = results.setdefault(set_name, {"images": sorted(photos)})
        if "vae" in parts:
            out["vae"] = vae_round_trip(models, photos)
        if "denoise" in parts and models.denoiser is not None:
            out["denoise"] = denoise_rows(models, photos, with_bm3d=bm3d)
        if "clipped" in parts and models.denoiser is not None:
            out["clipped"] = clipped_rows(models, photos)
        if "inpaint" in parts:
            out["inpaint"] = inpaint_rows(models, photos)
        if "inpaint_fill" in parts:
            out["inpaint_fill"] = inpaint_rows(models, photos, masked_content="fill", strength=fill_strength)
        if "forward" in parts:
            out["forward"] = forward_rows(models, photos)
        if "upscale" in parts and models.upscaler is not None:
            out["upscale"] = upscale_rows(models, photos)
        if "upscaler_vae" in parts and models.upscaler is not None:
            out["upscaler_vae"] = upscaler_vae_rows(models, photos)
        if codes:
            out["linear_code"] = linear_code_rows(photos, codes)
        print(set_name, json.dumps({k: _short(v) for k, v in out.items()}), flush=True)
    return results


def _short(value):
    """The headline numbers of a result (no per-image rows) for the console."""
    if isinstance(value, dict):
        return {k: _short(v) for k, v in value.items() if k not in ("rows", "per_image")}
    return value


def load_model_set(folder: Path):
    """The model set in ``folder`` (laid out as assets/: model/, and optionally upscaler/, denoiser/, tiny_vae/)."""
    from dataclasses import replace

    from diffdemo.engine import load_models
    from diffdemo.engine.loading import _load_denoiser

    parts = {k: str(folder / k) for k in ("upscaler", "tiny_vae") if (folder / k).exists()}
    models = load_models(str(folder / "model"), device="cpu", **parts)
    if (folder / "denoiser").exists():
        models = replace(models, denoiser=_load_denoiser(str(folder / "denoiser"), models.device, models.dtype))
    return models


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dir", type=Path, help="a model-set folder holding model/ (and denoiser/, upscaler/)")
    parser.add_argument("--parts", default="vae,denoise,clipped,inpaint,inpaint_fill,forward,upscale",
                        help="comma-separated; on request also upscaler_vae (the upscaler autoencoder's ceiling) and "
                        "linear_code (that of a linear code as wide; needs the fetched photographs)")
    parser.add_argument("--bm3d", action="store_true", help="also BM3D (pip install bm3d; slow: ~10 s an image)")
    parser.add_argument("--fill-strength", type=float, default=FILL_STRENGTH,
                        help="the strength of the inpaint_fill part")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--world", type=int, default=0, help="also N fresh world scenes (128²)")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--inpaint-figure", type=Path, help="also write a before/after strip of the public set here")
    args = parser.parse_args(argv)
    models = load_model_set(args.dir)
    sets = photo_sets(args.size)
    if args.world:
        sets["world"] = world_set(args.world)
    results = evaluate(models, sets, tuple(args.parts.split(",")), args.bm3d, args.fill_strength)
    if args.inpaint_figure:
        inpaint_figure(models, sets["public"], args.inpaint_figure, fill_strength=args.fill_strength)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
