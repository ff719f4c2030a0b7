"""CPU benchmark of the embedded model: our engine vs a bare diffusers pipeline, step caching, app overhead,
start-up time and memory. Prints Markdown and rewrites the CPU section of docs/BENCHMARKS.md.

    python bench/cpu.py                                          # the full run (about 7 minutes on 2 cores)
    python bench/cpu.py --repeats 1 --steps 10 --sizes 128 --scenes 2 --no-write   # a quick check
"""
from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import argparse
import math
import random
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import numpy as np

import common
import openmp

common.setup_paths()
PROMPT = "a large red star on a blue background"
GUIDANCE = 5.0
SEED = 1234


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="measured runs per variant (median reported)")
    parser.add_argument("--warmups", type=int, default=1, help="unmeasured runs per variant first")
    parser.add_argument("--steps", type=int, nargs="+", default=[10, 25, 50])
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--step-cache", type=int, nargs="+", default=[2, 3], help="fast-mode intervals to measure")
    parser.add_argument("--scenes", type=int, default=8, help="prompts for the step-cache quality check")
    parser.add_argument("--startups", type=int, default=3, help="`python app.py` starts to time")
    parser.add_argument("--skip", nargs="*", default=[],
                        choices=[name for name, _, _ in SECTIONS])
    parser.add_argument("--note", default="", help="a line printed under the machine description")
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/BENCHMARKS.md alone")
    return parser.parse_args(argv)


def psnr(a, b) -> float:
    a, b = (np.asarray(im.convert("RGB"), dtype=np.float64) for im in (a, b))
    mse = np.mean((a - b) ** 2)
    return math.inf if mse == 0 else 10 * math.log10(255**2 / mse)


def engine_call(models, steps: int, size: int, prompt: str = PROMPT, seed: int = SEED, width: int | None = None):
    from diffdemo.engine.threads import model_thread
    from diffdemo.tasks import TextToImageRequest, text_to_image

    request = TextToImageRequest(prompt=prompt, steps=steps, guidance_scale=GUIDANCE, width=width or size,
                                 height=size, seed=seed)
    return lambda: model_thread().run(text_to_image, models, request).images[0]


def diffusers_call(pipe, steps: int, size: int):
    """The same request as a user would write it with diffusers: same scheduler config, steps, guidance, seed."""
    import torch

    return lambda: pipe(PROMPT, negative_prompt="", num_inference_steps=steps, guidance_scale=GUIDANCE, width=size,
                        height=size, generator=torch.Generator("cpu").manual_seed(SEED)).images[0]


def latency(models, args) -> str:
    """Engine vs diffusers (and the engine's step-cache fast mode) by size and steps, interleaved."""
    from diffdemo.engine.fast import FastPath, apply_fast_path

    pipe = models.pipeline()
    pipe.set_progress_bar_config(disable=True)
    cached = {n: apply_fast_path(models, FastPath(step_cache=n)) for n in args.step_cache}
    rows, found = [], {}
    for size in args.sizes:
        for steps in args.steps:
            variants = {"engine": engine_call(models, steps, size), "diffusers": diffusers_call(pipe, steps, size)}
            variants.update({f"cache{n}": engine_call(fast, steps, size) for n, fast in cached.items()})
            t = common.interleaved(variants, args.repeats, args.warmups)
            same = psnr(variants["engine"](), variants["diffusers"]())
            found[size, steps] = t
            rows.append([f"{size}²", steps, common.ms(t["engine"].median), common.ms(t["diffusers"].median),
                         f"{t['diffusers'].median / t['engine'].median:.2f}×", _db(same),
                         *[f"{common.ms(t[f'cache{n}'].median)} ({t['engine'].median / t[f'cache{n}'].median:.2f}×)"
                           for n in cached],
                         f"{t['engine'].spread} / {t['diffusers'].spread}",
                         f"{common.ms(t['engine'].warmup[0]) if t['engine'].warmup else '–'}"])
    headers = ["size", "steps", "engine", "diffusers", "diffusers ÷ engine", "same picture (PSNR)",
               *[f"engine, step cache {n}" for n in cached], "spread engine / diffusers (s)", "engine warm-up"]
    text = common.markdown_table(headers, rows)
    native = found.get((models.native_size, 25))
    if native is not None:
        seconds = native["engine"].median
        text += (f"\n\nTarget: 25 steps at the native {models.native_size}² in ≤ 1 s — {common.ms(seconds)}, "
                 f"{'met' if seconds <= 1 else 'missed'}"
                 + "".join(f"; with step cache {n}: {common.ms(native[f'cache{n}'].median)}" for n in cached) + ".")
    return text


