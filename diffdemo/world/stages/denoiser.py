"""Stage ``denoiser``: a pixel-space DDPM U-Net (ε-prediction) -> ``out/denoiser/{unet,scheduler}``.

A share of each batch (``cfg.denoiser_low_t_share``, half by default) is drawn at t < T/4, where the noise of real
photos lies (σ = 100/255 is t ≈ 230). With ``cfg.denoiser_clipped`` a share of the noisy inputs is what an uploaded
noisy file holds: x + σ·ε clipped to the 8-bit range and rounded, with the noise target ε' = (y − x)/σ that this
leaves, so Tweedie's estimate stays right on such files. ``cfg.init_from`` fine-tunes ``init_from/denoiser``.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from diffdemo.world import models
from diffdemo.world.training import ImageStream, TrainConfig, fit, init_folder


def run(cfg: TrainConfig, out: Path, device) -> dict:
    from diffusers import UNet2DModel

    init = init_folder(cfg, "denoiser", "unet")
    unet = (UNet2DModel.from_pretrained(init, torch_dtype=torch.float32) if init
            else models.denoiser(cfg.preset, cfg.image_size)).to(device)
    schedule = models.pixel_scheduler()
    stream = ImageStream(cfg, cfg.seed + 5, cfg.denoiser_crop or cfg.image_size, device)
    T = schedule.config.num_train_timesteps
    alpha_bar = schedule.alphas_cumprod.to(device)

    def loss_fn(step):
        _, x = stream.batch(cfg.denoiser_batch)
        n = len(x)
        low = torch.rand(n, device=device) < cfg.denoiser_low_t_share
        t = torch.where(low, torch.randint(0, T // 4, (n,), device=device), torch.randint(0, T, (n,), device=device))
        noise = torch.randn_like(x)
        noisy = schedule.add_noise(x, noise, t)
        if cfg.denoiser_clipped > 0:
            noisy, noise = clip_some(x, noise, alpha_bar[t], cfg.denoiser_clipped)
        return F.mse_loss(unet(noisy, t).sample.float(), noise)

    log = fit("denoiser", [unet], loss_fn, cfg.denoiser_steps, cfg.lr, cfg, device, ema=True,
              checkpoint=out / "checkpoints" / "denoiser.pt", rngs=(stream.rng,))
    unet.save_pretrained(out / "denoiser" / "unet")
    schedule.save_pretrained(out / "denoiser" / "scheduler")
    return log


def clip_some(x: torch.Tensor, noise: torch.Tensor, alpha_bar: torch.Tensor, share: float):
    """x_t and its noise target where a ``share`` of the rows hold an 8-bit file's noisy image.

    x_t = √ᾱ·y with y = x + s·ε (s² = (1−ᾱ)/ᾱ); for the chosen rows y is clipped to [-1, 1] and rounded to
    1/127.5 steps, and the target becomes ε' = (y − x)/s, the noise the image really carries."""
    a = alpha_bar.view(-1, 1, 1, 1)
    s = ((1 - a) / a).sqrt()
    y = x + s * noise
    file_like = ((y.clamp(-1, 1) + 1) * 127.5).round() / 127.5 - 1
    chosen = (torch.rand(len(x), 1, 1, 1, device=x.device) < share)
    y = torch.where(chosen, file_like, y)
    return a.sqrt() * y, torch.where(chosen, (y - x) / s, noise)
