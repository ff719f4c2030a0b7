"""Stage ``upscaler``: a 4× autoencoder, then the x4-upscaler-layout U-Net on its latents -> ``out/upscaler``.

diffusers' upscale pipeline insists on ``scaling_factor`` 0.08333, so a new autoencoder's latents are rescaled to
give unit variance at that factor. The U-Net sees the low-res image with noise augmentation (``class_labels`` =
noise level), mostly at the small levels inference uses. ``cfg.init_from`` fine-tunes ``init_from/upscaler``: as in
the ``vae`` stage, a frozen copy of the starting autoencoder anchors the world scenes' latents (``cfg.vae_anchor``)
while photo and art crops train it freely, and the latent space keeps its scale, so the U-Net starts from what it
knows.

With ``cfg.upscaler_pixel_weight`` the U-Net's loss adds a pixel term: its x̂0 at the sampled timestep, decoded by
the frozen decoder and back-projected onto the low-res input as the tab does, against the true image (MSE). The
v-loss alone weighs every latent channel alike; the pixel term spends the U-Net's capacity on what the decoded
upscale gets wrong, which is what PSNR measures. The U-Net stays a denoiser at every timestep.
"""
from __future__ import annotations

import copy
from pathlib import Path

import torch
import torch.nn.functional as F

from diffdemo.world import models
from diffdemo.world.stages.vae import rescale_latent_space, train_autoencoder
from diffdemo.world.training import ImageStream, TrainConfig, autocast, fit, init_folder


def run(cfg: TrainConfig, out: Path, device) -> dict:
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

    init = init_folder(cfg, "upscaler")
    low = cfg.image_size // 4
    if init is not None:  # a fine-tune: both start from init_from/upscaler, and the U-Net learns the new latents
        vae = AutoencoderKL.from_pretrained(init / "vae", torch_dtype=torch.float32).to(device)
        unet = UNet2DConditionModel.from_pretrained(init / "unet", torch_dtype=torch.float32).to(device)
    else:
        channels = cfg.upscaler_latent_channels
        vae = models.upscaler_vae(cfg.preset, cfg.image_size, channels).to(device)
        unet = models.upscaler_unet(cfg.preset, low, models._WIDTHS[cfg.preset]["text"], channels).to(device)
    teacher = copy.deepcopy(vae).eval().requires_grad_(False) if init and cfg.vae_anchor > 0 else None
    vae_log = train_autoencoder(vae, cfg, cfg.upscaler_vae_steps, cfg.seed + 3, device,
                                out / "checkpoints" / "upscaler_vae.pt", teacher=teacher, crop=cfg.upscaler_vae_crop)
    std = _scaled_latent_std(vae, ImageStream(cfg, cfg.seed + 8, cfg.image_size, device))
    if teacher is None:
        rescale_latent_space(vae, 1.0 / std)  # unit variance at the pipeline's fixed scaling factor
        vae.register_to_config(scaling_factor=models.UPSCALER_SCALING_FACTOR)
        vae_log["latent_std_rescaled_from"] = std
    else:
        vae_log["latent_std_scaled"] = std
    vae.requires_grad_(False)
    noise_schedule = DDPMScheduler.from_config(models.latent_scheduler().config)
    low_res_schedule = DDPMScheduler(**models.UPSCALER_NOISE_SCHEDULE)
    pixel_weight = cfg.upscaler_pixel_weight
    stream = ImageStream(cfg, cfg.seed + 4, cfg.image_size, device)
    pool_small, pool_latents, pool_images = upscaler_pool(vae, stream, cfg.upscaler_pool, low, pixel_weight > 0)

    def loss_fn(step):
        index = torch.randint(0, len(pool_small), (cfg.upscaler_batch,), device=device)
        small, latents, n = pool_small[index], pool_latents[index], cfg.upscaler_batch
        images = pool_images[index] if pixel_weight > 0 else None
        if 0 < cfg.upscaler_crop < low:  # the same window of latents and low-res image (they share one grid)
            top, left = torch.randint(0, low - cfg.upscaler_crop + 1, (2,)).tolist()
            window = (..., slice(top, top + cfg.upscaler_crop), slice(left, left + cfg.upscaler_crop))
            small, latents = small[window], latents[window]
            if images is not None:
                images = images[..., 4 * top:4 * (top + cfg.upscaler_crop), 4 * left:4 * (left + cfg.upscaler_crop)]
        clean_small = small
        # noise augmentation of the low-res input, mostly at the small levels used for inference
        level = torch.where(torch.rand(n, device=device) < 0.5, torch.randint(0, 41, (n,), device=device),
                            torch.randint(0, models.MAX_NOISE_LEVEL + 1, (n,), device=device))
        small = low_res_schedule.add_noise(small, torch.randn_like(small), level)
        noise = torch.randn_like(latents)
        t = torch.randint(0, noise_schedule.config.num_train_timesteps, (n,), device=device)
        noisy = noise_schedule.add_noise(latents, noise, t)
        no_text = torch.zeros(n, 1, unet.config.cross_attention_dim, device=device)  # text-free upscaler
        pred = unet(torch.cat([noisy, small], 1), t, encoder_hidden_states=no_text, class_labels=level).sample.float()
        loss = F.mse_loss(pred, noise_schedule.get_velocity(latents, noise, t).float())
        if images is None:
            return loss
        return loss + pixel_weight * decoded_x0_loss(vae, noise_schedule, noisy, pred, t, clean_small, images.float())

    log = fit("upscaler", [unet], loss_fn, cfg.upscaler_steps, cfg.lr, cfg, device, ema=True,
              checkpoint=out / "checkpoints" / "upscaler.pt")
    folder = out / "upscaler"
    vae.save_pretrained(folder / "vae")
    unet.save_pretrained(folder / "unet")
    models.latent_scheduler().save_pretrained(folder / "scheduler")
    low_res_schedule.save_pretrained(folder / "low_res_scheduler")
    return {"vae": vae_log, "unet": log}