def compiled(models, args) -> str:
    """torch.compile on the CPU: the fast path's ``compiled`` preset on copies of the U-Net and VAE, against the
    plain engine. The compile starts from an empty inductor cache (what a fresh machine pays); then the first
    request after ``warm_up``, interleaved 25-step medians, and a new width (which compiles once more, with that
    dimension dynamic)."""
    import copy
    import dataclasses
    from unittest import mock

    import torch

    from diffdemo.engine.fast import FastPath, apply_fast_path, warm_up

    size, steps = models.native_size, 25
    empty_cache = {"TORCHINDUCTOR_CACHE_DIR": tempfile.mkdtemp(prefix="bench-inductor-")}
    with mock.patch.dict(os.environ, empty_cache):  # this section only
        torch._dynamo.reset()
        fast = apply_fast_path(dataclasses.replace(models, unet=copy.deepcopy(models.unet),
                                                   vae=copy.deepcopy(models.vae)), FastPath.parse("compiled"))
        compile_seconds = warm_up(fast, size, size)
        first = common.Timing()
        common.timed(engine_call(fast, steps, size), first)
        t = common.interleaved({"engine": engine_call(models, steps, size),
                                "compiled": engine_call(fast, steps, size)}, args.repeats, args.warmups)
        same = psnr(engine_call(models, steps, size)(), engine_call(fast, steps, size)())
        wide, new_size = size + size // 2, common.Timing()
        for _ in range(2):  # the first call compiles again, the second runs the graph
            common.timed(engine_call(fast, steps, size, width=wide), new_size)
        torch._dynamo.reset()
    speed = t["engine"].median / t["compiled"].median
    rows = [[f"{size}², {steps} steps", f"{compile_seconds:.0f} s", common.ms(first.runs[0]),
             common.ms(t["engine"].median), common.ms(t["compiled"].median), f"{speed:.2f}×", _db(same),
             f"{new_size.runs[0]:.0f} s, then {common.ms(new_size.runs[1])}",
             f"{t['engine'].spread} / {t['compiled'].spread}"]]
    return common.markdown_table(["request", "compile (warm_up, empty cache)", "first request after warm-up",
                                  "engine", "compiled", "speed-up", "same picture (PSNR)",
                                  f"a new size ({wide}×{size}): first, second", "spread engine / compiled (s)"],
                                 rows)


def _db(value: float) -> str:
    return "identical" if math.isinf(value) else f"{value:.1f} dB"


def quality(models, args) -> str:
    """Step caching vs the full run, same seed: PSNR and what the shape checker reads (25 steps, native size)."""
    from diffdemo.engine.fast import FastPath, apply_fast_path
    from diffdemo.world.checker import judge, score
    from diffdemo.world.scene import sample_scene

    rng = random.Random(7)
    scenes = [sample_scene(rng, mention_prob=1.0) for _ in range(args.scenes)]
    size = models.native_size
    full = [engine_call(models, 25, size, s.caption, SEED + i)() for i, s in enumerate(scenes)]
    rows = [["full (every step)", "–", "–", _accuracy(full, scenes, judge, score)]]
    for n in args.step_cache:
        fast = apply_fast_path(models, FastPath(step_cache=n))
        images = [engine_call(fast, 25, size, s.caption, SEED + i)() for i, s in enumerate(scenes)]
        values = [psnr(a, b) for a, b in zip(full, images)]
        finite = [v for v in values if math.isfinite(v)] or [math.inf]
        rows.append([f"step cache {n}", f"{np.mean(finite):.1f} dB", f"{min(values):.1f} dB",
                     _accuracy(images, scenes, judge, score)])
    return common.markdown_table(["U-Net", "PSNR vs full, mean", "worst", "checker: shape / colour / all asked"],
                                 rows)


