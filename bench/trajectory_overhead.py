"""Recording cost of the trajectory viewer: a plain text-to-image run vs the same run with every step recorded.

    python bench/trajectory_overhead.py [--repeats 7] [--steps 25] [--threads 2] [--device cpu] [--quick]

Uses the embedded model (no network). Each variant runs once as a warm-up (not timed), then the variants take turns
``--repeats`` times so that drift in machine load hits all of them alike; medians are printed with their ratio to
the plain run (and the fastest run of each, less disturbed by other load on a shared machine). The target is
``<= 1.5`` for a run that keeps every step and decodes every x̂_0 frame: recording keeps x_t and x̂_0 of every step
and decodes nothing until a frame is looked at; the "every x̂0 frame decoded" rows decode all of them right after the
run (as scrubbing through every step once does), with the tiny VAE (the trajectory tab's cheap exact-layout decoder)
and with the full VAE. Other rows: live previews at every step (fast linear map; tiny VAE) and the downloads
(``--quick`` leaves out the full-VAE and download rows).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere without installing

PROMPT = "a large red star on a blue background"


def variants(models, steps: int, quick: bool = False) -> dict:
    """name -> a zero-argument callable doing one run (same prompt, seed and steps for all)."""
    from diffdemo.tasks import TextToImageRequest, text_to_image
    from diffdemo.tasks.trajectory import TrajectoryRequest, frame, preview, trajectory
    from diffdemo.tasks.trajectory_export import export_run

    plain = TextToImageRequest(prompt=PROMPT, steps=steps, seed=1)
    recorded = TrajectoryRequest(prompt=PROMPT, steps=steps, seed=1, every=1, decode="vae")
    tiny = TrajectoryRequest(prompt=PROMPT, steps=steps, seed=1, every=1, decode="tiny")

    def with_previews(mode):
        return lambda: trajectory(models, recorded, lambda step: preview(models, step, mode))

    def scrub_all(request):
        def run_and_decode():
            run = trajectory(models, request).run
            return [frame(run, i, "x0") for i in range(len(run))]
        return run_and_decode

    def with_downloads():
        run = trajectory(models, recorded).run
        with tempfile.TemporaryDirectory() as folder:
            return export_run(run, folder)

    runs = {"plain text_to_image": lambda: text_to_image(models, plain),
            "recorded (every step kept)": lambda: trajectory(models, recorded),
            "  + live previews, fast, every step": with_previews("fast")}
    if models.tiny_vae is not None:
        runs["  + live previews, tiny VAE, every step"] = with_previews("tiny")
        runs["  + every x̂0 frame decoded, tiny VAE"] = scrub_all(tiny)
    if not quick:
        runs["  + every x̂0 frame decoded, full VAE"] = scrub_all(recorded)
        runs["  + downloads (GIF, MP4, sheet, raw)"] = with_downloads
    return runs


def measure(runs: dict, repeats: int) -> dict[str, list[float]]:
    for run in runs.values():  # warm-up: first-call allocations, the fast map's one-off fit
        run()
    times = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            started = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - started)
    return times


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--device", default=None, help="cpu, cuda… (default: what accelerate finds)")
    parser.add_argument("--quick", action="store_true", help="only plain, recorded and recorded with previews")
    args = parser.parse_args(argv)
    import torch

    from diffdemo.engine import load_models

    if args.threads:
        torch.set_num_threads(args.threads)
    models = load_models(device=args.device)
    times = measure(variants(models, args.steps, args.quick), args.repeats)
    medians = {name: statistics.median(values) for name, values in times.items()}
    plain, fastest = medians["plain text_to_image"], min(times["plain text_to_image"])
    print(f"{models.name} on {models.device}, {torch.get_num_threads()} threads, {args.steps} steps, "
          f"{args.repeats} repeats")
    print(f"{'':40s} {'median':>9s} {'ratio':>6s} {'fastest':>9s} {'ratio':>6s}")
    for name, values in times.items():
        print(f"{name:40s} {medians[name]:7.3f} s {medians[name] / plain:5.2f}x "
              f"{min(values):7.3f} s {min(values) / fastest:5.2f}x")
    for name in ("recorded (every step kept)", "  + every x̂0 frame decoded, tiny VAE"):
        if name in medians:
            ratio = medians[name] / plain
            print(f"{name.strip()} / plain (medians): {ratio:.2f} "
                  f"(target <= 1.5: {'met' if ratio <= 1.5 else 'NOT met'})")


if __name__ == "__main__":
    main()
