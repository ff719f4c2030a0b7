"""The trajectory tab: watch one text-to-image run step by step, then scrub through x_t, x̂₀ and ε̂ and download."""
from __future__ import annotations

import queue
import threading
import uuid
from collections import OrderedDict

import gradio as gr

from diffdemo.tasks import DEFAULT_SAMPLER, SAMPLERS
from diffdemo.tasks.trajectory import (DECODE_MODES, TrajectoryRequest, contact_sheet, describe_step, export_gif,
                                       frame, preview, save_run, trajectory)
from diffdemo.ui.runner import Runner

KEEP_RUNS = 4  # runs held in memory per runner (all sessions together); older ones are dropped
EXPLANATION = """- **x_t** is the noisy sample the model sees at step t: mostly noise early on, nearly the image at the
  end.
- **x̂₀** is the model's guess, at that step, of the finished image: the denoiser's current belief.
- **ε̂** is the noise the model thinks is in x_t, ε̂ = (x_t − √ᾱ·x̂₀)/√(1−ᾱ) (shown: its first three latent
  channels as colours).
- **σ** is the noise-to-signal ratio at t (∞ at pure noise, 0 when clean); ᾱ is the share of signal left and
  SNR = 1/σ².
- **Guidance** w pushes each step towards the prompt: output = uncond + w·(cond − uncond)."""


class RunStore:
    """The last ``KEEP_RUNS`` runs by id; a session's gr.State holds only the id, so memory stays bounded."""

    def __init__(self, size: int = KEEP_RUNS):
        self.size, self._runs, self._lock = size, OrderedDict(), threading.Lock()

    def add(self, run) -> str:
        run_id = uuid.uuid4().hex
        with self._lock:
            self._runs[run_id] = run
            while len(self._runs) > self.size:
                self._runs.popitem(last=False)
        return run_id

    def get(self, run_id):
        with self._lock:
            return self._runs.get(run_id)


def build_trajectory_tab(runner: Runner, gpu_group: str) -> dict:
    """Builds the tab (``/trajectory`` API); returns its run-id state."""
    store = RunStore()
    with gr.Row():
        with gr.Column(scale=1):
            prompt = gr.Textbox(label="Prompt", lines=2, value="a large red star on a blue background")
            negative_prompt = gr.Textbox(label="Negative prompt", value="")
            with gr.Row():
                sampler = gr.Dropdown(list(SAMPLERS), value=DEFAULT_SAMPLER, label="Sampler")
                steps = gr.Slider(1, 150, value=25, step=1, label="Steps")
            guidance_scale = gr.Slider(0, 20, value=5.0, step=0.5, label="Guidance scale (CFG)")
            seed = gr.Number(value=-1, precision=0, label="Seed (-1 = random)")
            with gr.Row():
                decode = gr.Radio(list(DECODE_MODES), value="vae", label="Decode",
                                  info="vae: exact; fast: a fitted linear latent→RGB map, ×8 upsampled")
                every = gr.Slider(1, 25, value=1, step=1, label="Keep every N-th step")
            with gr.Row():
                run_button = gr.Button("Run", variant="primary")
                stop = gr.Button("Stop", variant="stop")
            gr.Markdown(EXPLANATION)
        with gr.Column(scale=2):
            with gr.Row():
                live = gr.Image(label="Live x̂₀ (fast preview)", type="pil", interactive=False)
                status = gr.Textbox(label="Progress", interactive=False)
            slider = gr.Slider(0, 1, value=0, step=1, label="Step (kept steps)", visible=False)
            with gr.Row():
                views = [gr.Image(label=label, type="pil", format="png", interactive=False)
                         for label in ("x_t (sample at t)", "x̂₀ (predicted clean)", "ε̂ (predicted noise)")]
            numbers = gr.Markdown()
            files = gr.File(label="Downloads: GIFs, contact sheet, raw run (.safetensors + .json)",
                            file_count="multiple")
            with gr.Accordion("x̂₀ frames and per-step numbers", open=False):
                gallery = gr.Gallery(label="x̂₀ per kept step", format="png", columns=8, height="auto")
                gif = gr.File(label="x̂₀ GIF", visible=False)
                sheet = gr.File(label="Contact sheet", visible=False)
                metadata = gr.JSON(label="Metadata")
    run_id = gr.State(None)
    inputs = [prompt, negative_prompt, sampler, steps, guidance_scale, seed, decode, every]
    event = run_button.click(_trajectory_handler(runner, store), inputs,
                             [gallery, gif, sheet, metadata, files, live, status, run_id],
                             api_name="trajectory", concurrency_id=gpu_group)
    event.success(_show_handler(store), run_id, [slider, *views, numbers], api_visibility="private", queue=False)
    slider.change(_scrub_handler(store), [run_id, slider], [*views, numbers], api_visibility="private", queue=False)
    stop.click(runner.stop, None, None, cancels=[event], api_visibility="private", queue=False)
    return {"run_id": run_id}


