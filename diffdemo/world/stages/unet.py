"""Stage ``unet``: CLIP text encoder + U-Net together -> ``out/model/{text_encoder,unet,scheduler}``.

v-prediction on a zero-terminal-SNR schedule, 10% empty captions for classifier-free guidance, EMA weights. The
training latents come from pools encoded once by the frozen VAE: world scenes (captions redrawn every use) and,
with ``cfg.unet_photo_pool``, photo and art crops captioned plainly ("a photo", "a picture"), so that a photo
inpainted with an empty prompt is continued as a photo. ``cfg.init_from`` fine-tunes an existing pair.
"""
from __future__ import annotations

import hashlib
import random
from pathlib import Path

import torch
import torch.nn.functional as F

from diffdemo.world import models
from diffdemo.world.emoji.scene import recaption_any
from diffdemo.world.training import ImageStream, TrainConfig, WorldStream, autocast, emoji_options, fit, init_folder

CAPTIONS = {"photo": ("a photo", "a photograph", "a photo of nature"), "art": ("a picture", "a painting")}


def run(cfg: TrainConfig, out: Path, device) -> dict:
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(out / "model" / "tokenizer")
    vae = AutoencoderKL.from_pretrained(out / "model" / "vae").to(device).requires_grad_(False)
    init = init_folder(cfg, "model")
    if init is not None:
        text_encoder = CLIPTextModel.from_pretrained(init / "text_encoder", torch_dtype=torch.float32).to(device)
        unet = UNet2DConditionModel.from_pretrained(init / "unet", torch_dtype=torch.float32).to(device)
    else:
        text_encoder = models.text_encoder(cfg.preset, tokenizer).to(device)
        unet = models.unet(cfg.preset, cfg.image_size // 8, text_encoder.config.hidden_size).to(device)
    noise_schedule = DDPMScheduler.from_config(models.latent_scheduler().config)
    rng = random.Random(cfg.seed + 2)
    world = WorldStream(cfg.seed + 2, cfg.image_size, device, **emoji_options(cfg))
    made_from = {"vae": _digest(out / "model" / "vae" / "diffusion_pytorch_model.safetensors"),
                 **{k: getattr(cfg, k) for k in ("seed", "image_size", "unet_pool", "unet_photo_pool", "photo_share",
                                                 "art_share", "emoji_share", "data_dir")}}
    pool_scenes, pool_latents, photo_kinds, photo_latents = cached(
        out / "checkpoints" / "unet_pools.pt", made_from, device,
        lambda: (*encode_pool(vae, world, cfg.unet_pool), *encode_photo_pool(vae, cfg, device)))
    photo_share = (cfg.photo_share + cfg.art_share) if len(photo_kinds) else 0.0

    def captions_and_latents(n: int):
        from_photos = sum(rng.random() < photo_share for _ in range(n))
        index = torch.randint(0, len(pool_scenes), (n - from_photos,))
        latents = [pool_latents[index.to(pool_latents.device)].float()]
        captions = [recaption_any(pool_scenes[i], rng).caption for i in index.tolist()]
        if from_photos:
            chosen = torch.randint(0, len(photo_kinds), (from_photos,))
            latents.append(photo_latents[chosen.to(photo_latents.device)].float())
            captions += [rng.choice(CAPTIONS[photo_kinds[i]]) for i in chosen.tolist()]
        return ["" if rng.random() < cfg.cfg_dropout else c for c in captions], torch.cat(latents)

    def loss_fn(step):
        captions, latents = captions_and_latents(cfg.unet_batch)
        ids = tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                        return_tensors="pt").input_ids.to(device)
        noise = torch.randn_like(latents)
        t = torch.randint(0, noise_schedule.config.num_train_timesteps, (len(latents),), device=device)
        noisy = noise_schedule.add_noise(latents, noise, t)
        pred = unet(noisy, t, encoder_hidden_states=text_encoder(ids)[0]).sample
        return F.mse_loss(pred.float(), noise_schedule.get_velocity(latents, noise, t).float())

    log = fit("unet", [text_encoder, unet], loss_fn, cfg.unet_steps, cfg.unet_lr, cfg, device, ema=True,
              checkpoint=out / "checkpoints" / "unet.pt", rngs=(rng,))
    text_encoder.save_pretrained(out / "model" / "text_encoder")
    unet.save_pretrained(out / "model" / "unet")
    models.latent_scheduler().save_pretrained(out / "model" / "scheduler")
    return {**log, "photo_pool": len(photo_kinds)}


def cached(path: Path, made_from: dict, device, make):
    """``make()``, saved to ``path`` with ``made_from`` (what it depends on), so that a resumed run skips the work;
    made again when ``made_from`` differs from the saved one (``--fresh`` deletes the file)."""
    if path.exists():
        saved = torch.load(path, map_location=device, weights_only=False)
        if saved["made_from"] == made_from:
            print(f"[unet] pools from {path}", flush=True)
            return saved["value"]
        print(f"[unet] {path} was made from another VAE or data mix: encoding again", flush=True)
    value = make()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"made_from": made_from, "value": value}, path)
    return value


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def encode_pool(vae, stream: WorldStream, n: int, batch: int = 256):
    """Renders ``n`` scenes and encodes them once (scaled latents, bf16 on the GPU to save memory)."""
    scenes, latents = [], []
    for start in range(0, n, batch):
        chunk, x = stream.batch(min(batch, n - start))
        scenes += chunk
        latents.append(_encode(vae, x))
    print(f"[unet] encoded a pool of {n} scenes", flush=True)
    return scenes, torch.cat(latents)


def encode_photo_pool(vae, cfg: TrainConfig, device, batch: int = 64) -> tuple[list[str], torch.Tensor]:
    """``cfg.unet_photo_pool`` photo and art crops (in the ratio of their shares) and their scaled latents."""
    total = cfg.photo_share + cfg.art_share
    if cfg.unet_photo_pool <= 0 or total <= 0:
        return [], torch.empty(0)
    share = {"photo_share": cfg.photo_share / total, "art_share": cfg.art_share / total}
    stream = ImageStream(TrainConfig(**{**cfg.__dict__, **share}), cfg.seed + 12, cfg.image_size, device)
    kinds, latents = [], []
    for start in range(0, cfg.unet_photo_pool, batch):
        chunk, x = stream.batch(min(batch, cfg.unet_photo_pool - start))
        kinds += chunk
        latents.append(_encode(vae, x))
    print(f"[unet] encoded a pool of {len(kinds)} photo and art crops", flush=True)
    return kinds, torch.cat(latents)


def _encode(vae, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad(), autocast(x.device):
        z = vae.encode(x).latent_dist.sample() * vae.config.scaling_factor
    return z.to(torch.bfloat16 if x.device.type == "cuda" else torch.float32)
