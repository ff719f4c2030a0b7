"""The forward-process tab: noise an image to any t (latent and pixel space) and plot β_t, ᾱ_t and SNR(t)."""
from __future__ import annotations

from pathlib import Path

import gradio as gr
import pandas as pd

from diffdemo.tasks import DEFAULT_SAMPLER, SAMPLERS, ForwardRequest, forward, noise_schedule
from diffdemo.ui.runner import Runner, named, uploaded_path
from diffdemo.world.examples import example_images

EXPLANATION = """The **forward process** destroys an image a little at a time; because the steps are Gaussian, any
step t can be reached in one jump: **x_t = √ᾱ_t·x₀ + √(1−ᾱ_t)·ε** with fresh noise ε ~ N(0, I).
- **β_t** is the variance of the noise one step adds (plotted as log₁₀: it spans 0.001 … 1); **ᾱ_t** = ∏(1−β_s)
  is the share of the signal's variance still left at t (1 = clean, 0 = pure noise). A zero-terminal-SNR
  schedule's last step has β_T = 1: it erases whatever is left.
- **SNR(t)** = ᾱ_t/(1−ᾱ_t), signal over noise, plotted as log₁₀. The built-in model's schedule ends at ᾱ_T = 0
  ("zero terminal SNR"): log SNR(T) = −∞, so that last point is not drawn.
- **Latent space** is where the model actually diffuses: the VAE encodes the image to a small 4-channel grid, that
  grid is noised and decoded back to look at. **Pixel space** noises the pixels themselves, for intuition.
The same ε is used for every t, so the row below differs only in ᾱ_t."""
PLOTS = (("log10_beta", "log₁₀ β_t"), ("alpha_bar", "ᾱ_t"), ("log10_snr", "log₁₀ SNR(t)"))
MARKER = "chosen t"
PLOT_STRIDE = 4
VIEWS = ("x₀ (as used)", "x_t in latent space (decoded)", "x_t in pixel space", "latent x_t itself (channels 1–3)")