def _trajectory_handler(runner: Runner, store: RunStore):
    def trajectory_event(prompt: str, negative_prompt: str = "", sampler: str = DEFAULT_SAMPLER, steps: int = 25,
                         guidance_scale: float = 5.0, seed: int = -1, decode: str = "vae", every: int = 1,
                         request: gr.Request = None):
        task_request = TrajectoryRequest(prompt=prompt, negative_prompt=negative_prompt, sampler=sampler,
                                         steps=steps, guidance_scale=guidance_scale, seed=seed, decode=decode,
                                         every=every)
        updates: queue.Queue = queue.Queue()

        def with_previews(models, req, callback):
            def send_preview(step) -> None:
                if step.index % req.every == 0:
                    updates.put(("step", step.index, step.total, preview(models, step)))

            def chained(step) -> None:
                callback(step)  # the runner's: raises Cancelled after Stop
                send_preview(step)

            return trajectory(models, req, chained)

        def work() -> None:
            try:
                updates.put(("done", runner.run(with_previews, task_request, request, None)))
            except BaseException as error:  # gr.Error from the runner, re-raised in the handler
                updates.put(("error", error))

        threading.Thread(target=work, name="trajectory", daemon=True).start()
        try:
            while True:
                kind, *payload = updates.get()
                if kind == "error":
                    raise payload[0]
                if kind == "done":
                    break
                index, total, image = payload
                yield (*[gr.skip()] * 5, image, f"step {index + 1}/{total}", gr.skip())
        except GeneratorExit:  # the client went away or Stop cancelled the event: stop the loop too
            runner.stop(request)
            raise
        result = payload[0]
        run = result.extras["run"]
        gallery, gif, sheet, files = _export(runner, result)
        yield (gallery, gif, sheet, result.metadata, files, result.images[-1], f"done: {len(run)} frames",
               store.add(run))

    trajectory_event.__name__ = "trajectory"
    return trajectory_event


def _export(runner: Runner, result) -> tuple:
    """Gallery (path, caption) pairs, the x̂₀ GIF, the contact sheet and the download list of a finished run."""
    run = result.extras["run"]
    paths = runner.save_images(result)
    folder = runner.output_dir / uuid.uuid4().hex
    folder.mkdir(parents=True)
    gif = export_gif(run, folder / "trajectory-x0.gif", "x0")
    gif_t = export_gif(run, folder / "trajectory-x_t.gif", "x_t")
    sheet = contact_sheet(run, folder / "trajectory-sheet.png")
    raw, raw_json = save_run(run, folder / "trajectory-run.safetensors")
    gallery = [(p, f"step {n['step'] + 1}") for p, n in zip(paths, run.numbers)]
    return gallery, gif, sheet, [gif, gif_t, sheet, raw, raw_json]


def _show_handler(store: RunStore):
    def show(run_id):
        run = store.get(run_id)
        if run is None:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip()
        last = len(run) - 1
        return (gr.Slider(minimum=0, maximum=max(last, 1), value=last, visible=True),
                *[frame(run, last, view) for view in ("x_t", "x0", "eps")], describe_step(run, last))

    return show


def _scrub_handler(store: RunStore):
    def scrub(run_id, index):
        run = store.get(run_id)
        if run is None:
            return gr.skip(), gr.skip(), gr.skip(), "This run is no longer held; press Run again."
        index = min(max(int(index), 0), len(run) - 1)
        return (*[frame(run, index, view) for view in ("x_t", "x0", "eps")], describe_step(run, index))

    return scrub
