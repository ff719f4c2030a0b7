"""The compare tab (2–4 runs from the same noise, stepped together) and the side-by-side view it shares with branch."""
from __future__ import annotations

import math

import gradio as gr

from diffdemo.tasks.settings import DEFAULT_GUIDANCE, DEFAULT_SAMPLER, DEFAULT_STEPS
from diffdemo.tasks.compare import CompareRequest, compare, frames_at, numbers_at
from diffdemo.tasks.trajectory import preview
from diffdemo.ui.live import stream_task
from diffdemo.ui.runner import Runner, named
from diffdemo.ui.settings import live_preview_row, prompt_settings, run_and_stop
from diffdemo.ui.trajectory_tab import DECODE_INFO, RunStore, decode_modes

MAX_RUNS = 4
PRESETS = {
    "10 vs 20 steps": "steps=10\nsteps=20",
    "Four samplers": "sampler=DDIM\nsampler=Euler a\nsampler=DPM++ 2M\nsampler=UniPC",
    "Guidance 1 / 3 / 7.5": "guidance=1\nguidance=3\nguidance=7.5",
    "Two prompts": "prompt=a large red star on a blue background\nprompt=a large yellow heart on a blue background",
}
EXPLANATION = """Every variant starts from **the same noise** (same seed) and runs through the same loop, one after
another. The slider moves them **together by the fraction of each run done**, so step 5 of 10 sits beside step 10 of
20; the table gives each one's numbers there. *x̂₀ → final* is how far that step's guess still is from where its run
ends (RMS, in latents)."""


def build_comparison_view(store: RunStore, comparison_id: gr.State, max_runs: int = MAX_RUNS,
                          label: str = "Progress through every run (%)") -> dict:
    """A percent slider, ``max_runs`` columns (title, x̂₀, x_t) and a numbers table, for the comparison held in
    ``store`` under ``comparison_id``; shown at 100 % whenever the id changes, redrawn on every slider move."""
    slider = gr.Slider(0, 100, value=100, step=1, label=label, visible=False)
    columns, titles, images = [], [], []
    with gr.Row():
        for _ in range(max_runs):
            with gr.Column(visible=False, min_width=160) as column:
                titles.append(gr.Markdown())
                images += [gr.Image(label="x̂₀ (predicted clean)", type="pil", format="png", interactive=False),
                           gr.Image(label="x_t (sample at t)", type="pil", format="png", interactive=False)]
            columns.append(column)
    numbers = gr.Markdown()
    draw = draw_comparison(store, max_runs)

    def show(cid):
        comparison = store.get(cid)
        if comparison is None:
            return [gr.skip()] * (2 + len(columns) + len(titles) + len(images))
        shown = [gr.Column(visible=i < len(comparison.runs)) for i in range(max_runs)]
        return [gr.Slider(value=100, visible=True), *shown, *draw(cid, 100)]

    comparison_id.change(show, comparison_id, [slider, *columns, *titles, *images, numbers],
                         api_visibility="private", queue=False)
    slider.change(draw, [comparison_id, slider], [*titles, *images, numbers], api_visibility="private", queue=False)
    return {"slider": slider, "numbers": numbers}


def draw_comparison(store: RunStore, max_runs: int):
    def draw(cid, percent):
        comparison = store.get(cid)
        if comparison is None:
            return [gr.skip()] * (3 * max_runs) + ["This comparison is no longer held; run it again."]
        rows = numbers_at(comparison, float(percent))
        frames = frames_at(comparison, float(percent))
        titles = [f"**{r['label']}** · step {r['step'] + 1}/{r['total']} · t = {r['t']}" for r in rows]
        titles += [""] * (max_runs - len(rows))
        images = [image for pair in frames for image in pair] + [None] * (2 * (max_runs - len(frames)))
        return [*titles, *images, numbers_table(rows)]

    return draw


def _number(value: float) -> str:
    return "∞" if math.isinf(value) else f"{value:.3g}"


