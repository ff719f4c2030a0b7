"""What every training stage shares: the recipe (:class:`TrainConfig`), the training data streams and :func:`fit`,
the optimisation loop that checkpoints and resumes.

Data: :class:`ImageStream` mixes freshly rendered world scenes with random crops of real photographs and art
(fetched from Debian packages by :mod:`diffdemo.world.data`); the ``tiny`` preset and any config with
``photo_share = art_share = emoji_share = 0`` need no fetched data. ``emoji_share`` puts emoji subjects among the
world scenes (their glyph tiles are fetched too).

Resuming: with ``checkpoint=`` a stage's :func:`fit` writes its whole state (weights, optimiser, learning-rate
schedule, EMA, loss curve, every random generator it was given) every ``cfg.checkpoint_minutes`` and at the end,
and continues from it when started again, so a CPU run can stop and go on over many sessions. A checkpoint taken
after ``k`` steps resumes to the same loss curve as a run that never stopped.
"""
from __future__ import annotations

import random
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from diffdemo.world.render import render_scenes
from diffdemo.world.scene import sample_scene


@dataclass(frozen=True)
class TrainConfig:
    """The recipe. Step counts are those the shipped models reached (see docs/MODEL_CARD.md for which hardware)."""

    preset: str = "full"  # "full" ships; "tiny" is a seconds-long smoke run for the tests
    seed: int = 0
    image_size: int = 128
    max_text_tokens: int = 24
    # the 8x VAE of the text-to-image model
    vae_steps: int = 2763
    vae_batch: int = 32
    vae_lr: float = 6e-4
    vae_anchor: float = 1.0  # fine-tuning: weight of keeping world images' latents where the U-Net knows them
    vae_crop: int = 0  # side of the 8× VAE's training crops (0: image_size), world ones cut from image_size renders
    vae_groups: int = 0  # a new VAE's group-norm groups (0: the preset's, one channel a group at width 32, as shipped)
    vae_train: str = "all"  # "decoder": fine-tune the decoder alone; the frozen encoder keeps the U-Net's latent space
    vae_latent_noise: float = 0.0  # half of each batch is decoded from latents + N(0, σ²), σ up to this (scaled units)
    # text encoder + U-Net
    unet_steps: int = 1893
    unet_batch: int = 768
    unet_lr: float = 5e-4
    unet_pool: int = 150_000  # scenes encoded once by the frozen VAE; captions are redrawn every use
    unet_photo_pool: int = 0  # photo and art crops encoded once beside them (captioned "a photo" / "a picture")
    # the x4 upscaler
    upscaler_vae_steps: int = 3756
    upscaler_latent_channels: int = 4  # of a new 4× autoencoder (a fine-tune keeps its own)
    upscaler_vae_crop: int = 0  # side of its training crops (0: image_size); 64 is 7× cheaper a step on a CPU
    upscaler_steps: int = 6456
    upscaler_batch: int = 64
    upscaler_pool: int = 60_000
    upscaler_crop: int = 0  # U-Net training windows, latent cells a side (0: whole images); it is fully convolutional
    upscaler_pixel_weight: float = 0.0  # weight of the pixel loss on the U-Net's decoded, back-projected x̂0 (0: none)
    upscaler_decoder_steps: int = 1500  # about 55 minutes on a 2-core CPU
    upscaler_decoder_batch: int = 8
    upscaler_decoder_lr: float = 1e-4
    upscaler_decoder_warmup: int = 50  # a fine-tune: a short warm-up
    upscaler_decoder_pool: int = 2000  # (low-res, the U-Net's latents, high-res) triples, sampled once
    upscaler_decoder_back_projection: float = 2.0  # weight of the loss on the back-projected decode
    # the pixel-space denoiser
    denoiser_steps: int = 3759
    denoiser_batch: int = 64
    denoiser_crop: int = 0  # side of the training crops (0: image_size); the U-Net is fully convolutional
    denoiser_clipped: float = 0.0  # share of noisy inputs clipped to the 8-bit range, as an uploaded file is
    denoiser_low_t_share: float = 0.5  # of each batch: t < T/4, where the noise of photos lies (σ = 100 is t ≈ 230)
    # the tiny VAE
    tiny_vae_steps: int = 4500
    tiny_vae_batch: int = 32
    tiny_vae_lr: float = 6e-4
    tiny_vae_crop: int = 8  # latent cells per side of a training crop (both halves are fully convolutional)
    tiny_vae_pool: int = 1200  # latents decoded once by the teacher VAE
    # shared
    lr: float = 3e-4  # upscaler and denoiser
    warmup_steps: int = 500  # linear learning-rate warm-up of every stage
    cooldown: float = 0.0  # the learning rate falls linearly to 0 over this fraction of each stage's last steps
    cfg_dropout: float = 0.1
    ema_decay: float = 0.9995
    max_minutes_per_stage: float = 0.0  # 0: no cap; else a stage stops early and logs the steps it did
    photo_share: float = 0.0  # of each batch: crops of real photographs (the rest: art, then world scenes)
    art_share: float = 0.0
    emoji_share: float = 0.0  # of the world scenes: an emoji subject instead of a shape (needs the fetched tiles)
    data_dir: str = ""  # fetched images (default: diffdemo.world.data.default_dir())
    init_from: str = ""  # a model-set folder (like assets/) whose weights a stage starts from: a fine-tune
    checkpoint_minutes: float = 5.0


