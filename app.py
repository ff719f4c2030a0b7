"""diffdemo: a Gradio app to use and see diffusion models. Run ``python app.py --help``."""
from __future__ import annotations

import argparse
import os
import sys


def parse_auth(text: str) -> tuple[str, str]:
    """``"user:password"`` -> ``("user", "password")``; the password may contain ':'."""
    user, sep, password = (text or "").partition(":")
    if not sep or not user or not password:
        raise argparse.ArgumentTypeError("expected user:password, e.g. --auth ada:correct-horse")
    return user, password


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Serve the diffdemo web app. With no --model it uses the small model shipped in assets/, "
                    "which needs no network and no GPU.")
    parser.add_argument("--model", default=os.environ.get("DIFFDEMO_MODEL"),
                        help="a Hugging Face hub id (e.g. stable-diffusion-v1-5/stable-diffusion-v1-5), a local "
                             "diffusers folder or one .safetensors/.ckpt file (SD 1.x, 2.x, SDXL); default: the "
                             "embedded model (env DIFFDEMO_MODEL)")
    parser.add_argument("--variant", help="load the folder's *.VARIANT.safetensors weights, e.g. fp16 (found by "
                                          "itself when a folder has only those)")
    parser.add_argument("--vae", help="a VAE (diffusers folder, hub id or one file) used instead of the model's own")
    parser.add_argument("--config", help="with a one-file --model: a diffusers folder whose configs describe it "
                                         "(default: the shipped SD 1.x, 2.x or SDXL config, found from its keys)")
    parser.add_argument("--lora", action="append", default=[], metavar="FILE[:WEIGHT]",
                        help="a LoRA on for every image (repeatable; weight default 1)")
    parser.add_argument("--lora-dir", default=os.environ.get("DIFFDEMO_LORA_DIR"), metavar="FOLDER",
                        help="where <lora:NAME:WEIGHT> in a prompt finds NAME.safetensors (env DIFFDEMO_LORA_DIR)")
    parser.add_argument("--embedding", action="append", default=[], metavar="FILE",
                        help="a textual-inversion embedding; its file name is the word that triggers it (repeatable)")
    parser.add_argument("--models-dir", default=os.environ.get("DIFFDEMO_MODELS_DIR"), metavar="FOLDER",
                        help="a folder of models (diffusers folders and .safetensors/.ckpt files) to switch between "
                             "in the page's model menu and the /select_model API; off unless given (env "
                             "DIFFDEMO_MODELS_DIR)")
    parser.add_argument("--upscaler", default=os.environ.get("DIFFDEMO_UPSCALER"),
                        help="an x4-upscaler hub id or folder, e.g. stabilityai/stable-diffusion-x4-upscaler")
    parser.add_argument("--tiny-vae", default=os.environ.get("DIFFDEMO_TINY_VAE"),
                        help="a TAESD-layout tiny VAE (hub id or folder, e.g. madebyollin/taesd) for cheap live "
                             "previews and trajectory frames; the embedded model ships its own (env DIFFDEMO_TINY_VAE)")
    parser.add_argument("--host", help="address to bind (default 127.0.0.1; 0.0.0.0 on a Hugging Face Space; "
                                       "env GRADIO_SERVER_NAME)")
    parser.add_argument("--port", type=int, help="port (default 7860; env GRADIO_SERVER_PORT or PORT)")
    parser.add_argument("--share", action="store_true",
                        help="also create a public Gradio share link, behind --auth or a login made up and printed "
                             "at start")
    login = parser.add_mutually_exclusive_group()
    login.add_argument("--auth", type=parse_auth, default=os.environ.get("DIFFDEMO_AUTH"), metavar="USER:PASS",
                       help="a login required to open the app (env DIFFDEMO_AUTH)")
    login.add_argument("--no-auth", action="store_true",
                       help="with --share: no login at all; anyone who has the link can use the app")
    parser.add_argument("--mcp", action="store_true",
                        help="also serve the API endpoints as MCP tools at /gradio_api/mcp/ "
                             "(needs pip install \"gradio[mcp]\")")
    limits = parser.add_argument_group("limits for public hosting (see README, Deploy)")
    limits.add_argument("--max-cost", type=float, default=os.environ.get("DIFFDEMO_MAX_COST"), metavar="SECONDS",
                        help="refuse requests estimated to need more model time than this on this machine "
                             "(default 30; 60 on a local GPU; env DIFFDEMO_MAX_COST)")
    limits.add_argument("--job-seconds", type=float, default=os.environ.get("DIFFDEMO_JOB_SECONDS"),
                        metavar="SECONDS", help="stop a job at the end of the step that passes this (default: twice "
                                                "--max-cost; env DIFFDEMO_JOB_SECONDS)")
    limits.add_argument("--jobs-per-session", type=int, default=os.environ.get("DIFFDEMO_JOBS_PER_SESSION"),
                        metavar="N", help="jobs one visitor may have waiting or running (default 2 when public, "
                                          "else 4; env DIFFDEMO_JOBS_PER_SESSION)")
    limits.add_argument("--admin-token", default=os.environ.get("DIFFDEMO_ADMIN_TOKEN"), metavar="TOKEN",
                        help="turn on /diffdemo/admin/jobs and /diffdemo/admin/cancel for whoever sends "
                             "'Authorization: Bearer TOKEN' (env DIFFDEMO_ADMIN_TOKEN)")
    parser.add_argument("--device", help="cuda, cuda:1, mps or cpu (default: what accelerate finds)")
    parser.add_argument("--dtype", choices=["auto", "float16", "bfloat16", "float32"], default="auto",
                        help="default: float16 on CUDA, float32 elsewhere")
    parser.add_argument("--fast", default=os.environ.get("DIFFDEMO_FAST"), metavar="SPEC",
                        help="opt-in speed-ups, e.g. exact (channels-last, fused attention projections), "
                             "compiled, static, exact,step_cache=2 (DeepCache-style, slightly different "
                             "pictures) or exact,vae_tiling (bounded memory for large outputs); see "
                             "docs/BENCHMARKS.md (env DIFFDEMO_FAST)")
    return parser.parse_args(argv)