def numbers_table(rows: list[dict]) -> str:
    """A Markdown table of :func:`~diffdemo.tasks.compare.numbers_at` rows."""
    lines = ["| run | step | t | σ | ᾱ | guidance | x̂₀ → final |", "| --- | --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {r['label']} | {r['step'] + 1}/{r['total']} | {r['t']} | {_number(r['sigma'])} | "
              f"{_number(r['alpha_bar'])} | {r['guidance_scale']:g} | {r['to_final']:.3f} |" for r in rows]
    return "\n".join(lines)


def build_compare_tab(runner: Runner, gpu_group: str) -> dict:
    """Builds the tab (``/compare`` API); returns its comparison-id state."""
    store, comparison_id = RunStore(total=8), gr.State(None)  # a comparison holds up to 4 runs
    runner.on_switch.append(store.clear)
    with gr.Row():
        with gr.Column(scale=1):
            prompt, negative_prompt, sampler, steps, guidance_scale = prompt_settings()
            with gr.Row():
                seed = gr.Number(value=-1, precision=0, label="Seed (-1 = random, shared by all)")
                decode = gr.Radio(decode_modes(runner.models), value="vae", label="Decode", info=DECODE_INFO)
            preset = gr.Dropdown(list(PRESETS), value="10 vs 20 steps", label="Preset")
            variants = gr.Textbox(label="Variants, one per line", lines=4, value=PRESETS["10 vs 20 steps"],
                                  info="key=value pairs separated by ';' that override the settings above; keys: "
                                       "prompt, negative_prompt, sampler, steps, guidance")
            run_button, stop = run_and_stop("Compare")
            gr.Markdown(EXPLANATION)
        with gr.Column(scale=2):
            live, status = live_preview_row()
            note = gr.Markdown()
            build_comparison_view(store, comparison_id)
            with gr.Accordion("Final images and per-step numbers", open=False):
                gallery = gr.Gallery(label="Final image of each variant", format="png", columns=4, height="auto",
                                     interactive=False)
                metadata = gr.JSON(label="Metadata")
    preset.change(lambda name: PRESETS.get(name, gr.skip()), preset, variants, api_visibility="private",
                  queue=False)
    inputs = [prompt, variants, negative_prompt, sampler, steps, guidance_scale, seed, decode]
    event = run_button.click(compare_handler(runner, store), inputs,
                             [gallery, metadata, note, live, status, comparison_id], api_name="compare",
                             concurrency_id=gpu_group)
    stop.click(runner.stop, None, None, cancels=[event], api_visibility="private", queue=False)
    return {"comparison_id": comparison_id}


def compare_handler(runner: Runner, store: RunStore):
    def compare_event(prompt: str, variants: str = PRESETS["10 vs 20 steps"], negative_prompt: str = "",
                      sampler: str = DEFAULT_SAMPLER, steps: int = DEFAULT_STEPS,
                      guidance_scale: float = DEFAULT_GUIDANCE, seed: int = -1,
                      decode: str = "vae", request: gr.Request = None):
        task_request = CompareRequest(prompt=prompt, variants=variants, negative_prompt=negative_prompt,
                                      sampler=sampler, steps=steps, guidance_scale=guidance_scale, seed=seed,
                                      decode=decode)
        run_number = [0]
        preview_mode = "tiny" if runner.models.tiny_vae is not None else "fast"

        def on_step(step):
            run_number[0] += step.index == 0  # each variant's loop starts again at step 0
            return (*[gr.skip()] * 3, preview(runner.models, step, preview_mode),
                    f"run {run_number[0]} · step {step.index + 1}/{step.total}", gr.skip())

        result = yield from stream_task(runner, compare, task_request, request, on_step)
        comparison = result.comparison
        gallery = list(zip(runner.save_images(result), comparison.labels))
        note = result.metadata.get("step_count_note", {}).get("text", "")
        yield (gallery, result.metadata, note, result.images[-1], f"done: {len(comparison.runs)} runs",
               store.add(comparison, request))

    return named("compare", compare_event)
