"""The 2-D playground tab: train a tiny diffusion model on a point set in seconds, then scrub its forward process,
its reverse process and its learned score field step by step (the demonstration of Sohl-Dickstein et al. 2015)."""
from __future__ import annotations

import functools
from dataclasses import asdict

import gradio as gr
import pandas as pd

from diffdemo.tasks import DATASETS, PLAYGROUND_SAMPLERS, PlaygroundCache, PlaygroundRequest, playground
from diffdemo.tasks.playground import DEFAULT_DATASET, frame_image
from diffdemo.tasks.playground.run import MAX_ITERATIONS, MAX_POINTS, MAX_STEPS
from diffdemo.ui.runner import Runner, named

EXPLANATION = """A tiny network (an MLP that predicts the noise ε in x_t) learns a cloud of 2-D points, the original
diffusion paper's demonstration. Each frame shows one step t:
- **Forward** (blue): data points pushed through q(x_t|x₀) — each keeps √ᾱ_t of its position and gets noise of
  std √(1−ᾱ_t); at t = T they are indistinguishable from N(0, I). Grey: the data.
- **Reverse** (orange): fresh N(0, I) points run through the learned reverse chain. A few are followed (dark
  squares, their last moves as dark lines, the way from x_T in light grey): DDPM adds fresh noise at every step
  (jagged paths), DDIM is deterministic (smooth paths).
- **Score field**: arrows show the learned score s(x, t) = −ε̂/√(1−ᾱ_t) ≈ ∇ log p_t(x), the direction in which
  the density of x_t rises, which is where the reverse process pushes points (arrow lengths are scaled per frame).

The first run for a data set and seed trains the model (seconds on a CPU); changing sampler, steps or points
reuses it."""


def build_playground_tab(runner: Runner, gpu_group: str) -> dict:
    """Builds the tab's components and events (``/playground``); returns its run state."""
    cache = PlaygroundCache()  # trained models and runs of all sessions, bounded
    with gr.Row():
        with gr.Column(scale=1):
            dataset = gr.Dropdown(list(DATASETS), value=DEFAULT_DATASET, label="Data set")
            with gr.Row():
                sampler = gr.Radio(list(PLAYGROUND_SAMPLERS), value="DDPM", label="Sampler")
                steps = gr.Slider(5, MAX_STEPS, value=PlaygroundRequest.steps, step=1, label="Reverse steps")
            points = gr.Slider(100, MAX_POINTS, value=PlaygroundRequest.points, step=100, label="Points sampled")
            with gr.Row():
                seed = gr.Number(value=0, precision=0, label="Seed (-1 = random)")
                iterations = gr.Slider(200, MAX_ITERATIONS, value=PlaygroundRequest.iterations, step=100,
                                       label="Training iterations")
            run_button = gr.Button("Train and sample", variant="primary")
            gr.Markdown(EXPLANATION)
        with gr.Column(scale=2):
            frame = gr.Image(label="Forward | reverse | score field at one step", show_label=False, type="pil",
                             format="png", interactive=False)
            slider = gr.Slider(0, 1, value=0, step=1, label="Frame (0 = pure noise … last = the samples)",
                               visible=False)
            summary = gr.Markdown()
            gr.Markdown("**Overview**, as in the paper's figure: the forward process, the reverse process and the "
                        "score field side by side, from t = 0 (data) to t = T (noise).")
            overview = gr.Image(label="Overview", show_label=False, type="filepath", format="png",
                                interactive=False)
            loss = gr.LinePlot(x="iteration", y="loss", x_title="training iteration", y_title="loss (MSE of ε̂)",
                               label="Training loss", height=220)
            with gr.Accordion("Numbers and settings (also stored in each PNG)", open=False):
                metadata = gr.JSON(label="Metadata")
    state = gr.State(None)  # the shown run's request (a dict); scrubbing looks the run up in the cache
    inputs = [dataset, sampler, steps, points, seed, iterations]
    event = run_button.click(playground_handler(runner, cache), inputs, [frame, overview, loss, metadata, state],
                             api_name="playground", concurrency_id=gpu_group)
    event.success(show_run, metadata, [slider, summary], api_visibility="private", queue=False)
    slider.input(scrub_handler(cache), [state, slider], frame, api_visibility="private", queue=False)
    return {"state": state}


def playground_handler(runner: Runner, cache: PlaygroundCache):
    task = named("playground", functools.partial(playground, cache=cache))

    def playground_event(dataset: str = DEFAULT_DATASET, sampler: str = "DDPM", steps: int = 50,
                         points: int = 1000, seed: int = 0, iterations: int = 2000, request: gr.Request = None,
                         progress=gr.Progress()):
        task_request = PlaygroundRequest(dataset=dataset, sampler=sampler, steps=steps, points=points, seed=seed,
                                         iterations=iterations)
        progress(0, desc="Training the point denoiser (a few seconds on a CPU; reused afterwards)")
        result = runner.run(task, task_request, request, progress)
        frame_path, overview_path = runner.save_images(result)
        curve = pd.DataFrame(result.metadata["loss_curve"])
        return frame_path, overview_path, curve, result.metadata, asdict(result.run.request)

    return named("playground", playground_event)


def scrub_handler(cache: PlaygroundCache):
    def scrub(state, index):
        run = cache.runs.get(PlaygroundRequest(**state)) if state else None
        if run is None:
            gr.Warning("This run is no longer held in memory; press Train and sample again.")
            return gr.skip()
        return frame_image(run, int(index))

    return scrub


def show_run(metadata: dict) -> tuple:
    """The frame slider set to the run's last frame, and a summary of training and of how close the samples are."""
    if not metadata:
        return gr.skip(), ""
    distance = metadata["distance_to_data"]
    trained = ("reused from memory" if metadata["reused_model"] or metadata.get("reused_run")
               else f"trained in {metadata['train_seconds']:.1f} s")
    text = (f"**{metadata['dataset']}**, seed {metadata['seed']}: {metadata['iterations']} training iterations "
            f"({trained}), loss {metadata['loss_start']:.3f} → {metadata['loss_end']:.3f}; {metadata['steps']} "
            f"{metadata['sampler']} steps for {metadata['points']} points in {metadata['sample_seconds']:.2f} s.  \n"
            f"Mean distance to the nearest data point: pure noise {distance['noise']:.3f}, samples "
            f"**{distance['samples']:.3f}**, fresh data itself {distance['data']:.3f}.")
    return gr.Slider(minimum=0, maximum=metadata["steps"], value=metadata["steps"], visible=True), text