def _accuracy(images, scenes, judge, score) -> str:
    scores = [score(scene, judge(image)) for image, scene in zip(images, scenes)]
    shape = np.mean([s["shape"] for s in scores])
    colour = np.mean([s["colour"] for s in scores if "colour" in s])
    every = np.mean([all(s.values()) for s in scores])
    return f"{shape:.0%} / {colour:.0%} / {every:.0%}"


def profile(models, args) -> str:
    """Where a 25-step native-size text-to-image goes: U-Net forwards (CFG batch of 2), VAE decode, text encoder;
    and the same U-Net and VAE calls on channels-last copies (the fast path's ``channels_last``)."""
    import copy

    import torch

    from diffdemo.engine.images import decode_latents
    from diffdemo.engine.prompts import encode_prompt

    side = models.native_size // models.vae_scale
    latents = torch.randn(2, models.unet.config.in_channels, side, side)
    prompt = encode_prompt(models, PROMPT)
    text = torch.cat([prompt.uncond, prompt.cond])
    unet_nhwc, vae_nhwc = (copy.deepcopy(m).to(memory_format=torch.channels_last) for m in (models.unet, models.vae))
    with torch.inference_mode():
        t = common.interleaved({"unet": lambda: models.unet(latents, torch.tensor(500), encoder_hidden_states=text),
                                "unet_nhwc": lambda: unet_nhwc(latents, torch.tensor(500), encoder_hidden_states=text),
                                "vae": lambda: decode_latents(models.vae, latents[:1]),
                                "vae_nhwc": lambda: decode_latents(vae_nhwc, latents[:1]),
                                "text": lambda: encode_prompt(models, PROMPT)}, max(3, args.repeats), args.warmups)
    total = 25 * t["unet"].median + t["vae"].median + t["text"].median

    def nhwc(key: str) -> str:
        return f"{common.ms(t[key + '_nhwc'].median)} ({t[key].median / t[key + '_nhwc'].median:.2f}×)"

    rows = [["U-Net forward (batch 2: CFG)", common.ms(t["unet"].median), nhwc("unet"),
             f"× 25 = {common.ms(25 * t['unet'].median)}", f"{25 * t['unet'].median / total:.0%}"],
            ["VAE decode", common.ms(t["vae"].median), nhwc("vae"), "× 1", f"{t['vae'].median / total:.0%}"],
            ["text encoder (prompt + negative)", common.ms(t["text"].median), "–", "× 1",
             f"{t['text'].median / total:.0%}"],
            ["sum", "", "", common.ms(total), "100%"]]
    return common.markdown_table(["part", "one call", "one call, channels-last (speed-up)", "per 25-step image",
                                  "share"], rows)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http_call(http, api: str, data: list, session: str | None = None) -> list:
    """One request through the app's plain HTTP API: POST every input in order to ``/gradio_api/call/<api>`` (the
    positional form of docs/API.md's curl recipe), read the event stream to its ``complete`` event, download the
    output files. ``http`` is an ``httpx.Client``. Without ``session`` Gradio makes a new session for the call."""
    import json

    body = {"data": data, **({"session_hash": session} if session else {})}
    event = http.post(f"gradio_api/call/{api}", json=body).raise_for_status().json()["event_id"]
    kind, output = None, None
    with http.stream("GET", f"gradio_api/call/{api}/{event}") as stream:
        for line in stream.iter_lines():
            if line.startswith("event: "):
                kind = line[len("event: "):]
            elif line.startswith("data: ") and kind in ("complete", "error"):
                if kind == "error":
                    raise RuntimeError(f"{api} failed: {line}")
                output = json.loads(line[len("data: "):])
                break
    for item in output[0]:  # the gallery's images
        http.get(item["image"]["url"]).raise_for_status()
    return output


