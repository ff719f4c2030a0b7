"""How OpenMP settings move a 25-step image on the CPU: PyTorch's defaults, the same after a second thread used
torch (a second pool of OpenMP workers: what diffdemo/engine/threads.py avoids), OMP_WAIT_POLICY=PASSIVE and one
thread, on an idle machine and beside one busy process. OpenMP reads its settings once, when torch loads, so every
run is a fresh child process; the settings take turns, round by round.

    python bench/openmp.py                          # prints the table (about 4 minutes on 2 cores)
    python bench/openmp.py --rounds 1 --repeats 2   # a quick check

``python bench/cpu.py`` puts the same table into docs/BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import common

common.setup_paths()
PROMPT = "a large red star on a blue background"
# label -> environment; PyTorch's default: a thread per core, idle workers spin a while before they sleep
SETTINGS = {"PyTorch's defaults (as the app runs)": {},
            "PyTorch's defaults, a second thread's pool alive": {"BENCH_SECOND_POOL": "1"},
            "OMP_WAIT_POLICY=PASSIVE": {"OMP_WAIT_POLICY": "PASSIVE"}, "OMP_NUM_THREADS=1": {"OMP_NUM_THREADS": "1"}}
BUSY_LOOP = "import time\nend = time.monotonic() + 600\nwhile time.monotonic() < end: pass"  # stops by itself


def child(repeats: int, sizes: list) -> None:
    """Loads the embedded model, times ``repeats`` 25-step images per size after one warm-up each, prints
    ``{size: [seconds]}`` as JSON."""
    from diffdemo.engine import load_models
    from diffdemo.tasks import TextToImageRequest, text_to_image

    models = load_models(device="cpu")
    if os.environ.get("BENCH_SECOND_POOL"):
        second_pool(models)
    seconds = {}
    for size in sizes:
        request = TextToImageRequest(prompt=PROMPT, steps=25, width=size, height=size, seed=1234)
        timing = common.interleaved({"image": lambda r=request: text_to_image(models, r)}, repeats)["image"]
        seconds[size] = timing.runs
    print(json.dumps(seconds))


def second_pool(models) -> None:
    """Makes a thread decode one image and then wait, as a web server's worker thread would: its OpenMP pool stays."""
    import threading

    import torch

    done = threading.Event()

    def decode_and_wait() -> None:
        with torch.inference_mode():
            models.vae.decode(torch.zeros(1, 4, 16, 16))
        done.set()
        threading.Event().wait()  # alive until the process ends

    threading.Thread(target=decode_and_wait, daemon=True).start()
    done.wait()


def run_child(settings: dict, repeats: int, sizes: list) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMP_", "GOMP_"))}
    env.update(settings)
    command = [sys.executable, __file__, "--child", "--repeats", str(repeats), "--sizes", *map(str, sizes)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, check=True)
    return {int(size): seconds for size, seconds in json.loads(done.stdout.strip().splitlines()[-1]).items()}


def measure(rounds: int, repeats: int, sizes: list) -> dict:
    """``(settings label, size, condition) -> seconds`` over all rounds; the conditions are 'idle' and 'busy'."""
    found = {(label, size, condition): [] for label in SETTINGS for size in sizes for condition in ("idle", "busy")}
    for _ in range(rounds):
        for condition in ("idle", "busy"):
            busy = subprocess.Popen([sys.executable, "-c", BUSY_LOOP]) if condition == "busy" else None
            try:
                for label, settings in SETTINGS.items():
                    for size, seconds in run_child(settings, repeats, sizes).items():
                        found[label, size, condition] += seconds
            finally:
                if busy is not None:
                    busy.kill()
                    busy.wait()
    return found


def table(rounds: int = 2, repeats: int = 3, sizes: tuple = (128, 256)) -> str:
    found = measure(rounds, repeats, list(sizes))
    rows = []
    for size in sizes:
        for label in SETTINGS:
            idle, busy = found[label, size, "idle"], found[label, size, "busy"]
            rows.append([f"{size}²", label, common.ms(statistics.median(idle)), f"{min(idle):.3f}–{max(idle):.3f}",
                         common.ms(statistics.median(busy)), f"{min(busy):.3f}–{max(busy):.3f}"])
    headers = ["size", "OpenMP settings", "idle machine", "spread (s)", "beside one busy process", "spread (s)"]
    return (common.markdown_table(headers, rows) +
            f"\n\nOne 25-step DDIM image, guidance 5. {rounds} rounds of one fresh process per setting and "
            f"condition, {repeats} images per size in each after one warm-up; 'busy' is a pure-Python loop holding "
            f"one of the cores.")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="images per size and process, after one warm-up")
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.repeats, args.sizes)
    else:
        print(table(args.rounds, args.repeats, args.sizes))


if __name__ == "__main__":
    main()
