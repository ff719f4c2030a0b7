"""Stage ``tiny_vae``: a TAESD-layout AutoencoderTiny distilled from the VAE -> ``out/tiny_vae``.

The decoder learns the teacher's decode of scaled latents, the encoder the teacher's latents of those decodes.
Half the latents are real encodings of the training mix; the rest are blends, blurs and low-contrast shrinks, like
the blurry x̂_0 of a run's early steps. It draws trajectory frames about 10× faster than the VAE's decoder.
``cfg.init_from`` starts from ``init_from/tiny_vae``.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from diffdemo.world import models
from diffdemo.world.training import ImageStream, TrainConfig, autocast, fit, init_folder


def run(cfg: TrainConfig, out: Path, device) -> dict:
    from diffusers import AutoencoderKL, AutoencoderTiny

    teacher = AutoencoderKL.from_pretrained(out / "model" / "vae").to(device).eval().requires_grad_(False)
    init = init_folder(cfg, "tiny_vae")
    student = (AutoencoderTiny.from_pretrained(init, torch_dtype=torch.float32) if init
               else models.tiny_vae(cfg.preset, len(teacher.config.block_out_channels))).to(device)
    stream = ImageStream(cfg, cfg.seed + 6, cfg.image_size, device)
    latents, decoded = tiny_vae_pool(teacher, stream, cfg.tiny_vae_pool)
    held_latents, held_decoded = tiny_vae_pool(teacher, stream, 64, real_only=True)

    scale, crop = 2 ** (len(teacher.config.block_out_channels) - 1), cfg.tiny_vae_crop

    def loss_fn(step):
        index = torch.randint(0, len(latents), (cfg.tiny_vae_batch,), device=device)
        i, j = torch.randint(0, latents.shape[-1] - crop + 1, (2,)).tolist()
        z = latents[index, :, i: i + crop, j: j + crop]
        y = decoded[index, :, scale * i: scale * (i + crop), scale * j: scale * (j + crop)]
        image = student.decode(z).sample.float()
        half = crop // 2  # the encoder learns on a quarter of the crop: it is not on the app's hot path
        encoded = student.encode(y[:, :, : scale * half, : scale * half]).latents.float()
        return F.mse_loss(image, y) + 0.5 * F.l1_loss(image, y) + 0.1 * F.mse_loss(encoded, z[:, :, :half, :half])

    log = fit("tiny_vae", [student], loss_fn, cfg.tiny_vae_steps, cfg.tiny_vae_lr, cfg, device,
              checkpoint=out / "checkpoints" / "tiny_vae.pt")
    with torch.no_grad():
        image = student.decode(held_latents).sample.float().clamp(-1, 1)
    mse = ((image - held_decoded) / 2).pow(2).flatten(1).mean(1)
    log["psnr_vs_vae_db"] = (-10 * torch.log10(mse)).median().item()
    print(f"[tiny_vae] PSNR against the VAE's decode {log['psnr_vs_vae_db']:.2f} dB", flush=True)
    student.save_pretrained(out / "tiny_vae")
    return log


def tiny_vae_pool(teacher, stream: ImageStream, n: int, real_only: bool = False, batch: int = 64):
    """``n`` (scaled latents, the teacher's decode of them in [-1, 1]) pairs, made once."""
    latents, decoded = [], []
    scale = teacher.config.scaling_factor
    for start in range(0, n, batch):
        _, x = stream.batch(min(batch, n - start))
        with torch.no_grad(), autocast(x.device):
            z = teacher.encode(x).latent_dist.sample() * scale
            if not real_only:
                z = torch.cat([z[: len(z) // 2], x0_like(z[len(z) // 2:])])
            latents.append(z.float())
            decoded.append(teacher.decode(z / scale).sample.float().clamp(-1, 1))
    return torch.cat(latents), torch.cat(decoded)


def x0_like(z: torch.Tensor) -> torch.Tensor:
    """Latents like an early step's x̂_0: blends of two scenes, blurred, pulled toward the mean (seeded by torch)."""
    n = len(z)
    blend = torch.rand(n, 1, 1, 1, device=z.device)
    z = blend * z + (1 - blend) * z.roll(1, 0)
    blurred = F.interpolate(F.avg_pool2d(z, 4), size=z.shape[-2:], mode="bilinear", align_corners=False)
    z = torch.where(torch.rand(n, 1, 1, 1, device=z.device) < 0.5, blurred, z)
    shrink = 0.3 + 0.7 * torch.rand(n, 1, 1, 1, device=z.device)
    mean = z.mean((2, 3), keepdim=True)
    return mean + shrink * (z - mean)