def app_overhead(models, args) -> str:
    """A round trip to the launched app vs the same request straight to the task function, three ways:

    * gradio_client as is. httpx builds a new SSL context (reading the CA bundle, ~25 ms) for every request it
      makes, and a round trip makes three (submit, event stream, result download), plain HTTP included.
    * gradio_client given one shared SSL context (``ssl_verify=ssl.create_default_context()``).
    * the plain HTTP API through one ``httpx.Client`` (:func:`http_call`): the app's own cost, without
      gradio_client's, which checks its queue of received messages every 50 ms; once with a new Gradio session per
      call (building one costs this app about 27 ms), once reusing one (``session_hash``), as gradio_client does.
    """
    import ssl

    import httpx
    from gradio_client import Client

    from diffdemo.ui.app import build_demo, configure_queue

    size = models.native_size
    demo = configure_queue(build_demo(models, output_dir=tempfile.mkdtemp(prefix="bench-")))
    _, url, _ = demo.launch(prevent_thread_lock=True, server_port=free_port(), quiet=True)
    try:
        plain = Client(url, verbose=False)
        shared = Client(url, verbose=False, ssl_verify=ssl.create_default_context())  # handed to httpx `verify`
        http = httpx.Client(base_url=url, timeout=120)
        timings = {}
        for steps in (25, 1):  # 1 step: the fixed cost per request, with less of the machine's noise around it
            request = dict(prompt=PROMPT, steps=steps, guidance_scale=GUIDANCE, width=size, height=size, seed=SEED)
            positional = [PROMPT, "", "DDIM", steps, GUIDANCE, size, size, SEED, 1]
            timings[steps] = common.interleaved(
                {"engine": engine_call(models, steps, size),
                 "app": lambda r=request: plain.predict(**r, api_name="/text_to_image"),
                 "app_ssl": lambda r=request: shared.predict(**r, api_name="/text_to_image"),
                 "app_http": lambda d=positional: http_call(http, "text_to_image", d),
                 "app_http_session": lambda d=positional: http_call(http, "text_to_image", d, "bench")},
                args.repeats, args.warmups)
    finally:
        demo.close()
    labels = (("app", "gradio_client, default"), ("app_ssl", "gradio_client with a shared SSL context"),
              ("app_http", "HTTP API (httpx, one connection)"),
              ("app_http_session", "HTTP API, one session (session_hash)"))
    rows = []
    for steps, t in timings.items():
        direct = t["engine"].median
        rows += [[f"{size}², {steps} step{'s' * (steps > 1)}, {label}", common.ms(direct), common.ms(t[key].median),
                  f"{(t[key].median - direct) * 1000:+.0f} ms ({(t[key].median - direct) / direct:+.1%})",
                  f"{t['engine'].spread} / {t[key].spread}"] for key, label in labels]
    t = timings[25]
    direct = t["engine"].median
    share = {key: (t[key].median - direct) / direct for key, _ in labels}

    def verdict(key: str) -> str:
        return f"{share[key]:+.1%} ({'met' if share[key] <= 0.05 else 'missed'})"

    table = common.markdown_table(["request", "direct task call", "round trip", "app overhead",
                                   "spread direct / app (s)"], rows)
    return (f"{table}\n\nTarget: app overhead ≤ 5% — through gradio_client with a shared SSL context "
            f"{verdict('app_ssl')}, with the default client {verdict('app')}; through the plain HTTP API "
            f"{verdict('app_http')}, reusing one session {verdict('app_http_session')}.")


