"""CPU timing of the Super-resolution tab's default run: the shipped upscaler against another model set's.

    python bench/restoration.py [--candidate DIR] [--repeats 5] [--no-write]

Times ×4 with the tab's defaults (4 samples of 5 steps, mirrored, back-projected) on a 256² photograph in evaluate
mode (downscaled to 64², upscaled back) and as a plain upload (256² in, 1024² out), alternating the model sets
within each round so machine drift hits them alike; medians and the candidate/shipped ratio. Then a 2048² output
(a 512² upload) once per set, each in a fresh process, for its time and peak memory. Rewrites the
``restoration`` section of docs/BENCHMARKS.md unless ``--no-write``.
"""
from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import common

common.setup_paths()


def photo(side: int):
    """scikit-image's astronaut (512²) resized to ``side``² with Lanczos."""
    from PIL import Image
    from skimage import data

    image = Image.fromarray(data.astronaut())
    return image.resize((side, side), Image.LANCZOS)


def load(folder: Path):
    from diffdemo.world.evaluate_photos import load_model_set

    return load_model_set(folder)


def request(image, evaluate: bool):
    from diffdemo.tasks import SuperResolutionRequest

    return SuperResolutionRequest(image=image, scale=4, seed=0, evaluate=evaluate)


def big_run(folder: Path) -> dict:
    """One 512² -> 2048² upscale in this process: seconds and peak resident memory."""
    from diffdemo.tasks import super_resolve

    models = load(folder)
    before = common.peak_rss_mb()
    started = time.perf_counter()
    result = super_resolve(models, request(photo(512), evaluate=False))
    seconds = time.perf_counter() - started
    side = result.images[0].size
    return {"seconds": seconds, "peak_rss_mb": common.peak_rss_mb(), "rss_before_mb": before, "size": list(side)}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shipped", type=Path, default=common.ROOT / "assets")
    parser.add_argument("--candidate", type=Path, help="another model-set folder (laid out as assets/)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--big-only", type=Path, help=argparse.SUPPRESS)  # the fresh process of the 2048² run
    args = parser.parse_args(argv)
    if args.big_only:
        print(json.dumps(big_run(args.big_only)))
        return
    from diffdemo.tasks import super_resolve

    sets = {"shipped": args.shipped, **({"candidate": args.candidate} if args.candidate else {})}
    models = {name: load(folder) for name, folder in sets.items()}
    image = photo(256)
    variants = {}
    for name, m in models.items():
        variants[f"{name}, evaluate mode (64² → 256²)"] = lambda m=m: super_resolve(m, request(image, True))
        variants[f"{name}, upload (256² → 1024²)"] = lambda m=m: super_resolve(m, request(image, False))
    timings = common.interleaved(variants, args.repeats)
    rows = []
    for label, timing in timings.items():
        name, case = label.split(", ", 1)
        base = timings[f"shipped, {case}"].median
        rows.append([case, name, common.ms(timing.median), timing.spread, f"{timing.median / base:.2f}×"])
    big = {}
    for name, folder in sets.items():
        out = subprocess.run([sys.executable, __file__, "--big-only", str(folder)], capture_output=True, text=True,
                             check=True).stdout.strip().splitlines()[-1]
        big[name] = json.loads(out)
        rows.append(["upload (512² → 2048²), fresh process, once", name, common.ms(big[name]["seconds"]), "–",
                     f"peak memory {big[name]['peak_rss_mb']:.0f} MiB"])
    table = common.markdown_table(["×4 super-resolution, the tab's defaults", "upscaler", "median", "spread (s)",
                                   "ratio to shipped / memory"], rows)
    info = common.machine({"shipped": str(args.shipped), "candidate": str(args.candidate or "–"),
                           "repeats": args.repeats})
    text = (f"## Super-resolution tab, CPU (`python bench/restoration.py`)\n\n{common.machine_lines(info)}\n\n"
            f"{table}\n")
    print(text)
    if not args.no_write:
        common.update_section("restoration", text)


if __name__ == "__main__":
    main()
