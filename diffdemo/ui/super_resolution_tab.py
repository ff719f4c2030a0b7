"""The super-resolution tab: a small image ×2/×4 -> diffusion result beside bicubic and Lanczos, PSNR/SSIM."""
from __future__ import annotations

from pathlib import Path

import gradio as gr
from PIL import Image

from diffdemo.tasks import SuperResolutionRequest, super_resolve
from diffdemo.tasks.super_resolution import MAX_SAMPLES, MAX_STEPS
from diffdemo.ui.runner import Runner, named, uploaded_path
from diffdemo.world.examples import example_images, photo_examples

EXPLANATION = """The **diffusion** result comes from the model set's dedicated ×4 upscaler (×2 = ×4 then Lanczos ÷2),
or, without one, from the base model re-generating a Lanczos upscale at low strength. Large images are processed in
overlapping tiles blended with linear ramps, so memory stays bounded; outputs are capped at 2048 px a side and
4.2 MP. **Noise level** is how much noise is added to the low-res condition (more = more invented detail).
**Samples averaged**: the result is the mean of several samples, each from its own noise; the mean estimates the
posterior mean, the most faithful upscale on average (highest PSNR), at the price of invented detail. With
**mirror**, half of them see your image mirrored (and are mirrored back), so the model's own errors partly cancel.
Set 1 sample (and more steps) to see a single sharp sample.
**Evaluate mode** treats your image as the high-res original: it is shrunk by the factor (bicubic), upscaled back by
all three methods and each is scored (PSNR in dB, SSIM) against it. **Low-res consistency** (on by default) nudges
the diffusion result until its bicubic downscale equals your input (back-projection): colours and shapes stay
faithful, the model's detail stays."""
LABELS = {"diffusion": "Diffusion", "bicubic": "Bicubic", "lanczos": "Lanczos"}


def build_super_resolution_tab(runner: Runner, gpu_group: str) -> dict:
    """Builds the tab's components and its ``/super_resolve`` event; returns its input image."""
    with gr.Row():
        with gr.Column(scale=1):
            image = gr.Image(label="Small image", type="pil", image_mode=None, format="png",
                             sources=("upload", "clipboard"))
            scale = gr.Radio([2, 4], value=4, label="Factor (×)")
            with gr.Row():
                steps = gr.Slider(1, MAX_STEPS, value=SuperResolutionRequest.steps, step=1, label="Steps")
                noise_level = gr.Slider(0, 350, value=SuperResolutionRequest.noise_level, step=1,
                                        label="Noise level (upscaler)")
            with gr.Row():
                samples = gr.Slider(1, MAX_SAMPLES, value=SuperResolutionRequest.samples, step=1,
                                    label="Samples averaged")
                mirror = gr.Checkbox(value=SuperResolutionRequest.mirror, label="Mirror half the samples",
                                     info="a self-ensemble: errors of the two views partly cancel")
            seed = gr.Number(value=-1, precision=0, label="Seed (-1 = random)")
            evaluate = gr.Checkbox(value=False, label="Evaluate mode (my image is the high-res original)")
            consistency = gr.Checkbox(value=True, label="Low-res consistency (back-projection)",
                                      info="corrects the result so that, downscaled, it equals the input")
            with gr.Row():
                run_button = gr.Button("Upscale", variant="primary")
                stop = gr.Button("Stop", variant="stop")
            _add_examples(image, scale, evaluate, Path(runner.output_dir) / "super-resolution-examples")
            gr.Markdown(EXPLANATION)
        with gr.Column(scale=2):
            with gr.Row():
                outputs = [gr.Image(label=label, format="png", type="filepath", interactive=False,
                                    elem_id=f"super-resolution-{name}") for name, label in LABELS.items()]
            table = gr.Markdown()
            with gr.Accordion("Metrics and settings (also stored in each PNG)", open=False):
                metrics = gr.JSON(label="Metrics")
    inputs = [image, scale, seed, steps, noise_level, evaluate, consistency, samples, mirror]
    # preprocess=False: the task opens the upload itself (size checked before decoding, its own messages)
    event = run_button.click(super_resolve_handler(runner), inputs, [*outputs, metrics], api_name="super_resolve",
                             concurrency_id=gpu_group, preprocess=False)
    event.success(score_table, metrics, table, api_visibility="private", queue=False)
    stop.click(runner.stop, None, None, cancels=[event], api_visibility="private", queue=False)
    return {"image": image}


def _add_examples(image, scale, evaluate, folder: Path) -> None:
    """Evaluate-mode examples (the picture is the original: it is shrunk, then upscaled back and scored): two
    photographs the model never saw (256²) and a world scene (128²); and a 64² photo to upscale as it is."""
    folder.mkdir(parents=True, exist_ok=True)
    photos = photo_examples()
    pictures = {"chelsea": photos["chelsea"], "coffee": photos["coffee"], "world": example_images()[0][0],
                "astronaut-64": photos["astronaut"].resize((64, 64), Image.Resampling.BICUBIC)}
    for name, picture in pictures.items():
        picture.save(folder / f"{name}.png")
    rows = [[str(folder / f"{name}.png"), 4, name != "astronaut-64"] for name in pictures]
    gr.Examples(rows, inputs=[image, scale, evaluate], label="Examples (photographs from scikit-image, never "
                                                            "trained on; a world scene)")


def super_resolve_handler(runner: Runner):
    defaults = SuperResolutionRequest

    def super_resolve_image(image, scale: int = defaults.scale, seed: int = defaults.seed, steps: int = defaults.steps,
                            noise_level: int = defaults.noise_level, evaluate: bool = defaults.evaluate,
                            consistency: bool = defaults.consistency, samples: int = defaults.samples,
                            mirror: bool = defaults.mirror, request: gr.Request = None, progress=gr.Progress()):
        task_request = SuperResolutionRequest(image=uploaded_path(image), scale=scale, seed=seed, steps=steps,
                                              noise_level=noise_level, evaluate=evaluate, consistency=consistency,
                                              samples=samples, mirror=mirror)
        result = runner.run(super_resolve, task_request, request, progress)
        return (*runner.save_images(result), result.metadata)

    return named("super_resolve", super_resolve_image)


def score_table(metadata: dict) -> str:
    """A Markdown table of PSNR/SSIM per method in evaluate mode, else a one-line summary."""
    if not metadata:
        return ""
    head = (f"{metadata['low_res_size']} → {metadata['size']} (×{metadata['scale']}) with {metadata['method']}, "
            f"{metadata['steps']} steps, {metadata['seconds']:.1f} s")
    scores = metadata.get("metrics")
    if not scores:
        return head
    rows = [f"| {label} | {scores[key]['psnr']:.2f} | {scores[key]['ssim']:.3f} |" for key, label in LABELS.items()]
    return "\n".join([head, "", "| method | PSNR (dB) | SSIM |", "| --- | --- | --- |", *rows])