def _scaled_latent_std(vae, stream: ImageStream, n: int = 256) -> float:
    """The std of ``n`` training images' latents times the pipeline's scaling factor (1.0 = what the U-Net wants)."""
    _, x = stream.batch(n)
    with torch.no_grad():
        z = torch.cat([vae.encode(c).latent_dist.sample() for c in x.split(64)])
    return z.std().item() * models.UPSCALER_SCALING_FACTOR


def upscaler_pool(vae, stream: ImageStream, n: int, low: int, keep_images: bool = False):
    """``n`` (low-res image ``n×3×low×low``, scaled latents of the full image, the full image in fp16 or None)
    triples, made once."""
    pool_small, pool_latents, pool_images = [], [], []
    for start in range(0, n, 256):
        _, x = stream.batch(min(256, n - start))
        with torch.no_grad(), autocast(x.device):
            pool_latents.append(vae.encode(x).latent_dist.sample() * models.UPSCALER_SCALING_FACTOR)
        pool_small.append(low_res(x, low))
        if keep_images:
            pool_images.append(x.half())
    return torch.cat(pool_small), torch.cat(pool_latents).float(), torch.cat(pool_images) if keep_images else None


def decoded_x0_loss(vae, noise_schedule, noisy, v_pred, t, small, images) -> torch.Tensor:
    """MSE between the true ``images`` and the U-Net's x̂0 (from its v-prediction ``v_pred`` at ``t``) decoded by
    ``vae`` and back-projected onto the clean low-res ``small``, as the tab does. Gradients reach the U-Net
    through the frozen decoder."""
    from diffdemo.tasks.super_resolution import back_project_tensor

    alpha = noise_schedule.alphas_cumprod.to(noisy.device)[t].view(-1, 1, 1, 1)
    x0 = alpha.sqrt() * noisy - (1 - alpha).sqrt() * v_pred
    decoded = vae.decode(x0 / vae.config.scaling_factor).sample.float()
    return F.mse_loss(back_project_tensor(decoded, small), images)


def low_res(x: torch.Tensor, low: int) -> torch.Tensor:
    """Half antialiased bicubic (what PIL users make), half box-filtered downscales of ``x``, in [-1, 1]."""
    bicubic = F.interpolate(x, size=low, mode="bicubic", antialias=True).clamp(-1, 1)
    area = F.interpolate(x, size=low, mode="area")
    return torch.where(torch.rand(len(x), 1, 1, 1, device=x.device) < 0.5, bicubic, area)