def build_app(args: argparse.Namespace):
    """Loads the models once and builds the app; returns ``(demo, launch plan)``. A model that cannot be loaded
    ends the program with one line saying why."""
    from diffdemo.ui.space import (add_notice, gpu_decorator, licence_notice, model_device, on_zero_gpu,
                                   wrap_model_events)

    gpu = gpu_decorator()  # first: on ZeroGPU, `spaces` must be imported before CUDA is initialised
    from diffdemo.engine import ModelLoadError, load_models
    from diffdemo.ui.app import GPU_GROUP, build_demo, configure_queue
    from diffdemo.ui.launch import plan_launch, with_limits

    from diffdemo.engine.fast import FastPath, warm_up
    from diffdemo.engine.speed import GPU_GUESS, measure_speeds
    from diffdemo.engine.threads import model_thread

    # loaded and compiled on the thread where the UI is built and runs every task: a second thread using torch
    # would cost the CPU a second OpenMP pool, and every model call up to 2.5x its time (diffdemo/engine/threads.py)
    try:
        fast = FastPath.parse(args.fast) if args.fast else None
        options = dict(upscaler=args.upscaler, tiny_vae=args.tiny_vae, device=model_device(args.device, gpu),
                       dtype=args.dtype, fast=fast, vae=args.vae, loras=args.lora, lora_dir=args.lora_dir,
                       embeddings=args.embedding)
        models = model_thread().run(load_models, args.model, variant=args.variant, config=args.config, **options)
        switcher = model_switcher(args, models, options)
    except (ModelLoadError, ValueError) as error:
        sys.exit(f"diffdemo: {error}")
    found = f", {models.source}" if models.source else ""
    print(f"diffdemo: {models.name}{found} on {models.device} ({str(models.dtype).replace('torch.', '')})",
          flush=True)
    if fast is not None and fast.compile != "off":
        seconds = model_thread().run(warm_up, models, models.native_size, models.native_size)
        print(f"diffdemo: compiled the U-Net in {seconds:.1f} s (--fast {args.fast})", flush=True)
    demo = build_demo(models, switcher=switcher)
    notice = licence_notice(models.name, embedded=args.model is None)
    if notice:
        add_notice(demo, notice)
    demo = configure_queue(demo)
    if gpu is not None:
        wrap_model_events(demo, GPU_GROUP, gpu)
    # requests are priced at this machine's speed (no GPU to time on ZeroGPU before a request: a rough guess)
    speeds = GPU_GUESS if on_zero_gpu() else model_thread().run(measure_speeds, models)
    return demo, with_limits(demo, plan_launch(args), args, models, speeds)


def model_switcher(args, models, options):
    """The model menu's switcher for ``--models-dir`` (None without it)."""
    if not args.models_dir:
        return None
    from pathlib import Path

    from diffdemo.engine.switching import ModelSwitcher, scan_models

    scan_models(args.models_dir)  # a missing folder ends the program here, in one line
    path = Path(args.model) if args.model else None
    return ModelSwitcher(folder=Path(args.models_dir), current=models, options=options,
                         current_name=path.name if path else models.name, current_path=path)


def main(argv=None) -> None:
    args = parse_args(argv)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no analytics calls: works offline
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # no warnings about image processors we do not use
    # OpenMP keeps PyTorch's defaults, the fastest when the app has the machine to itself (2.2x faster than
    # OMP_WAIT_POLICY=PASSIVE here); beside other busy programs PASSIVE or OMP_NUM_THREADS=1 is better: see
    # "OpenMP settings" in docs/BENCHMARKS.md (python bench/openmp.py)
    demo, plan = build_app(args)
    from diffdemo.ui.launch import launch

    launch(demo, plan)  # the upload cap and the request guard are in the plan (ui/limits.py)


if __name__ == "__main__":
    main()
