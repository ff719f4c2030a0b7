"""Trains the embedded model set: ``python -m diffdemo.world.train --out DIR [--stages ...] [--resume]``.

Stages, in order (``--stages`` runs a subset; each reads what earlier ones wrote under DIR; one module each in
:mod:`diffdemo.world.stages`):
  tokenizer  a BPE vocabulary of the caption language                       -> DIR/model/tokenizer
  vae        the 8× autoencoder (MSE + L1 + tiny KL)                         -> DIR/model/vae
  unet       CLIP text encoder + U-Net together: v-prediction on a zero-terminal-SNR schedule,
             10% empty captions for classifier-free guidance, EMA weights     -> DIR/model/{text_encoder,unet,scheduler}
  upscaler   a 4× autoencoder, then the x4-upscaler-layout U-Net              -> DIR/upscaler/{vae,unet,...}
  upscaler_decoder
             the 4× decoder fine-tuned on the U-Net's own samples             -> DIR/upscaler/vae
  denoiser   a pixel-space DDPM U-Net (epsilon prediction)                     -> DIR/denoiser/{unet,scheduler}
  tiny_vae   a TAESD-layout AutoencoderTiny distilled from the VAE            -> DIR/tiny_vae
  assemble   pipeline folders (model_index.json) that diffusers loads with no code of ours, weights in fp16

Training data: world scenes rendered on the fly, mixed (``--photo-share``, ``--art-share``) with crops of real
images fetched by ``python -m diffdemo.world.data fetch``. ``--init-from assets`` fine-tunes the shipped models.
Every stage checkpoints to DIR/checkpoints every few minutes; the same command continues where it stopped.
Everything is seeded: the same command gives the same loss curve on the CPU. On a GPU, bf16 autocast is used.
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, fields, replace
from pathlib import Path

import torch

from diffdemo.world.stages import STAGES, runner
from diffdemo.world.training import TINY, TrainConfig

__all__ = ["STAGES", "TINY", "TrainConfig", "main", "train"]


def train(cfg: TrainConfig, out: Path, stages=STAGES, device: str | None = None) -> dict:
    """Runs ``stages`` in order, writing each stage's log to ``out/logs/<stage>.json``."""
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    (out / "logs").mkdir(parents=True, exist_ok=True)
    logs = {}
    for stage in (s for s in STAGES if s in stages):
        torch.manual_seed(cfg.seed * 100 + STAGES.index(stage))
        start = time.time()
        logs[stage] = runner(stage)(cfg, out, dev)
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
    parser.add_argument("--fresh", action="store_true", help="ignore (delete) the stages' checkpoints in DIR")
    for f in fields(TrainConfig):
        if f.name not in ("preset",):
            parser.add_argument("--" + f.name.replace("_", "-"), type=type(f.default) if f.default != "" else str,
                                default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    cfg = TINY if args.preset == "tiny" else TrainConfig()
    overrides = {f.name: getattr(args, f.name) for f in fields(TrainConfig)
                 if f.name != "preset" and getattr(args, f.name, None) is not None}
    cfg = replace(cfg, **overrides)
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = set(stages) - set(STAGES)
    if unknown:
        parser.error(f"unknown stage(s) {sorted(unknown)}; choose from {', '.join(STAGES)}")
    if args.fresh:
        for stage in stages:
            for path in (args.out / "checkpoints").glob(f"{stage}*.pt"):
                path.unlink()
    train(cfg, args.out, stages, args.device)


if __name__ == "__main__":
    main()
