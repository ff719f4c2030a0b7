"""Trains the embedded model set on freshly rendered shape-world images: ``python -m diffdemo.world.train --out DIR``.

Stages, in order (``--stages`` runs a subset; each reads what earlier ones wrote under DIR):
  tokenizer  a BPE vocabulary of the caption language                       -> DIR/model/tokenizer
  vae        the 8× autoencoder (MSE + L1 + tiny KL)                         -> DIR/model/vae
  unet       CLIP text encoder + U-Net together: v-prediction on a zero-terminal-SNR schedule,
             10% empty captions for classifier-free guidance, EMA weights     -> DIR/model/{text_encoder,unet,scheduler}
  upscaler   a 4× autoencoder, then the x4-upscaler-layout U-Net              -> DIR/upscaler/{vae,unet,...}
  upscaler_decoder
             the 4× decoder fine-tuned on the U-Net's own samples (the super-resolution tab's settings), against
             the true high-res image, raw and back-projected                    -> DIR/upscaler/vae
  denoiser   a pixel-space DDPM U-Net (epsilon prediction)                     -> DIR/denoiser/{unet,scheduler}
  tiny_vae   a TAESD-layout AutoencoderTiny distilled from the VAE, drawing trajectory frames
             about 10× faster than the VAE's decoder                           -> DIR/tiny_vae
  assemble   pipeline folders (model_index.json) that diffusers loads with no code of ours, weights in fp16

Everything is seeded: the same command gives the same loss curve on the CPU. On a GPU, bf16 autocast is used.
"""
from __future__ import annotations

import argparse
import json
import math
import random
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F

from diffdemo.world import models
from diffdemo.world.render import render_scenes
from diffdemo.world.scene import recaption, sample_scene

STAGES = ("tokenizer", "vae", "unet", "upscaler", "upscaler_decoder", "denoiser", "tiny_vae", "assemble")


@dataclass(frozen=True)
class TrainConfig:
    """The defaults are the recipe of the shipped model (step counts reached on one H100, or a 2-core CPU for the
    upscaler decoder and the tiny VAE; see docs/MODEL_CARD.md)."""

    preset: str = "full"
    seed: int = 0
    image_size: int = 128
    max_text_tokens: int = 24
    vae_steps: int = 2763
    vae_batch: int = 32
    vae_lr: float = 6e-4
    unet_steps: int = 1893
    unet_batch: int = 768
    unet_lr: float = 5e-4
    unet_pool: int = 150_000  # scenes encoded once by the frozen VAE; captions are redrawn every use
    upscaler_vae_steps: int = 3756
    upscaler_steps: int = 6456
    upscaler_batch: int = 64
    upscaler_pool: int = 60_000
    upscaler_decoder_steps: int = 1500  # about 55 minutes on a 2-core CPU
    upscaler_decoder_batch: int = 8
    upscaler_decoder_lr: float = 1e-4
    upscaler_decoder_warmup: int = 50  # a fine-tune: a short warm-up
    upscaler_decoder_pool: int = 2000  # (low-res, the U-Net's latents, high-res) triples, sampled once
    upscaler_decoder_back_projection: float = 2.0  # weight of the loss on the back-projected decode
    denoiser_steps: int = 3759
    denoiser_batch: int = 64
    tiny_vae_steps: int = 4500
    tiny_vae_batch: int = 32
    tiny_vae_lr: float = 6e-4
    tiny_vae_crop: int = 8  # latent cells per side of a training crop (both halves are fully convolutional)
    tiny_vae_pool: int = 1200  # latents decoded once by the teacher VAE
    lr: float = 3e-4  # upscaler and denoiser
    warmup_steps: int = 500  # linear learning-rate warm-up of every stage
    cfg_dropout: float = 0.1
    ema_decay: float = 0.9995
    max_minutes_per_stage: float = 0.0  # 0: no cap; else a stage stops early and logs the steps it did


