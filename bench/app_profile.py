"""Where the app's fixed cost per request goes: one gradio_client round trip, cut into stages by timestamps.

    python bench/app_profile.py [--steps 1] [--repeats 12] [--client-poll-ms 50]

A diagnostic for the "app overhead" row of ``bench/cpu.py``, not a benchmark table. It wraps Gradio's
``Blocks.process_api``/``call_function``/``postprocess_data`` and the app's ``Runner.run``/``save_images`` with
timestamps and prints the median of each stage:

  submit       client's predict() called -> server starts the event (HTTP submit, queue)
  task         the task function (what ``bench/cpu.py`` calls "direct")
  save         writing the result PNGs with their metadata
  postprocess  Gradio turning the outputs into files in its cache and JSON
  deliver      server finished -> predict() returns (event stream, client side, file download)

``--client-poll-ms`` rewrites gradio_client's wait between checks of its received-message queue (50 ms in
gradio_client 2.7) in this process only, to show how much of "deliver" that wait is.
"""
from __future__ import annotations

import argparse
import functools
import inspect
import os
import ssl
import statistics
import tempfile
import time

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import common

common.setup_paths()
STAGES = {"submit": ("predict>", "process_api>"), "task": ("task>", "task<"), "save": ("save>", "save<"),
          "postprocess": ("postprocess>", "postprocess<"), "deliver": ("process_api<", "predict<")}


def stamp(marks: dict, owner, attr: str, label: str) -> None:
    """Wraps ``owner.attr`` (a function or coroutine function) to record when it starts and ends."""
    original = getattr(owner, attr)
    if inspect.iscoroutinefunction(original):
        @functools.wraps(original)
        async def wrapped(*args, **kwargs):
            marks[label + ">"] = time.perf_counter()
            try:
                return await original(*args, **kwargs)
            finally:
                marks[label + "<"] = time.perf_counter()
    else:
        @functools.wraps(original)
        def wrapped(*args, **kwargs):
            marks[label + ">"] = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                marks[label + "<"] = time.perf_counter()
    setattr(owner, attr, wrapped)


def set_client_poll(milliseconds: float) -> None:
    import gradio_client.utils as client_utils

    source = inspect.getsource(client_utils.stream_sse_v1plus)
    if "time.sleep(0.05)" not in source:
        raise SystemExit("this gradio_client does not wait 50 ms between checks; --client-poll-ms does not apply")
    source = source.replace("time.sleep(0.05)", f"time.sleep({milliseconds / 1000})")
    exec(compile(source, client_utils.__file__, "exec"), client_utils.__dict__)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=12)
    parser.add_argument("--client-poll-ms", type=float, default=None)
    args = parser.parse_args()
    if args.client_poll_ms is not None:
        set_client_poll(args.client_poll_ms)

    from gradio import blocks
    from gradio_client import Client

    from cpu import GUIDANCE, PROMPT, SEED, free_port
    from diffdemo.engine import load_models
    from diffdemo.engine.threads import model_thread
    from diffdemo.ui import runner
    from diffdemo.ui.app import build_demo, configure_queue

    marks: dict[str, float] = {}
    for owner, attr, label in ((blocks.Blocks, "process_api", "process_api"),
                               (blocks.Blocks, "postprocess_data", "postprocess"),
                               (runner.Runner, "run", "task"), (runner.Runner, "save_images", "save")):
        stamp(marks, owner, attr, label)
    models = model_thread().run(load_models, device="cpu")  # where the app's tasks run, as in app.py
    demo = configure_queue(build_demo(models, output_dir=tempfile.mkdtemp(prefix="bench-")))
    _, url, _ = demo.launch(prevent_thread_lock=True, server_port=free_port(), quiet=True)
    client = Client(url, verbose=False, ssl_verify=ssl.create_default_context())
    request = dict(prompt=PROMPT, steps=args.steps, guidance_scale=GUIDANCE, seed=SEED)
    samples = {name: [] for name in [*STAGES, "round trip"]}
    try:
        for index in range(args.repeats + 2):  # the first two warm up
            marks.clear()
            marks["predict>"] = time.perf_counter()
            client.predict(**request, api_name="/text_to_image")
            marks["predict<"] = time.perf_counter()
            if index >= 2:
                for name, (start, end) in STAGES.items():
                    samples[name].append(marks[end] - marks[start])
                samples["round trip"].append(marks["predict<"] - marks["predict>"])
    finally:
        demo.close()
    poll = "as installed" if args.client_poll_ms is None else f"{args.client_poll_ms:g} ms"
    print(f"{args.steps}-step text-to-image, {args.repeats} round trips, gradio_client wait between checks: {poll}")
    for name, values in samples.items():
        print(f"  {name:12s} median {statistics.median(values) * 1000:7.1f} ms")


if __name__ == "__main__":
    main()
