"""The inputs and rows several tabs share: sampler, steps and guidance (bounds and defaults from
``tasks.settings``), the prompt block of the recorded-run tabs, the Run/Stop row and the live preview row."""
from __future__ import annotations

import gradio as gr

from diffdemo.tasks import SAMPLERS
from diffdemo.tasks.settings import DEFAULT_GUIDANCE, DEFAULT_SAMPLER, DEFAULT_STEPS, MAX_STEPS

# The guidance slider's reach: past ~20 pictures only saturate; the API still accepts up to MAX_GUIDANCE.
GUIDANCE_SLIDER_MAX = 20
GUIDANCE_LABEL = "Guidance scale (CFG)"


def sampler_dropdown() -> gr.Dropdown:
    return gr.Dropdown(list(SAMPLERS), value=DEFAULT_SAMPLER, label="Sampler")


def steps_slider() -> gr.Slider:
    return gr.Slider(1, MAX_STEPS, value=DEFAULT_STEPS, step=1, label="Steps")


def guidance_slider(**options) -> gr.Slider:
    """``options`` (e.g. ``info``) go to the slider."""
    return gr.Slider(0, GUIDANCE_SLIDER_MAX, value=DEFAULT_GUIDANCE, step=0.5, label=GUIDANCE_LABEL, **options)


def prompt_settings(example: str = "a large red star on a blue background") -> tuple:
    """Prompt, negative prompt, sampler, steps and guidance inputs, as the recorded-run tabs lay them out."""
    prompt = gr.Textbox(label="Prompt", lines=2, value=example)
    negative_prompt = gr.Textbox(label="Negative prompt", value="")
    with gr.Row():
        sampler, steps = sampler_dropdown(), steps_slider()
    return prompt, negative_prompt, sampler, steps, guidance_slider()


def run_and_stop(label: str = "Run") -> tuple[gr.Button, gr.Button]:
    """The start button (``label``) and Stop, side by side."""
    with gr.Row():
        start = gr.Button(label, variant="primary")
        stop = gr.Button("Stop", variant="stop")
    return start, stop


def live_preview_row() -> tuple[gr.Image, gr.Textbox]:
    """The live x̂₀ preview and the progress line beside it, which a streaming handler updates every step."""
    with gr.Row():
        live = gr.Image(label="Live x̂₀ (preview)", type="pil", interactive=False)
        status = gr.Textbox(label="Progress", interactive=False)
    return live, status
