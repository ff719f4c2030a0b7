"""The denoising tab: add noise σ to an image (or upload a noisy one) -> diffusion vs classical results, PSNR/SSIM."""
from __future__ import annotations

from pathlib import Path

import gradio as gr
import pandas as pd

from diffdemo.tasks import DENOISE_SAMPLERS, DenoiseRequest, NoiseSweepRequest, denoise, noise_sweep
from diffdemo.tasks.denoise import MAX_SIGMA, MAX_STEPS
from diffdemo.ui.runner import Runner, named, uploaded_path
from diffdemo.world.examples import example_images, noisy_copy, photo_examples

EXPLANATION = """**σ** is the noise's standard deviation in pixel units (0–255); set it to 0 if your image is already
noisy and σ will be estimated. **t** is the diffusion timestep whose noise level matches σ: the model starts its
reverse process there instead of from pure noise. **x̂₀** is the model's one-step guess of the clean image at t
(Tweedie's estimate); **denoised** runs the full reverse process from t to 0. **Classical** is the better of two
model-free methods, total-variation and non-local-means denoising, tuned to σ."""
SCORE_ROWS = (("noisy", "Noisy"), ("x0_hat", "x̂₀ (one step)"), ("denoised", "Denoised (diffusion)"),
              ("tv", "TV (Chambolle)"), ("nl_means", "Non-local means"))


def build_denoise_tab(runner: Runner, gpu_group: str) -> dict:
    """Builds the tab's components and events (``/denoise`` and ``/psnr_vs_noise``); returns its input image."""
    with gr.Row():
        with gr.Column(scale=1):
            image = gr.Image(label="Image", type="pil", image_mode=None, format="png",
                             sources=("upload", "clipboard"))
            sigma = gr.Slider(0, int(MAX_SIGMA), value=int(DenoiseRequest.sigma), step=1,
                              label="Noise σ (0–255 pixel units)",
                              info="0 = my image is already noisy: estimate σ from it")
            with gr.Row():
                sampler = gr.Radio(list(DENOISE_SAMPLERS), value="DDIM", label="Reverse process",
                                   info="DDIM is deterministic; DDPM adds fresh noise at every step")
                steps = gr.Slider(1, MAX_STEPS, value=DenoiseRequest.steps, step=1, label="Steps from t to 0")
            seed = gr.Number(value=-1, precision=0, label="Seed (-1 = random)")
            with gr.Row():
                run_button = gr.Button("Denoise", variant="primary")
                stop = gr.Button("Stop", variant="stop")
            sweep_button = gr.Button("PSNR vs noise level (σ = 10…100, this image as the clean one)", size="sm")
            _add_examples(image, sigma, Path(runner.output_dir) / "denoise-examples")
            gr.Markdown(EXPLANATION)
        with gr.Column(scale=2):
            with gr.Row():
                outputs = [gr.Image(label=label, format="png", type="filepath", interactive=False,
                                    elem_id=f"denoise-{name}")
                           for name, label in (("noisy", "Noisy"), ("x0-hat", "x̂₀ at t (one step)"),
                                               ("denoised", "Denoised (diffusion)"), ("classical", "Classical"))]
            table = gr.Markdown()
            plot = gr.LinePlot(x="sigma", y="psnr", color="method", x_title="noise σ", y_title="PSNR (dB)",
                               label="PSNR vs noise level", height=260)
            with gr.Accordion("Metrics and settings (also stored in each PNG)", open=False):
                metrics = gr.JSON(label="Metrics")
    inputs = [image, sigma, seed, sampler, steps]
    # preprocess=False: the task opens the upload itself (size checked before decoding, its own messages for
    # corrupt files and wrong types) instead of Gradio
    event = run_button.click(denoise_handler(runner), inputs, [*outputs, metrics], api_name="denoise",
                             concurrency_id=gpu_group, preprocess=False)
    event.success(score_table, metrics, table, api_visibility="private", queue=False)
    sweep = sweep_button.click(sweep_handler(runner), [image, seed, sampler, steps], plot,
                               api_name="psnr_vs_noise", concurrency_id=gpu_group, preprocess=False)
    stop.click(runner.stop, None, None, cancels=[event, sweep], api_visibility="private", queue=False)
    return {"image": image}


def denoise_handler(runner: Runner):
    def denoise_image(image, sigma: float = 50, seed: int = -1, sampler: str = "DDIM", steps: int = 20,
                      request: gr.Request = None, progress=gr.Progress()):
        task_request = DenoiseRequest(image=uploaded_path(image), sigma=sigma, seed=seed, sampler=sampler,
                                      steps=steps)
        result = runner.run(denoise, task_request, request, progress)
        return (*runner.save_images(result), result.metadata)

    return named("denoise", denoise_image)


def sweep_handler(runner: Runner):
    def psnr_vs_noise(image, seed: int = -1, sampler: str = "DDIM", steps: int = 20, request: gr.Request = None,
                      progress=gr.Progress()):
        task_request = NoiseSweepRequest(image=uploaded_path(image), seed=seed, sampler=sampler, steps=steps)
        return pd.DataFrame(runner.run(noise_sweep, task_request, request, progress).metadata["rows"])

    return psnr_vs_noise


def score_table(metrics: dict) -> str:
    """A Markdown table of PSNR/SSIM per output, or a line saying why there are none (no clean image)."""
    if not metrics:
        return ""
    head = (f"σ = {metrics['sigma']:.4g}{' (estimated)' if metrics['estimated'] else ''} → t = {metrics['t']}, "
            f"ᾱ_t = {metrics['alpha_bar']:.4f}, {metrics['reverse_steps']} {metrics['sampler']} steps, "
            f"{metrics['seconds']:.1f} s")
    if metrics["estimated"]:
        return head + "\n\nNo clean image to compare with, so no PSNR/SSIM; σ was " + metrics["sigma_method"] + "."
    rows = [f"| {label} | {metrics['psnr'][key]:.2f} | {metrics['ssim'][key]:.3f} |" for key, label in SCORE_ROWS]
    best = dict(SCORE_ROWS)[metrics["classical_method"]]
    return "\n".join([head, "", "| output | PSNR (dB) | SSIM |", "| --- | --- | --- |", *rows, "",
                      f"Classical shows: {best}."])


def _add_examples(image, sigma, folder: Path) -> None:
    """World images rendered now into ``folder``: clean ones at several σ and one already noisy (σ = 0); then
    photographs the model never saw, clean at σ 25 and 50 and one already noisy."""
    folder.mkdir(parents=True, exist_ok=True)
    world = []
    for i, (picture, level) in enumerate(example_images()):
        path = folder / f"example-{i}.png"
        picture.save(path)
        world.append([str(path), level])
    gr.Examples(world, inputs=[image, sigma], label="World images (the last one is already noisy: σ = 0 "
                                                    "estimates its noise)")
    photos = photo_examples()
    pictures = {"chelsea": (photos["chelsea"], 25), "coffee": (photos["coffee"], 50),
                "astronaut-noisy": (noisy_copy(photos["astronaut"], 25), 0)}
    for name, (picture, _) in pictures.items():
        picture.save(folder / f"{name}.png")
    gr.Examples([[str(folder / f"{name}.png"), level] for name, (_, level) in pictures.items()],
                inputs=[image, sigma], label="Photographs (scikit-image's, never trained on; the last one is "
                                             "already noisy)")