TINY = TrainConfig(preset="tiny", image_size=64, vae_steps=4, vae_batch=4, unet_steps=4, unet_batch=4, unet_pool=16,
                   upscaler_vae_steps=2, upscaler_steps=2, upscaler_batch=2, upscaler_pool=8, upscaler_decoder_steps=2,
                   upscaler_decoder_batch=2, upscaler_decoder_pool=8, denoiser_steps=2,
                   denoiser_batch=2, tiny_vae_steps=2, tiny_vae_batch=2, tiny_vae_pool=8, ema_decay=0.9,
                   warmup_steps=2)


class WorldStream:
    """Fresh training scenes (never held-out ones), rendered on ``device``; seeded per stage."""

    def __init__(self, seed: int, size: int, device: torch.device):
        self.rng, self.size, self.device = random.Random(seed), size, device

    def batch(self, n: int):
        scenes = [sample_scene(self.rng) for _ in range(n)]
        return scenes, render_scenes(scenes, self.size, self.device, rng=self.rng)


def _autocast(device: torch.device):
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()


def fit(name: str, modules: list[torch.nn.Module], loss_fn, steps: int, lr: float, cfg: TrainConfig,
        device: torch.device, ema: bool = False, warmup_steps: int | None = None) -> dict:
    """AdamW with warm-up (``cfg.warmup_steps`` unless given) over ``loss_fn(step)``; EMA weights are copied in at
    the end. Returns the log."""
    from diffusers.training_utils import EMAModel

    params = [p for m in modules for p in m.parameters()]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    warmup = max(1, cfg.warmup_steps if warmup_steps is None else warmup_steps)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup))
    averages = [EMAModel(m.parameters(), decay=cfg.ema_decay, use_ema_warmup=True, foreach=True)
                for m in modules] if ema else []
    for m in modules:
        m.train()
    curve, running, start, done = [], torch.zeros((), device=device), time.time(), 0
    every = max(1, min(100, steps // 20))
    for step in range(steps):
        with _autocast(device):
            loss = loss_fn(step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        for average, m in zip(averages, modules):
            average.step(m.parameters())
        running += loss.detach().float()
        done = step + 1
        if done % every == 0 or done == steps:
            mean = (running / (done - every * (len(curve)))).item()
            curve.append([done, round(mean, 5)])
            running.zero_()
            print(f"[{name}] step {done}/{steps} loss {mean:.5f} ({done / (time.time() - start):.1f} it/s)", flush=True)
        if cfg.max_minutes_per_stage and time.time() - start > 60 * cfg.max_minutes_per_stage:
            break
    for average, m in zip(averages, modules):
        average.copy_to(m.parameters())
    for m in modules:
        m.eval()
    return {"steps": done, "seconds": round(time.time() - start, 1), "loss_curve": curve}


def train_tokenizer(cfg: TrainConfig, out: Path, device) -> dict:
    from transformers import CLIPTokenizer

    rng = random.Random(cfg.seed)
    captions = [sample_scene(rng, mention_prob=0.7).caption for _ in range(20000)]
    tokenizer = CLIPTokenizer().train_new_from_iterator(captions, vocab_size=1000)
    tokenizer.model_max_length = cfg.max_text_tokens
    folder = out / "model" / "tokenizer"
    tokenizer.save_pretrained(folder)
    canonical_token_ids(folder / "tokenizer.json")
    return {"vocab_size": len(CLIPTokenizer.from_pretrained(folder))}


def canonical_token_ids(path: Path) -> None:
    """Renumbers a trained BPE vocabulary deterministically (the trainer's order of single tokens varies per run).

    Special tokens keep their ids; then come the unmerged tokens sorted by text, then merged ones in merge order.
    """
    data = json.loads(path.read_text())
    vocab, merges = data["model"]["vocab"], data["model"]["merges"]
    merged = list(dict.fromkeys("".join(m) if isinstance(m, list) else m.replace(" ", "") for m in merges))
    specials = [t["content"] for t in sorted(data["added_tokens"], key=lambda t: t["id"])]
    assert [vocab[t] for t in specials] == list(range(len(specials))), "special tokens must come first"
    singles = sorted(t for t in vocab if t not in set(merged) and t not in specials)
    data["model"]["vocab"] = {token: i for i, token in enumerate(specials + singles + merged)}
    path.write_text(json.dumps(data, ensure_ascii=False))


def train_autoencoder(vae, cfg: TrainConfig, steps: int, seed: int, device) -> dict:
    stream = WorldStream(seed, cfg.image_size, device)

    def loss_fn(step):
        _, x = stream.batch(cfg.vae_batch)
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample()).sample.float()
        return F.mse_loss(recon, x) + 0.5 * F.l1_loss(recon, x) + 1e-6 * posterior.kl().mean()

    log = fit("vae", [vae], loss_fn, steps, cfg.vae_lr, cfg, device)
    _, x = stream.batch(256)
    with torch.no_grad():
        latents = torch.cat([vae.encode(c).latent_dist.sample() for c in x.split(64)])
        recon = torch.cat([vae.decode(vae.encode(c).latent_dist.mode()).sample for c in x.split(64)]).clamp(-1, 1)
    mse = ((recon - x) / 2).pow(2).flatten(1).mean(1)  # in [0, 1] units
    log.update(latent_std=latents.std().item(), psnr_db=(-10 * torch.log10(mse)).median().item())
    print(f"[vae] reconstruction PSNR {log['psnr_db']:.2f} dB, latent std {log['latent_std']:.3f}", flush=True)
    return log


def train_vae(cfg: TrainConfig, out: Path, device) -> dict:
    vae = models.vae(cfg.preset, cfg.image_size).to(device)
    log = train_autoencoder(vae, cfg, cfg.vae_steps, cfg.seed + 1, device)
    vae.register_to_config(scaling_factor=round(1.0 / log["latent_std"], 5))  # unit-variance latents, as SD does
    vae.save_pretrained(out / "model" / "vae")
    return log


def train_unet(cfg: TrainConfig, out: Path, device) -> dict:
    from diffusers import AutoencoderKL, DDPMScheduler
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(out / "model" / "tokenizer")
    vae = AutoencoderKL.from_pretrained(out / "model" / "vae").to(device).requires_grad_(False)
    text_encoder = models.text_encoder(cfg.preset, tokenizer).to(device)
    unet = models.unet(cfg.preset, cfg.image_size // 8, text_encoder.config.hidden_size).to(device)
    noise_schedule = DDPMScheduler.from_config(models.latent_scheduler().config)
    rng = random.Random(cfg.seed + 2)
    pool_scenes, pool_latents = encode_pool(vae, WorldStream(cfg.seed + 2, cfg.image_size, device), cfg.unet_pool)

    def loss_fn(step):
        index = torch.randint(0, len(pool_scenes), (cfg.unet_batch,))
        latents = pool_latents[index.to(pool_latents.device)].float()
        scenes = [recaption(pool_scenes[i], rng) for i in index.tolist()]
        captions = ["" if rng.random() < cfg.cfg_dropout else s.caption for s in scenes]
        ids = tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                        return_tensors="pt").input_ids.to(device)
        noise = torch.randn_like(latents)
        t = torch.randint(0, noise_schedule.config.num_train_timesteps, (len(scenes),), device=device)
        noisy = noise_schedule.add_noise(latents, noise, t)
        pred = unet(noisy, t, encoder_hidden_states=text_encoder(ids)[0]).sample
        return F.mse_loss(pred.float(), noise_schedule.get_velocity(latents, noise, t).float())

    log = fit("unet", [text_encoder, unet], loss_fn, cfg.unet_steps, cfg.unet_lr, cfg, device, ema=True)
    text_encoder.save_pretrained(out / "model" / "text_encoder")
    unet.save_pretrained(out / "model" / "unet")
    models.latent_scheduler().save_pretrained(out / "model" / "scheduler")
    return log


def encode_pool(vae, stream: WorldStream, n: int, batch: int = 256):
    """Renders ``n`` scenes and encodes them once (scaled latents, bf16 on the GPU to save memory)."""
    scenes, latents = [], []
    for start in range(0, n, batch):
        chunk, x = stream.batch(min(batch, n - start))
        with torch.no_grad(), _autocast(x.device):
            z = vae.encode(x).latent_dist.sample() * vae.config.scaling_factor
        scenes += chunk
        latents.append(z.to(torch.bfloat16 if x.device.type == "cuda" else torch.float32))
    print(f"[unet] encoded a pool of {n} scenes", flush=True)
    return scenes, torch.cat(latents)


def rescale_latent_space(vae, factor: float) -> None:
    """Multiplies the VAE's latents by ``factor`` without changing what it reconstructs."""
    with torch.no_grad():
        c = vae.config.latent_channels
        vae.quant_conv.weight[:c] *= factor  # mean channels; the next c are log-variance
        vae.quant_conv.bias[:c] *= factor
        vae.quant_conv.bias[c:] += 2 * math.log(factor)
        vae.post_quant_conv.weight *= 1 / factor


def train_upscaler(cfg: TrainConfig, out: Path, device) -> dict:
    from diffusers import DDPMScheduler

    vae = models.upscaler_vae(cfg.preset, cfg.image_size).to(device)
    vae_log = train_autoencoder(vae, cfg, cfg.upscaler_vae_steps, cfg.seed + 3, device)
    # diffusers' upscale pipeline insists on scaling_factor 0.08333; scale latents so that gives unit variance
    rescale_latent_space(vae, 1.0 / (models.UPSCALER_SCALING_FACTOR * vae_log["latent_std"]))
    vae.register_to_config(scaling_factor=models.UPSCALER_SCALING_FACTOR)
    vae.requires_grad_(False)
    low = cfg.image_size // 4
    unet = models.upscaler_unet(cfg.preset, low, models._WIDTHS[cfg.preset]["text"]).to(device)
    noise_schedule = DDPMScheduler.from_config(models.latent_scheduler().config)
    low_res_schedule = DDPMScheduler(**models.UPSCALER_NOISE_SCHEDULE)
    pool_small, pool_latents = upscaler_pool(vae, WorldStream(cfg.seed + 4, cfg.image_size, device),
                                             cfg.upscaler_pool, low)

    def loss_fn(step):
        index = torch.randint(0, len(pool_small), (cfg.upscaler_batch,), device=device)
        small, latents, n = pool_small[index], pool_latents[index], cfg.upscaler_batch
        # noise augmentation of the low-res input, mostly at the small levels used for inference
        level = torch.where(torch.rand(n, device=device) < 0.5, torch.randint(0, 41, (n,), device=device),
                            torch.randint(0, models.MAX_NOISE_LEVEL + 1, (n,), device=device))
        small = low_res_schedule.add_noise(small, torch.randn_like(small), level)
        noise = torch.randn_like(latents)
        t = torch.randint(0, noise_schedule.config.num_train_timesteps, (n,), device=device)
        noisy = noise_schedule.add_noise(latents, noise, t)
        no_text = torch.zeros(n, 1, unet.config.cross_attention_dim, device=device)  # text-free upscaler
        pred = unet(torch.cat([noisy, small], 1), t, encoder_hidden_states=no_text, class_labels=level).sample
        return F.mse_loss(pred.float(), noise_schedule.get_velocity(latents, noise, t).float())

    log = fit("upscaler", [unet], loss_fn, cfg.upscaler_steps, cfg.lr, cfg, device, ema=True)
    folder = out / "upscaler"
    vae.save_pretrained(folder / "vae")
    unet.save_pretrained(folder / "unet")
    models.latent_scheduler().save_pretrained(folder / "scheduler")
    low_res_schedule.save_pretrained(folder / "low_res_scheduler")
    return {"vae": vae_log, "unet": log}


def upscaler_pool(vae, stream: WorldStream, n: int, low: int):
    """``n`` (low-res image ``n×3×low×low``, scaled latents of the full image) pairs, made once."""
    pool_small, pool_latents = [], []
    for start in range(0, n, 256):
        _, x = stream.batch(min(256, n - start))
        with torch.no_grad(), _autocast(x.device):
            pool_latents.append(vae.encode(x).latent_dist.sample() * models.UPSCALER_SCALING_FACTOR)
        # half the low-res inputs are bicubic (what PIL users make), half box-filtered
        bicubic = F.interpolate(x, size=low, mode="bicubic", antialias=True).clamp(-1, 1)
        area = F.interpolate(x, size=low, mode="area")
        pool_small.append(torch.where(torch.rand(len(x), 1, 1, 1, device=x.device) < 0.5, bicubic, area))
    return torch.cat(pool_small), torch.cat(pool_latents).float()


def train_upscaler_decoder(cfg: TrainConfig, out: Path, device) -> dict:
    """Fine-tunes the upscaler VAE's decoder on what it will be given: latents the U-Net samples (the
    super-resolution task's default sampler) from the low-res images of a pool of scenes, paired with
    the true high-res images. The loss adds the decode after back-projection (the tab's default), so the decoder
    spends its capacity on the edges back-projection cannot restore. Encoder and U-Net stay as they are."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

    from diffdemo.tasks.super_resolution import back_project_tensor

    folder = out / "upscaler"
    vae = AutoencoderKL.from_pretrained(folder / "vae").to(device).requires_grad_(False)
    unet = UNet2DConditionModel.from_pretrained(folder / "unet").to(device).eval()
    low_res_schedule = DDPMScheduler.from_pretrained(folder / "low_res_scheduler")
    stream = WorldStream(cfg.seed + 7, cfg.image_size, device)
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
              ema=True, warmup_steps=cfg.upscaler_decoder_warmup)
    vae.eval().requires_grad_(False)
    log.update({f"{k}_before": v for k, v in before.items()}, **upscaler_decoder_psnr(vae, *held))
    print(f"[upscaler_decoder] held-out PSNR: {log}", flush=True)
    vae.save_pretrained(folder / "vae")
    return log


def stream_triple(stream: WorldStream, n: int, low: int):
    """``n`` high-res images and their low-res versions, rounded to 8-bit levels as a user's file would be (half
    antialiased bicubic, as PIL makes them, half box-filtered)."""
    _, x = stream.batch(n)
    bicubic = F.interpolate(x, size=low, mode="bicubic", antialias=True)
    small = torch.where(torch.rand(n, 1, 1, 1, device=x.device) < 0.5, bicubic, F.interpolate(x, size=low, mode="area"))
    return ((small.clamp(-1, 1) + 1) * 127.5).round() / 127.5 - 1, x


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
    with _autocast(small.device):
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


def train_denoiser(cfg: TrainConfig, out: Path, device) -> dict:
    unet = models.denoiser(cfg.preset, cfg.image_size).to(device)
    schedule = models.pixel_scheduler()
    stream = WorldStream(cfg.seed + 5, cfg.image_size, device)
    T = schedule.config.num_train_timesteps

    def loss_fn(step):
        _, x = stream.batch(cfg.denoiser_batch)
        n = len(x)
        # half the batch at t < T/4, where denoising real photos' noise levels happens
        t = torch.where(torch.rand(n, device=device) < 0.5, torch.randint(0, T // 4, (n,), device=device),
                        torch.randint(0, T, (n,), device=device))
        noise = torch.randn_like(x)
        return F.mse_loss(unet(schedule.add_noise(x, noise, t), t).sample.float(), noise)

    log = fit("denoiser", [unet], loss_fn, cfg.denoiser_steps, cfg.lr, cfg, device, ema=True)
    unet.save_pretrained(out / "denoiser" / "unet")
    schedule.save_pretrained(out / "denoiser" / "scheduler")
    return log


def train_tiny_vae(cfg: TrainConfig, out: Path, device) -> dict:
    """Distils the VAE (the teacher) into :func:`models.tiny_vae`: the decoder learns the teacher's decode of
    scaled latents, the encoder the teacher's latents of those decodes. Half the latents are real encodings; the
    rest are blends, blurs and low-contrast shrinks, like the blurry x̂_0 of a run's early steps."""
    from diffusers import AutoencoderKL

    teacher = AutoencoderKL.from_pretrained(out / "model" / "vae").to(device).eval().requires_grad_(False)
    student = models.tiny_vae(cfg.preset, len(teacher.config.block_out_channels)).to(device)
    stream = WorldStream(cfg.seed + 6, cfg.image_size, device)
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

    log = fit("tiny_vae", [student], loss_fn, cfg.tiny_vae_steps, cfg.tiny_vae_lr, cfg, device)
    with torch.no_grad():
        image = student.decode(held_latents).sample.float().clamp(-1, 1)
    mse = ((image - held_decoded) / 2).pow(2).flatten(1).mean(1)
    log["psnr_vs_vae_db"] = (-10 * torch.log10(mse)).median().item()
    print(f"[tiny_vae] PSNR against the VAE's decode {log['psnr_vs_vae_db']:.2f} dB", flush=True)
    student.save_pretrained(out / "tiny_vae")
    return log


def tiny_vae_pool(teacher, stream: WorldStream, n: int, real_only: bool = False, batch: int = 64):
    """``n`` (scaled latents, the teacher's decode of them in [-1, 1]) pairs, made once."""
    latents, decoded = [], []
    scale = teacher.config.scaling_factor
    for start in range(0, n, batch):
        _, x = stream.batch(min(batch, n - start))
        with torch.no_grad(), _autocast(x.device):
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


def assemble(cfg: TrainConfig, out: Path, device, dtype=torch.float16) -> dict:
    """Writes pipeline folders; weights are stored in ``dtype`` (fp16 halves the download)."""
    from diffusers import (AutoencoderKL, AutoencoderTiny, DDIMScheduler, DDPMPipeline, DDPMScheduler,
                           StableDiffusionPipeline, StableDiffusionUpscalePipeline, UNet2DConditionModel, UNet2DModel)
    from transformers import CLIPTextModel, CLIPTokenizer

    main, up, den = out / "model", out / "upscaler", out / "denoiser"
    tokenizer = CLIPTokenizer.from_pretrained(main / "tokenizer")
    text_encoder = CLIPTextModel.from_pretrained(main / "text_encoder")
    written = {}
    if (main / "unet").exists():
        pipe = StableDiffusionPipeline(
            vae=AutoencoderKL.from_pretrained(main / "vae"), text_encoder=text_encoder, tokenizer=tokenizer,
            unet=UNet2DConditionModel.from_pretrained(main / "unet"), scheduler=DDIMScheduler.from_pretrained(
                main / "scheduler"), safety_checker=None, feature_extractor=None, requires_safety_checker=False)
        pipe.to(dtype=dtype).save_pretrained(main)
        written["model"] = str(main)
    if (up / "unet").exists():
        pipe = StableDiffusionUpscalePipeline(
            vae=AutoencoderKL.from_pretrained(up / "vae"), text_encoder=text_encoder, tokenizer=tokenizer,
            unet=UNet2DConditionModel.from_pretrained(up / "unet"),
            low_res_scheduler=DDPMScheduler.from_pretrained(up / "low_res_scheduler"),
            scheduler=DDIMScheduler.from_pretrained(up / "scheduler"), max_noise_level=models.MAX_NOISE_LEVEL)
        pipe.to(dtype=dtype).save_pretrained(up)
        written["upscaler"] = str(up)
    if (den / "unet").exists():
        pipe = DDPMPipeline(unet=UNet2DModel.from_pretrained(den / "unet"),
                            scheduler=DDPMScheduler.from_pretrained(den / "scheduler"))
        pipe.to(dtype=dtype).save_pretrained(den)
        written["denoiser"] = str(den)
    if (out / "tiny_vae").exists():
        AutoencoderTiny.from_pretrained(out / "tiny_vae").to(dtype=dtype).save_pretrained(out / "tiny_vae")
        config = out / "tiny_vae" / "config.json"  # diffusers writes this key, then warns about it when loading
        config.write_text(json.dumps({k: v for k, v in json.loads(config.read_text()).items()
                                      if k != "block_out_channels"}, indent=2, sort_keys=True) + "\n")
        written["tiny_vae"] = str(out / "tiny_vae")
    for config in out.glob("*/text_encoder/config.json"):
        # stored in fp16, but load as fp32 unless asked otherwise, like the diffusers models beside it
        config.write_text(config.read_text().replace('"dtype": "float16"', '"dtype": "float32"'))
    return written


RUNNERS = {"tokenizer": train_tokenizer, "vae": train_vae, "unet": train_unet, "upscaler": train_upscaler,
           "upscaler_decoder": train_upscaler_decoder,
           "denoiser": train_denoiser, "tiny_vae": train_tiny_vae, "assemble": assemble}


def train(cfg: TrainConfig, out: Path, stages=STAGES, device: str | None = None) -> dict:
    """Runs ``stages`` in order, writing each stage's log to ``out/logs/<stage>.json``."""
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    (out / "logs").mkdir(parents=True, exist_ok=True)
    logs = {}
    for i, stage in enumerate(s for s in STAGES if s in stages):
        torch.manual_seed(cfg.seed * 100 + STAGES.index(stage))
        start = time.time()
        logs[stage] = RUNNERS[stage](cfg, out, dev)
        record = {"stage": stage, "device": str(dev), "wall_seconds": round(time.time() - start, 1),
                  "config": asdict(cfg), "torch": torch.__version__, "log": logs[stage]}
        (out / "logs" / f"{stage}.json").write_text(json.dumps(record, indent=1))
    return logs


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated subset of {','.join(STAGES)}")
    parser.add_argument("--preset", choices=("full", "tiny"), default="full", help="tiny: a seconds-long smoke run")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    parser.add_argument("--seed", type=int, default=0)
    for field in ("vae_steps", "vae_batch", "vae_lr", "unet_steps", "unet_batch", "unet_pool", "upscaler_vae_steps",
                  "upscaler_steps", "upscaler_batch", "upscaler_pool", "upscaler_decoder_steps",
                  "upscaler_decoder_pool", "denoiser_steps", "tiny_vae_steps",
                  "tiny_vae_batch", "tiny_vae_lr", "tiny_vae_pool", "max_minutes_per_stage"):
        parser.add_argument("--" + field.replace("_", "-"), type=float if "minutes" in field or "lr" in field else int)
    args = parser.parse_args(argv)
    cfg = replace(TINY if args.preset == "tiny" else TrainConfig(), seed=args.seed)
    overrides = {k: v for k, v in vars(args).items() if k in TrainConfig.__dataclass_fields__ and v is not None}
    cfg = replace(cfg, **overrides)
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = set(stages) - set(STAGES)
    if unknown:
        parser.error(f"unknown stage(s) {sorted(unknown)}; choose from {', '.join(STAGES)}")
    train(cfg, args.out, stages, args.device)


if __name__ == "__main__":
    main()
