"""The trajectory tab: watch one text-to-image run step by step, then scrub through x_t, x̂₀ and ε̂ and download."""
from __future__ import annotations

import uuid

import gradio as gr

from diffdemo.engine.threads import model_thread
from diffdemo.tasks.settings import DEFAULT_GUIDANCE, DEFAULT_SAMPLER, DEFAULT_STEPS
from diffdemo.tasks.trajectory import DECODE_MODES, TrajectoryRequest, describe_step, frame, preview, trajectory
from diffdemo.tasks.trajectory_export import export_run
from diffdemo.ui.live import stream_task
from diffdemo.ui.runner import Runner, named
from diffdemo.ui.settings import live_preview_row, prompt_settings, run_and_stop
from diffdemo.ui.stores import RunStore

PREVIEW_MODES = ("fast", "tiny", "vae", "off")
DECODE_INFO = "vae: exact; tiny: a distilled tiny VAE, about 10× cheaper; fast: a fitted linear latent→RGB map"
DOWNLOADS_NOTE = ("Frames are decoded only when you look at them: the run itself costs about what a plain "
                  "generation does. The downloads are made right after it and decode every kept x̂₀ and x_t frame "
                  "once (the slowest part on a CPU); you can scrub meanwhile.")
EXPLANATION = """- **x_t** is the noisy sample the model sees at step t: mostly noise early on, nearly the image at the
  end.
- **x̂₀** is the model's guess, at that step, of the finished image: the denoiser's current belief.
- **ε̂** is the noise the model thinks is in x_t, ε̂ = (x_t − √ᾱ·x̂₀)/√(1−ᾱ) (shown: its first three latent
  channels as colours).
- **σ** is the noise-to-signal ratio at t (∞ at pure noise, 0 when clean); ᾱ is the share of signal left and
  SNR = 1/σ².
- **Guidance** w pushes each step towards the prompt: output = uncond + w·(cond − uncond)."""


def build_trajectory_tab(runner: Runner, gpu_group: str) -> dict:
    """Builds the tab (``/trajectory`` API); returns its run-id state, step slider and run store (the branch
    section continues the run shown)."""
    store = RunStore()
    runner.on_switch.append(store.clear)
    with gr.Row():
        with gr.Column(scale=1):
            prompt, negative_prompt, sampler, steps, guidance_scale = prompt_settings()
            seed = gr.Number(value=-1, precision=0, label="Seed (-1 = random)")
            with gr.Row():
                decode = gr.Radio(decode_modes(runner.models), value="vae", label="Decode", info=DECODE_INFO)
                every = gr.Slider(1, 25, value=1, step=1, label="Keep every N-th step")
            with gr.Row():
                has_tiny = runner.models.tiny_vae is not None
                live_mode = gr.Radio([m for m in PREVIEW_MODES if has_tiny or m != "tiny"],
                                     value="tiny" if has_tiny else "fast", label="Live preview",
                                     info="fast: the linear map, about free; tiny: the tiny VAE, a few ms; "
                                          "vae: exact, one full decode per preview")
                preview_every = gr.Slider(1, 25, value=1, step=1, label="Preview every N-th step")
            run_button, stop = run_and_stop("Run")
            gr.Markdown(EXPLANATION)
        with gr.Column(scale=2):
            live, status = live_preview_row()
            slider = gr.Slider(0, 1, value=0, step=1, label="Step (kept steps)", visible=False)
            with gr.Row():
                views = [gr.Image(label=label, type="pil", format="png", interactive=False)
                         for label in ("x_t (sample at t)", "x̂₀ (predicted clean)", "ε̂ (predicted noise)")]
            numbers = gr.Markdown()
            files = gr.File(label="Downloads: GIFs and MP4s of x̂₀ and x_t, contact sheet, raw run "
                                  "(.safetensors + .json)", file_count="multiple", interactive=False)
            gr.Markdown(DOWNLOADS_NOTE)
            with gr.Accordion("x̂₀ frames and per-step numbers", open=False):
                gallery = gr.Gallery(label="x̂₀ per kept step", format="png", columns=8, height="auto",
                                     interactive=False)
                gif = gr.File(label="x̂₀ GIF", visible=False, interactive=False)
                sheet = gr.File(label="Contact sheet", visible=False, interactive=False)
                metadata = gr.JSON(label="Metadata")
    run_id = gr.State(None)
    inputs = [prompt, negative_prompt, sampler, steps, guidance_scale, seed, decode, every, live_mode, preview_every]
    event = run_button.click(trajectory_handler(runner, store), inputs,
                             [gallery, gif, sheet, metadata, files, live, status, run_id],
                             api_name="trajectory", concurrency_id=gpu_group)
    # the handler sets run_id as soon as the run ends (before the downloads), so scrubbing starts at once
    run_id.change(show_handler(store), run_id, [slider, *views, numbers], api_visibility="private", queue=False)
    slider.change(scrub_handler(store), [run_id, slider], [*views, numbers], api_visibility="private", queue=False)
    stop.click(runner.stop, None, None, cancels=[event], api_visibility="private", queue=False)
    return {"run_id": run_id, "slider": slider, "store": store}


