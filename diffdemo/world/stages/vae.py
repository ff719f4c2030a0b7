"""Stage ``vae``: the 8× autoencoder of the text-to-image model (MSE + L1 + tiny KL) -> ``out/model/vae``.

From scratch it learns the training mix and sets ``scaling_factor`` for unit-variance latents, as Stable Diffusion
does. As a fine-tune (``cfg.init_from``) it keeps the latent space the U-Net was trained on: a frozen copy of the
starting VAE (the teacher) encodes each world scene, the encoder is pulled to the teacher's latents
(``cfg.vae_anchor``) and the decoder learns to draw the scene from them, while photo and art crops train both
halves freely. ``scaling_factor`` then stays as it was.

``--vae-train decoder`` fine-tunes the decoder alone: the encoder is frozen, so every latent the U-Net was trained
on stays exactly where it was. ``--vae-latent-noise σ`` decodes half of each batch from latents with Gaussian
noise of a standard deviation drawn up to σ (in the U-Net's scaled units): a U-Net's samples are never exact, and a
decoder trained this way draws a slightly-off latent as the clean picture instead of shifting its shape or hue.
"""
from __future__ import annotations

import copy
import math
from pathlib import Path

import torch
import torch.nn.functional as F

from diffdemo.world import models
from diffdemo.world.training import ImageStream, TrainConfig, WorldStream, fit, init_folder


def run(cfg: TrainConfig, out: Path, device) -> dict:
    from diffusers import AutoencoderKL

    init = init_folder(cfg, "model", "vae")
    vae = (AutoencoderKL.from_pretrained(init, torch_dtype=torch.float32) if init
           else models.vae(cfg.preset, cfg.image_size, cfg.vae_groups)).to(device)
    if cfg.vae_train not in ("all", "decoder"):
        raise ValueError(f"--vae-train must be all or decoder; got {cfg.vae_train!r}")
    decoder_only = cfg.vae_train == "decoder"
    if decoder_only:
        if init is None:
            raise ValueError("--vae-train decoder fine-tunes a trained VAE: pass --init-from")
        vae.encoder.requires_grad_(False)
        vae.quant_conv.requires_grad_(False)
    teacher = copy.deepcopy(vae).eval().requires_grad_(False) if init and cfg.vae_anchor > 0 and not decoder_only \
        else None
    log = train_autoencoder(vae, cfg, cfg.vae_steps, cfg.seed + 1, device, out / "checkpoints" / "vae.pt",
                            teacher=teacher, crop=cfg.vae_crop)
    if init is None:
        vae.register_to_config(scaling_factor=round(1.0 / log["latent_std"], 5))  # unit-variance latents
    vae.save_pretrained(out / "model" / "vae")
    return log


def train_autoencoder(vae, cfg: TrainConfig, steps: int, seed: int, device, checkpoint: Path | None = None,
                      teacher=None, crop: int = 0) -> dict:
    """Trains ``vae`` on :class:`ImageStream` batches of ``crop``² images (0: ``cfg.image_size``), world scenes
    cropped from ``cfg.image_size``² renders so their shapes keep the app's pixel scale; with ``teacher``, world
    scenes keep the teacher's latents.

    Returns the log with the median reconstruction PSNR and latent std of 256 fresh world scenes."""
    stream = ImageStream(cfg, seed, crop or cfg.image_size, device, world_size=cfg.image_size)
    frozen_encoder = not any(p.requires_grad for p in vae.encoder.parameters())

    def loss_fn(step):
        kinds, x = stream.batch(cfg.vae_batch)
        with torch.set_grad_enabled(not frozen_encoder):
            posterior = vae.encode(x).latent_dist
        z, anchor = posterior.sample(), torch.zeros((), device=device)
        world = torch.tensor([k == "world" for k in kinds], device=device)
        if teacher is not None and world.any():
            with torch.no_grad():
                target = teacher.encode(x[world]).latent_dist
                z_teacher = target.sample()
            anchor = F.mse_loss(posterior.mean[world], target.mean)
            z = z.clone()
            z[world] = z_teacher.to(z.dtype)  # the decoder learns to draw world scenes from the teacher's latents
        if cfg.vae_latent_noise > 0:  # the first half of the batch: latents a little off, as a U-Net samples them
            half = len(z) // 2
            sigma = torch.rand(half, 1, 1, 1, device=device) * cfg.vae_latent_noise / vae.config.scaling_factor
            z = torch.cat([z[:half] + sigma * torch.randn_like(z[:half]), z[half:]])
        recon = vae.decode(z).sample.float()
        kl = torch.zeros((), device=device) if frozen_encoder else posterior.kl().mean()
        return F.mse_loss(recon, x) + 0.5 * F.l1_loss(recon, x) + 1e-6 * kl + cfg.vae_anchor * anchor

    log = fit("vae", [vae], loss_fn, steps, cfg.vae_lr, cfg, device, checkpoint=checkpoint, rngs=(stream.rng,))
    log.update(world_reconstruction(vae, WorldStream(seed + 999, cfg.image_size, device)))
    print(f"[vae] world reconstruction PSNR {log['psnr_db']:.2f} dB, latent std {log['latent_std']:.3f}", flush=True)
    return log


def world_reconstruction(vae, stream: WorldStream, n: int = 256) -> dict:
    """Median PSNR (dB) of the VAE's round trip on ``n`` world scenes, and their latents' std."""
    _, x = stream.batch(n)
    with torch.no_grad():
        latents = torch.cat([vae.encode(c).latent_dist.sample() for c in x.split(64)])
        recon = torch.cat([vae.decode(vae.encode(c).latent_dist.mode()).sample for c in x.split(64)]).clamp(-1, 1)
    mse = ((recon - x) / 2).pow(2).flatten(1).mean(1)  # in [0, 1] units
    return {"latent_std": latents.std().item(), "psnr_db": (-10 * torch.log10(mse)).median().item()}


def rescale_latent_space(vae, factor: float) -> None:
    """Multiplies the VAE's latents by ``factor`` without changing what it reconstructs."""
    with torch.no_grad():
        c = vae.config.latent_channels
        vae.quant_conv.weight[:c] *= factor  # mean channels; the next c are log-variance
        vae.quant_conv.bias[:c] *= factor
        vae.quant_conv.bias[c:] += 2 * math.log(factor)
        vae.post_quant_conv.weight *= 1 / factor