def startup(args) -> str:
    """`python app.py` until its page answers, then one text-to-image request; peak RSS of the app process."""
    rows = []
    for _ in range(args.startups):
        port = free_port()
        started = time.perf_counter()
        app = subprocess.Popen([sys.executable, "app.py", "--port", str(port)], cwd=common.ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            ready = _wait_ready(f"http://127.0.0.1:{port}/", app, started)
            rss_ready = common.peak_rss_mb(app.pid)
            first = _first_request(f"http://127.0.0.1:{port}/")
            rows.append((ready, rss_ready, common.peak_rss_mb(app.pid), first))
        finally:
            app.terminate()
            app.wait(timeout=30)
    ready, rss_ready, rss_after, first = (sorted(column)[len(column) // 2] for column in zip(*rows))
    return common.markdown_table(
        [f"start to ready (median of {len(rows)})", "all starts (s)", "first request after ready",
         "app peak RSS at ready", "after one text-to-image"],
        [[f"{ready:.1f} s", ", ".join(f"{r[0]:.1f}" for r in rows), common.ms(first), f"{rss_ready:.0f} MiB",
          f"{rss_after:.0f} MiB"]])


def _wait_ready(url: str, app: subprocess.Popen, started: float, limit: float = 180) -> float:
    while time.perf_counter() - started < limit:
        if app.poll() is not None:
            raise RuntimeError(f"app.py exited with code {app.returncode} before it was ready")
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return time.perf_counter() - started
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"app.py was not ready after {limit:.0f} s")


def _first_request(url: str) -> float:
    from gradio_client import Client

    started = time.perf_counter()
    Client(url, verbose=False).predict(prompt=PROMPT, seed=SEED, api_name="/text_to_image")
    return time.perf_counter() - started


def main(argv=None) -> None:
    args = parse_args(argv)
    import torch

    from diffdemo.engine import load_models
    from diffdemo.engine.threads import model_thread

    info = common.machine({"benchmark": "python bench/cpu.py " + " ".join(argv if argv is not None else sys.argv[1:])})
    started = time.perf_counter()
    # all model work on the model thread, as in the app: a second thread using torch would slow every call
    models = model_thread().run(load_models, device="cpu")
    load_seconds = time.perf_counter() - started
    parts = [f"## CPU: the embedded model ({models.native_size}² native, {str(models.dtype).replace('torch.', '')})",
             common.machine_lines(info)]
    if args.note:
        parts.append(f"\n> {args.note}")
    omp_env = ", ".join(f"{k}={v}" for k, v in sorted(os.environ.items()) if k.startswith(("OMP_", "GOMP_")))
    parts.append(f"\nModel set loaded in {load_seconds:.1f} s. Threads: {torch.get_num_threads()}; OpenMP: "
                 f"{omp_env or 'PyTorch defaults, as python app.py runs'}. Guidance {GUIDANCE}, DDIM, seed {SEED}, "
                 f"{args.repeats} measured runs after {args.warmups} warm-up per variant.")
    for name, title, make in SECTIONS:
        if name in args.skip:
            continue
        print(f"[bench] {name} …", file=sys.stderr, flush=True)
        # the app section's clients wait for the app's runner, which needs the model thread free
        table = make(models, args) if name == "app" else model_thread().run(make, models, args)
        parts += [f"\n### {title}\n", table]
    parts.append(f"\nPeak RSS of the benchmark process: {common.peak_rss_mb():.0f} MiB "
                 f"(engine, diffusers pipeline and app in one process).")
    text = "\n".join(parts)
    print(text)
    if not args.no_write:
        print(f"[bench] wrote {common.update_section('cpu', text)}", file=sys.stderr)


SECTIONS = [
    ("profile", "Where the time goes: one 25-step image at the native size", profile),
    ("latency", "Text to image, latency: our engine vs bare diffusers on the same modules", latency),
    ("quality", "Step caching (fast mode): picture change vs the full U-Net, 25 steps, same seeds", quality),
    ("compile", "torch.compile on the CPU: the `compiled` preset vs the plain engine", compiled),
    ("app", "App overhead: the whole web app vs a direct engine call", app_overhead),
    ("startup", "`python app.py`: start to ready, memory", lambda models, args: startup(args)),
    ("openmp", "OpenMP settings: on an idle machine and beside a busy one", lambda models, args: openmp.table()),
]

if __name__ == "__main__":
    main()
