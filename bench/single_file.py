"""A full-size SD 1.5-architecture one-file checkpoint (random weights, fp16, original key layout, ~2.1 GB) loaded
offline from the configs shipped in diffdemo/configs/, then one image: load time and peak RSS.

    python bench/single_file.py [--keep DIR]     # several minutes on two CPU cores; needs ~10 GB of RAM

It proves that the shipped SD 1.x config and tokenizer fit a real-sized file: every tensor must convert and load
bit-identically (fp16 -> fp32), with no network (HF_HUB_OFFLINE=1). The load runs in a fresh process so that its
peak RSS is the loader's alone.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
os.environ["HF_HUB_OFFLINE"] = "1"


def random_component(module, generator):
    """A stand-in with ``state_dict()`` (random fp16 tensors of the module's shapes) and ``config``."""
    import torch

    state = {k: (torch.randn(v.shape, generator=generator) * 0.02).half() for k, v in module.state_dict().items()}
    return SimpleNamespace(state_dict=lambda: state, config=getattr(module, "config", None))


def write_file(path: Path) -> dict:
    import torch
    from accelerate import init_empty_weights
    from checkpoints import to_original, write_checkpoint
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from diffdemo.engine.single_file import CONFIGS

    folder = CONFIGS / "sd1"
    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(str(folder / "unet")))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(str(folder / "vae")))
        text = CLIPTextModel(CLIPTextConfig.from_pretrained(str(folder / "text_encoder")))
    generator = torch.Generator().manual_seed(0)
    components = {name: random_component(module, generator) for name, module in
                  (("unet", unet), ("vae", vae), ("text_encoder", text))}
    state = to_original(components, "sd1")
    write_checkpoint(state, path)
    probes = {k: state[k].float().sum().item() for k in list(state)[::200]}
    return {"tensors": len(state), "params": sum(v.numel() for v in state.values()), "probes": probes}


def load_and_generate(path: str) -> None:
    """In the child process: load with no config argument, make one image, print a JSON line."""
    import resource

    import numpy as np

    from diffdemo.engine import load_models
    from diffdemo.engine.single_file import read_state_dict
    from diffdemo.tasks import TextToImageRequest, text_to_image

    started = time.perf_counter()
    models = load_models(path, device="cpu")
    loaded = time.perf_counter() - started
    rss_after_load = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    result = text_to_image(models, TextToImageRequest(prompt="a photo of a cat", steps=1, width=64, height=64,
                                                      seed=0, guidance_scale=1.0))
    state = read_state_dict(Path(path))
    unet_ok = all(np.array_equal(a.detach().numpy(), b.float().numpy()) for a, b in
                  zip([models.unet.conv_in.weight, models.vae.post_quant_conv.weight,
                       models.text_encoder.embeddings.token_embedding.weight],
                      [state["model.diffusion_model.input_blocks.0.0.weight"],
                       state["first_stage_model.post_quant_conv.weight"],
                       state["cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"]]))
    print(json.dumps({"source": models.source, "load_seconds": round(loaded, 1),
                      "peak_rss_gib_after_load": round(rss_after_load, 2),
                      "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
                      "image": list(result.images[0].size), "weights_identical": unet_ok,
                      "unet_params": sum(p.numel() for p in models.unet.parameters())}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", help="write the file into this folder and keep it")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return load_and_generate(args.child)
    folder = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="diffdemo-sd15-"))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "sd15-random-fp16.safetensors"
    try:
        started = time.perf_counter()
        written = write_file(path)
        print(f"wrote {path} ({path.stat().st_size / 2**30:.2f} GiB, {written['params'] / 1e9:.3f} B parameters, "
              f"{written['tensors']} tensors) in {time.perf_counter() - started:.0f} s", flush=True)
        child = subprocess.run([sys.executable, __file__, "--child", str(path)], capture_output=True, text=True,
                               env={**os.environ, "TRANSFORMERS_VERBOSITY": "error"})
        if child.returncode:
            sys.exit(child.stderr[-3000:])
        print(child.stdout.strip().splitlines()[-1])
    finally:  # the 2 GB file and the temporary folder go, whatever happened (unless --keep)
        if not args.keep:
            path.unlink(missing_ok=True)
            folder.rmdir()


if __name__ == "__main__":
    main()