def decode_modes(models) -> list[str]:
    """The decode modes this model set offers ("tiny" only with a tiny VAE)."""
    return [mode for mode in DECODE_MODES if mode != "tiny" or models.tiny_vae is not None]


def trajectory_handler(runner: Runner, store: RunStore):
    def trajectory_event(prompt: str, negative_prompt: str = "", sampler: str = DEFAULT_SAMPLER,
                         steps: int = DEFAULT_STEPS, guidance_scale: float = DEFAULT_GUIDANCE, seed: int = -1,
                         decode: str = "vae", every: int = 1, live_preview: str = "fast", preview_every: int = 1,
                         request: gr.Request = None):
        task_request = TrajectoryRequest(prompt=prompt, negative_prompt=negative_prompt, sampler=sampler,
                                         steps=steps, guidance_scale=guidance_scale, seed=seed, decode=decode,
                                         every=every)
        cadence = max(1, int(preview_every or 1))

        def on_step(step):
            if live_preview == "off" or step.index % cadence:
                return None
            image = preview(runner.models, step, live_preview if live_preview in ("vae", "tiny") else "fast")
            return (*[gr.skip()] * 5, image, f"step {step.index + 1}/{step.total}", gr.skip())

        result = yield from stream_task(runner, trajectory, task_request, request, on_step)
        run = result.run
        run_id = store.add(run, request)
        yield (*[gr.skip()] * 3, result.metadata, gr.skip(), run.image,
               f"done: {len(run)} frames; making the downloads", run_id)
        gallery, gif, sheet, files = _export(runner, result)
        yield gallery, gif, sheet, result.metadata, files, run.image, f"done: {len(run)} frames", run_id

    return named("trajectory", trajectory_event)


def _export(runner: Runner, result) -> tuple:
    """Gallery (path, caption) pairs, the x̂₀ GIF, the contact sheet and the download list of a finished run,
    made on the model thread, which decodes the frames."""
    return model_thread().run(_write_exports, runner, result)


def _write_exports(runner: Runner, result) -> tuple:
    run = result.run
    paths = runner.save_images(result)  # decodes every kept x̂₀ frame (cached on the run)
    folder = runner.output_dir / uuid.uuid4().hex
    folder.mkdir(parents=True)
    exports = export_run(run, folder)
    gallery = [(p, f"step {n['step'] + 1}") for p, n in zip(paths, run.numbers)]
    files = [exports[k] for k in ("gif_x0", "gif_x_t", "mp4_x0", "mp4_x_t", "sheet", "raw", "raw_json")]
    return gallery, exports["gif_x0"], exports["sheet"], files


def show_handler(store: RunStore):
    def show(run_id):
        run = store.get(run_id)
        if run is None:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip()
        last = len(run) - 1
        return (gr.Slider(minimum=0, maximum=max(last, 1), value=last, visible=True),
                *[frame(run, last, view) for view in ("x_t", "x0", "eps")], describe_step(run, last))

    return show


def scrub_handler(store: RunStore):
    def scrub(run_id, index):
        run = store.get(run_id)
        if run is None:
            return gr.skip(), gr.skip(), gr.skip(), "This run is no longer held; press Run again."
        index = min(max(int(index), 0), len(run) - 1)
        return (*[frame(run, index, view) for view in ("x_t", "x0", "eps")], describe_step(run, index))

    return scrub
