"""diffdemo: a Gradio app to use and see diffusion models. Run ``python app.py --help``."""
from __future__ import annotations

import argparse
import os
import sys


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Serve the diffdemo web app. With no --model it uses the small model shipped in assets/, "
                    "which needs no network and no GPU.")
    parser.add_argument("--model", default=os.environ.get("DIFFDEMO_MODEL"),
                        help="a Hugging Face hub id (e.g. stable-diffusion-v1-5/stable-diffusion-v1-5) or a local "
                             "diffusers folder; default: the embedded model (env DIFFDEMO_MODEL)")
    parser.add_argument("--upscaler", default=os.environ.get("DIFFDEMO_UPSCALER"),
                        help="an x4-upscaler hub id or folder, e.g. stabilityai/stable-diffusion-x4-upscaler")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 for all interfaces)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--share", action="store_true", help="also create a public Gradio share link")
    parser.add_argument("--auth", help="user:password required to open the app")
    parser.add_argument("--device", help="cuda, cuda:1, mps or cpu (default: what accelerate finds)")
    parser.add_argument("--dtype", choices=["auto", "float16", "bfloat16", "float32"], default="auto",
                        help="default: float16 on CUDA, float32 elsewhere")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no analytics calls: works offline
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # no warnings about image processors we do not use
    from diffdemo.engine import ModelLoadError, load_models
    from diffdemo.ui.app import MAX_FILE_SIZE, build_demo, configure_queue

    try:
        models = load_models(args.model, upscaler=args.upscaler, device=args.device, dtype=args.dtype)
    except ModelLoadError as error:
        sys.exit(f"diffdemo: {error}")
    auth = tuple(args.auth.split(":", 1)) if args.auth else None
    print(f"diffdemo: {models.name} on {models.device} ({str(models.dtype).replace('torch.', '')})", flush=True)
    demo = configure_queue(build_demo(models))
    demo.launch(server_name=args.host, server_port=args.port, share=args.share, auth=auth,
                max_file_size=MAX_FILE_SIZE, show_error=True)


if __name__ == "__main__":
    main()