TINY = TrainConfig(preset="tiny", image_size=64, vae_steps=4, vae_batch=4, unet_steps=4, unet_batch=4, unet_pool=16,
                   upscaler_vae_steps=2, upscaler_steps=2, upscaler_batch=2, upscaler_pool=8, upscaler_decoder_steps=2,
                   upscaler_decoder_batch=2, upscaler_decoder_pool=8, denoiser_steps=2,
                   denoiser_batch=2, tiny_vae_steps=2, tiny_vae_batch=2, tiny_vae_pool=8, ema_decay=0.9,
                   warmup_steps=2)


class WorldStream:
    """Fresh training scenes (never held-out ones), rendered on ``device``; seeded per stage. With ``emoji_share``,
    that share of them shows an emoji subject from ``glyphs`` (:mod:`diffdemo.world.emoji`) instead of a shape."""

    def __init__(self, seed: int, size: int, device: torch.device, emoji_share: float = 0.0, glyphs=None):
        self.rng, self.size, self.device = random.Random(seed), size, device
        self.emoji = None
        if emoji_share > 0:
            from diffdemo.world.emoji.stream import EmojiMix

            self.emoji = EmojiMix(emoji_share, glyphs, device)

    def batch(self, n: int):
        if self.emoji is not None:
            return self.emoji.batch(self.rng, n, self.size)
        scenes = [sample_scene(self.rng) for _ in range(n)]
        return scenes, render_scenes(scenes, self.size, self.device, rng=self.rng)


def emoji_options(cfg: TrainConfig) -> dict:
    """WorldStream's emoji keywords for ``cfg``: none without ``cfg.emoji_share``, else the share and the fetched
    glyph tiles (all of them; the ``tiny`` smoke run takes what there is)."""
    if cfg.emoji_share <= 0:
        return {}
    from diffdemo.world.emoji.glyphs import load_glyphs

    glyphs = load_glyphs(cfg.data_dir or None, require_all=cfg.preset != "tiny")
    return {"emoji_share": cfg.emoji_share, "glyphs": glyphs}