def build_forward_tab(runner: Runner, gpu_group: str) -> dict:
    """Builds the tab's components and events (``/forward``); returns its input image."""
    last = runner.models.scheduler.config.num_train_timesteps - 1
    schedules: dict = {}  # (model, sampler) -> noise_schedule(...), filled on first use

    def plots(sampler: str, t: int) -> tuple:
        models = runner.models  # the one loaded now (models can be switched)
        if (models.name, sampler) not in schedules:
            schedules[models.name, sampler] = noise_schedule(models, sampler)
        return schedule_frames(schedules[models.name, sampler], int(t))

    with gr.Row():
        with gr.Column(scale=1):
            image = gr.Image(label="Image", type="pil", image_mode=None, format="png", sources=("upload", "clipboard"))
            t = gr.Slider(0, last, value=last // 2 + 1, step=1, label="Timestep t",
                          info=f"0 = clean … {last} = pure noise; releasing the slider re-noises the image")
            with gr.Row():
                sampler = gr.Dropdown(list(SAMPLERS), value=DEFAULT_SAMPLER, label="Sampler (whose schedule)")
                seed = gr.Number(value=0, precision=0, label="Noise seed (-1 = random)")
            run_button = gr.Button("Noise it", variant="primary")
            _add_examples(image, t, Path(runner.output_dir) / "forward-examples")
            gr.Markdown(EXPLANATION)
        with gr.Column(scale=2):
            with gr.Row():
                views = [gr.Image(label=label, format="png", type="filepath", interactive=False) for label in VIEWS]
            numbers = gr.Markdown()
            gr.Markdown("**x_t for a row of t values** — top: latent space (decoded), bottom: pixel space; the same ε "
                        "in every column.")
            row = gr.Image(label="Row of t values", show_label=False, format="png", type="filepath",
                           interactive=False)
            with gr.Row():
                charts = [gr.LinePlot(value=frame, x="t", y="value", color="curve", x_title="t", y_title=title,
                                      label=title, height=260, x_lim=[0, last],
                                      color_map={title: "#2563eb", MARKER: "#dc2626"}, color_title="")
                          for frame, (_, title) in zip(plots(DEFAULT_SAMPLER, last // 2 + 1), PLOTS)]
            with gr.Accordion("Numbers and settings (also stored in each PNG)", open=False):
                metadata = gr.JSON(label="Metadata")
    inputs, outputs = [image, t, seed, sampler], [*views, row, metadata]
    # preprocess=False: the task opens the upload itself (size checked before decoding, its own messages)
    event = run_button.click(forward_handler(runner), inputs, outputs, api_name="forward", concurrency_id=gpu_group,
                             preprocess=False)
    event.success(describe_numbers, metadata, numbers, api_visibility="private", queue=False)
    gr.on([t.change, sampler.change], plots, [sampler, t], charts, api_visibility="private", queue=False)
    refresh = gr.on([t.release, sampler.change], refresh_handler(runner), inputs, outputs,
                    api_visibility="private", concurrency_id=gpu_group, trigger_mode="always_last",
                    preprocess=False)
    refresh.success(describe_numbers, metadata, numbers, api_visibility="private", queue=False)
    return {"image": image}


def forward_handler(runner: Runner):
    def forward_image(image, t: int = 500, seed: int = 0, sampler: str = DEFAULT_SAMPLER, request: gr.Request = None):
        task_request = ForwardRequest(image=uploaded_path(image), t=t, seed=seed, sampler=sampler)
        result = runner.run(forward, task_request, request, None)
        return (*runner.save_images(result), result.metadata)

    return named("forward", forward_image)


def refresh_handler(runner: Runner):
    """Re-noises the loaded image at a new t or schedule; the row of t values stays as it is (it does not depend
    on t), so only x_t is decoded. Does nothing while no image is loaded: moving t then only moves the marker."""

    def refresh(image, t, seed, sampler, request: gr.Request = None):
        if image is None:
            return (gr.skip(),) * (len(VIEWS) + 2)
        task_request = ForwardRequest(image=uploaded_path(image), t=t, seed=seed, sampler=sampler, row=(t,))
        result = runner.run(forward, task_request, request, None)
        *views, _ = runner.save_images(result)
        return (*views, gr.skip(), result.metadata)

    return refresh


def schedule_frames(schedule: dict, t: int) -> tuple:
    """One DataFrame per plot (β_t, ᾱ_t, log₁₀ SNR): the curve, plus a vertical line at ``t`` named MARKER.

    Non-finite values (log SNR at ᾱ = 0) are left out of the curve and the marker's extent. Curves keep every
    PLOT_STRIDE-th t, and every t of the last 50 where they turn steeply, so that dragging t stays light."""
    steps = schedule["t"]
    keep = (steps % PLOT_STRIDE == 0) | (steps >= steps[-1] - 50)
    frames = []
    for key, title in PLOTS:
        curve = pd.DataFrame({"t": steps[keep], "value": schedule[key][keep], "curve": title}).dropna()
        low, high = float(curve["value"].min()), float(curve["value"].max())
        marker = pd.DataFrame({"t": [t, t], "value": [low, high], "curve": MARKER})
        frames.append(pd.concat([curve, marker], ignore_index=True))
    return tuple(frames)


def describe_numbers(metadata: dict) -> str:
    """One line of the schedule's numbers at the chosen t, from the task's metadata."""
    if not metadata:
        return ""
    log_snr = metadata["log10_snr"]
    snr = (f"SNR = {metadata['snr']:.4g} (log₁₀ {log_snr:.2f})" if log_snr is not None
           else "SNR = 0 (log₁₀ SNR = −∞: pure noise, zero terminal SNR)")
    return (f"t = {metadata['t']}: β_t = {metadata['beta']:.4g}, ᾱ_t = {metadata['alpha_bar']:.4g} — the image is "
            f"scaled by √ᾱ_t = {metadata['signal_scale']:.3f} and noise of std √(1−ᾱ_t) = "
            f"{metadata['noise_std']:.3f} is added; {snr}. The VAE's round trip alone (no noise) gives "
            f"{metadata['vae_round_trip_psnr']:.1f} dB PSNR. {metadata['seconds']:.1f} s.")


def _add_examples(image, t, folder: Path) -> None:
    """Clean world images rendered now into ``folder``, each paired with a timestep to try."""
    folder.mkdir(parents=True, exist_ok=True)
    clean = [picture for picture, sigma in example_images() if sigma > 0]
    examples = []
    for i, (picture, timestep) in enumerate(zip(clean, (250, 500, 750))):
        path = folder / f"example-{i}.png"
        picture.save(path)
        examples.append([str(path), timestep])
    gr.Examples(examples, inputs=[image, t], label="World images")
