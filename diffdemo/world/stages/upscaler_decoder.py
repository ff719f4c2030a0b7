"""Stage ``upscaler_decoder``: the 4× decoder fine-tuned on the U-Net's own samples -> ``out/upscaler/vae``.

The decoder learns what it will be given: latents the U-Net samples (the super-resolution task's default
sampler) from the low-res images of a pool, paired with the true high-res images. The loss adds the decode after
back-projection (the tab's default), so the decoder spends its capacity on the edges back-projection cannot
restore. Encoder and U-Net stay as they are.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from diffdemo.world import models
from diffdemo.world.training import ImageStream, TrainConfig, autocast, fit


def run(cfg: TrainConfig, out: Path, device) -> dict:
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

    from diffdemo.tasks.super_resolution import back_project_tensor

    folder = out / "upscaler"
    vae = AutoencoderKL.from_pretrained(folder / "vae").to(device).requires_grad_(False)
    unet = UNet2DConditionModel.from_pretrained(folder / "unet").to(device).eval()
    low_res_schedule = DDPMScheduler.from_pretrained(folder / "low_res_scheduler")
    stream = ImageStream(cfg, cfg.seed + 7, cfg.image_size, device)
    low, scale = cfg.image_size // 4, vae.config.scaling_factor
    sizes = [min(64, cfg.upscaler_decoder_pool - start) for start in range(0, cfg.upscaler_decoder_pool, 64)]
    with torch.no_grad():
        pool = [upscaler_samples(unet, low_res_schedule, *stream_triple(stream, n, low)) for n in sizes]
        held = upscaler_samples(unet, low_res_schedule, *stream_triple(stream, 64, low))
    small, latents, target = (torch.cat(part) for part in zip(*pool))
    print(f"[upscaler_decoder] sampled a pool of {len(small)} upscales", flush=True)
    decoder = [vae.decoder, vae.post_quant_conv]
    for module in decoder:
        module.requires_grad_(True)

    def loss_fn(step):
        index = torch.randint(0, len(small), (cfg.upscaler_decoder_batch,), device=device)
        image = vae.decode(latents[index] / scale).sample.float()
        projected = back_project_tensor(image, small[index])
        y = target[index]
        return (F.mse_loss(image, y) + 0.5 * F.l1_loss(image, y) + cfg.upscaler_decoder_back_projection *
                (F.mse_loss(projected, y) + 0.5 * F.l1_loss(projected, y)))

    before = upscaler_decoder_psnr(vae, *held)
    log = fit("upscaler_decoder", decoder, loss_fn, cfg.upscaler_decoder_steps, cfg.upscaler_decoder_lr, cfg, device,
              ema=True, warmup_steps=cfg.upscaler_decoder_warmup,
              checkpoint=out / "checkpoints" / "upscaler_decoder.pt")
    vae.eval().requires_grad_(False)
    log.update({f"{k}_before": v for k, v in before.items()}, **upscaler_decoder_psnr(vae, *held))
    print(f"[upscaler_decoder] held-out PSNR: {log}", flush=True)
    vae.save_pretrained(folder / "vae")
    return log


def stream_triple(stream: ImageStream, n: int, low: int):
    """``n`` high-res images and their low-res versions, rounded to 8-bit levels as a user's file would be (half
    antialiased bicubic, as PIL makes them, half box-filtered)."""
    from diffdemo.world.stages.upscaler import low_res

    _, x = stream.batch(n)
    return ((low_res(x, low).clamp(-1, 1) + 1) * 127.5).round() / 127.5 - 1, x


def upscaler_samples(unet, low_res_schedule, small, high):
    """(low-res, the U-Net's final scaled latents, high-res): one sample each with the super-resolution task's
    default sampler (DDIM, its default steps and noise level), batched."""
    from diffdemo.tasks.super_resolution import SuperResolutionRequest

    steps, noise_level = SuperResolutionRequest.steps, SuperResolutionRequest.noise_level
    scheduler = models.latent_scheduler()
    scheduler.set_timesteps(steps, device=small.device)
    n = len(small)
    level = torch.full((n,), noise_level, device=small.device, dtype=torch.long)
    noised = low_res_schedule.add_noise(small, torch.randn_like(small), level)
    latents = torch.randn(n, unet.config.out_channels, *small.shape[-2:], device=small.device)
    no_text = torch.zeros(n, 1, unet.config.cross_attention_dim, device=small.device)
    with autocast(small.device):
        for t in scheduler.timesteps:
            v = unet(torch.cat([latents, noised], 1), t, encoder_hidden_states=no_text, class_labels=level).sample
            latents = scheduler.step(v.float(), t, latents).prev_sample
    return small, latents, high


def upscaler_decoder_psnr(vae, small, latents, high) -> dict:
    """Median PSNR (dB) of the decode, raw and back-projected, against the high-res images."""
    from diffdemo.tasks.super_resolution import back_project_tensor

    with torch.no_grad():
        image = torch.cat([vae.decode(z / vae.config.scaling_factor).sample for z in latents.split(16)]).float()
        projected = back_project_tensor(image.clamp(-1, 1), small).clamp(-1, 1)

    def median_db(a):
        return (-10 * torch.log10(((a.clamp(-1, 1) - high) / 2).pow(2).flatten(1).mean(1))).median().item()

    return {"raw_db": round(median_db(image), 3), "back_projected_db": round(median_db(projected), 3)}