class ImageStream:
    """Training images in [-1, 1], ``n×3×size×size`` on ``device``: each image is a photo crop with probability
    ``cfg.photo_share``, an art crop with ``cfg.art_share``, else a world scene. ``kinds`` says which was which.

    World scenes are rendered at ``world_size`` (default ``size``) and cropped to ``size`` at random: a model that
    trains on crops for speed but meets whole ``world_size`` scenes in the app then sees its shapes at their true
    pixel scale (a small star rendered at 64² is half as wide as at 128², and thinner than any the app draws)."""

    def __init__(self, cfg: TrainConfig, seed: int, size: int, device: torch.device, photos=None, art=None,
                 world_size: int | None = None):
        from diffdemo.world import data

        self.world_size = max(size, world_size or size)
        self.world = WorldStream(seed, self.world_size, device, **emoji_options(cfg))
        self.rng, self.size, self.device = self.world.rng, size, device
        self.shares = {"photo": cfg.photo_share, "art": cfg.art_share}
        root = Path(cfg.data_dir) if cfg.data_dir else None
        self.pools = {}
        for kind, images in (("photo", photos), ("art", art)):
            if self.shares[kind] > 0:
                images = images if images is not None else data.load_split(kind, root)
                self.pools[kind] = data.CropPool(images, self.rng)

    def batch(self, n: int) -> tuple[list[str], torch.Tensor]:
        kinds = [self._kind() for _ in range(n)]
        images = torch.empty(n, 3, self.size, self.size, device=self.device)
        world = [i for i, k in enumerate(kinds) if k == "world"]
        if world:
            images[world] = self._crops(self.world.batch(len(world))[1])
        for kind, pool in self.pools.items():
            chosen = [i for i, k in enumerate(kinds) if k == kind]
            if chosen:
                crops = torch.from_numpy(pool.batch(len(chosen), self.size)).to(self.device)
                images[chosen] = crops.permute(0, 3, 1, 2).float() / 127.5 - 1
        return kinds, images

    def _crops(self, scenes: torch.Tensor) -> torch.Tensor:
        """A random ``size``² window of each ``world_size``² scene (the scenes themselves when the sizes agree)."""
        spare = self.world_size - self.size
        if spare == 0:
            return scenes
        corners = [(self.rng.randint(0, spare), self.rng.randint(0, spare)) for _ in range(len(scenes))]
        return torch.stack([s[:, y: y + self.size, x: x + self.size] for s, (y, x) in zip(scenes, corners)])

    def _kind(self) -> str:
        u = self.rng.random()
        if u < self.shares["photo"]:
            return "photo"
        return "art" if u < self.shares["photo"] + self.shares["art"] else "world"


def autocast(device: torch.device):
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()


def init_folder(cfg: TrainConfig, *parts: str) -> Path | None:
    """``cfg.init_from/parts`` when fine-tuning from an existing model set, else None."""
    if not cfg.init_from:
        return None
    folder = Path(cfg.init_from).joinpath(*parts)
    if not folder.exists():
        raise FileNotFoundError(f"--init-from: no {folder}")
    return folder


def fit(name: str, modules: list[torch.nn.Module], loss_fn, steps: int, lr: float, cfg: TrainConfig,
        device: torch.device, ema: bool = False, warmup_steps: int | None = None, checkpoint: Path | None = None,
        rngs: tuple[random.Random, ...] = ()) -> dict:
    """AdamW over ``loss_fn(step)`` with the rate of :func:`rate_factor` (warm-up: ``cfg.warmup_steps`` unless
    given; cool-down: ``cfg.cooldown``); EMA weights are copied in at the end. With ``checkpoint``, resumes from it
    if it exists and saves to it as it goes (``rngs``: the Python generators the loss draws from, saved with it).
    Returns the log."""
    from diffusers.training_utils import EMAModel

    params = [p for m in modules for p in m.parameters()]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    warmup = max(1, cfg.warmup_steps if warmup_steps is None else warmup_steps)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: rate_factor(s, steps, warmup, cfg.cooldown))
    averages = [EMAModel(m.parameters(), decay=cfg.ema_decay, use_ema_warmup=True, foreach=True)
                for m in modules] if ema else []
    state = {"done": 0, "curve": [], "seconds": 0.0}
    if checkpoint is not None and checkpoint.exists():
        state = _load_checkpoint(checkpoint, modules, optimizer, schedule, averages, rngs)
        print(f"[{name}] resumed from {checkpoint} at step {state['done']}", flush=True)
    for m in modules:
        m.train()
    curve, done = state["curve"], state["done"]
    running, clock, saved = torch.zeros((), device=device), ActiveClock(state["seconds"]), time.time()
    every = max(1, min(100, steps // 20))
    since = done % every  # steps in ``running``
    for step in range(done, steps):
        clock.tick()
        with autocast(device):
            loss = loss_fn(step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        for average, m in zip(averages, modules):
            average.step(m.parameters())
        running += loss.detach().float()
        done, since = step + 1, since + 1
        if done % every == 0 or done == steps:
            mean = (running / since).item()
            curve.append([done, round(mean, 5)])
            running.zero_()
            since = 0
            rate = (done - state["done"]) / max(clock.seconds - state["seconds"], 1e-9)
            print(f"[{name}] step {done}/{steps} loss {mean:.5f} ({rate:.2f} it/s)", flush=True)
        # a stage out of time stops where a checkpoint can be saved (the end of a logged stretch of steps)
        out_of_time = since == 0 and cfg.max_minutes_per_stage and clock.seconds > 60 * cfg.max_minutes_per_stage
        if checkpoint is not None and since == 0 and (
                done == steps or out_of_time or time.time() - saved > 60 * cfg.checkpoint_minutes):
            _save_checkpoint(checkpoint, modules, optimizer, schedule, averages, rngs,
                             {"done": done, "curve": curve, "seconds": clock.seconds})
            saved = time.time()
        if out_of_time:
            break
    for average, m in zip(averages, modules):
        average.copy_to(m.parameters())
    for m in modules:
        m.eval()
    clock.tick()
    return {"steps": done, "seconds": round(clock.seconds, 1), "loss_curve": curve}


def rate_factor(step: int, steps: int, warmup: int, cooldown: float = 0.0) -> float:
    """The learning rate's multiplier at ``step`` of ``steps``: a linear warm-up over ``warmup`` steps, constant,
    then a linear fall to 0 over the last ``cooldown`` fraction of the steps (warm-up, stable, decay). Before the
    cool-down starts, a resumed stage can still be given more steps."""
    factor = min(1.0, (step + 1) / max(1, warmup))
    if cooldown > 0:
        factor = min(factor, (steps - step) / max(1.0, cooldown * steps))
    return max(0.0, factor)


class ActiveClock:
    """Seconds of training, not counting the time the process was paused (stopped, or starved by other work):
    ``tick()`` once a step; a gap over 20× the usual step and over 30 s counts as one usual step."""

    def __init__(self, seconds: float = 0.0):
        self.seconds, self.last, self.usual = seconds, time.time(), None

    def tick(self) -> float:
        now = time.time()
        gap, self.last = now - self.last, now
        if self.usual is not None and gap > max(30.0, 20 * self.usual):
            gap = self.usual
        elif gap > 0:
            self.usual = gap if self.usual is None else 0.9 * self.usual + 0.1 * gap
        self.seconds += gap
        return self.seconds


def _save_checkpoint(path: Path, modules, optimizer, schedule, averages, rngs, state: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {**state, "modules": [m.state_dict() for m in modules], "optimizer": optimizer.state_dict(),
               "schedule": schedule.state_dict(), "ema": [a.state_dict() for a in averages],
               "rngs": [r.getstate() for r in rngs], "torch_rng": torch.get_rng_state(),
               "numpy_rng": np.random.get_state()}
    if torch.cuda.is_available():
        payload["cuda_rng"] = torch.cuda.get_rng_state_all()
    partial = path.with_suffix(".partial")
    torch.save(payload, partial)
    partial.replace(path)  # a stop mid-write never leaves a broken checkpoint


def _load_checkpoint(path: Path, modules, optimizer, schedule, averages, rngs) -> dict:
    payload = torch.load(path, map_location="cpu", weights_only=False)  # our own file, written by _save_checkpoint
    for m, weights in zip(modules, payload["modules"]):
        m.load_state_dict(weights)
    optimizer.load_state_dict(payload["optimizer"])
    schedule.load_state_dict(payload["schedule"])
    for average, saved in zip(averages, payload["ema"]):
        average.load_state_dict(saved)
    for r, saved in zip(rngs, payload["rngs"]):
        r.setstate(saved)
    torch.set_rng_state(payload["torch_rng"])
    np.random.set_state(payload["numpy_rng"])
    if "cuda_rng" in payload and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(payload["cuda_rng"])
    return {k: payload[k] for k in ("done", "curve", "seconds")}
