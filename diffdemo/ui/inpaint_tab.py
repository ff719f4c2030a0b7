"""The inpainting tab: paint over part of an image (or extend its borders) -> repainted image, changed pixels, data.

The visible Generate button first splits the editor's value into two hidden images (the picture and a white-on-
black mask), then runs the ``/inpaint`` endpoint on them, so API clients send two plain image files instead of the
editor's layered format. That endpoint skips Gradio's preprocessing and hands the uploaded files to the task,
which opens them itself: a corrupt upload gets a readable message, and 16-bit, CMYK or palette images arrive in
their own mode.
"""
from __future__ import annotations

from pathlib import Path

import gradio as gr
import numpy as np
from PIL import Image, ImageDraw

from diffdemo.tasks import InpaintRequest, InvalidRequest, inpaint
from diffdemo.tasks.inpaint import MAX_PIXELS, MAX_SIDE
from diffdemo.tasks.settings import DEFAULT_GUIDANCE, DEFAULT_SAMPLER, DEFAULT_STEPS
from diffdemo.ui.runner import Runner, named, uploaded_path
from diffdemo.ui.settings import guidance_slider, sampler_dropdown, steps_slider
from diffdemo.ui.uploads import uploaded_image
from diffdemo.world.scene import COLOURS

EXAMPLE_PROMPTS = ["a large yellow circle in the center on a blue background",
                   "a large green circle in the center on a blue background"]
OUTPAINT_PROMPT = "a large red circle on a blue background"
MASK_COLOUR = "#ff00ff"  # only the painted layer's alpha is used; the colour just has to show up


def build_inpaint_tab(runner: Runner, gpu_group: str) -> dict:
    """Builds the tab's components and events; returns the ``editor`` and ``mask_upload`` other tabs fill."""
    with gr.Row():
        with gr.Column(scale=1):
            editor = gr.ImageEditor(label="Image: paint over the part to repaint", type="pil", image_mode="RGBA",
                                    format="png", sources=("upload", "clipboard"), transforms=(), layers=False,
                                    brush=gr.Brush(colors=[MASK_COLOUR], color_mode="fixed", default_size=12),
                                    eraser=gr.Eraser(default_size=12), canvas_size=(512, 512),
                                    elem_id="inpaint-editor")
            mask_upload = gr.Image(label="Or upload a mask (white = repaint; added to what you paint)", type="pil",
                                   image_mode="L", format="png", sources=("upload", "clipboard"), height=160)
            settings = _settings_panel()
            with gr.Row():
                generate = gr.Button("Generate", variant="primary")
                stop = gr.Button("Stop", variant="stop")
        with gr.Column(scale=1):
            with gr.Row():
                result = gr.Image(label="Result", format="png", type="filepath", interactive=False,
                                  elem_id="inpaint-result")
                changed = gr.Image(label="Changed pixels", format="png", type="filepath", interactive=False,
                                   elem_id="inpaint-changed")
            gr.Markdown("Changed pixels: black where the result is identical to the input, brighter where it "
                        "changed more.")
            with gr.Accordion("Generation data (also stored in the PNG)", open=False):
                metadata = gr.JSON(label="Metadata")
    # what the /inpaint endpoint receives: two plain image files (mask: white = repaint)
    image = gr.Image(type="pil", image_mode=None, format="png", visible=False, label="image")
    mask = gr.Image(type="pil", image_mode=None, format="png", visible=False, label="mask")
    _add_examples(runner, editor, mask_upload, settings)
    run = inpaint_handler(runner)
    # preprocess=False: the pictures are opened by the app, their size checked before a pixel is decoded
    split = generate.click(split_uploads, [editor, mask_upload], [image, mask], api_visibility="private",
                           queue=False, preprocess=False)
    event = split.success(run, inputs_kwargs={"image": image, "mask": mask, **settings},
                          outputs=[result, changed, metadata], api_name="inpaint", concurrency_id=gpu_group,
                          preprocess=False)
    stop.click(runner.stop, None, None, cancels=[event], api_visibility="private", queue=False)
    return {"editor": editor, "mask_upload": mask_upload}


def _settings_panel() -> dict:
    """The request's settings, keyed by the ``/inpaint`` parameter (and InpaintRequest field) they fill."""
    s = {"prompt": gr.Textbox(label="Prompt for the masked area", lines=2, value=EXAMPLE_PROMPTS[0]),
         "negative_prompt": gr.Textbox(label="Negative prompt", value="")}
    with gr.Row():
        s["sampler"], s["steps"] = sampler_dropdown(), steps_slider()
    with gr.Row():
        s["guidance_scale"] = guidance_slider()
        s["strength"] = gr.Slider(0, 1, value=1.0, step=0.05, label="Strength",
                                  info="1 repaints from pure noise; lower keeps more of what is under the mask")
    s["masked_content"] = gr.Radio(["original", "fill"], value="original", label="Masked content",
                                   info="what a strength below 1 starts from: the original pixels, or a smooth "
                                        "fill from the surroundings (to remove something)")
    s["seed"] = gr.Number(value=-1, precision=0, label="Seed (-1 for a random one)")
    with gr.Accordion("Mask", open=True):
        with gr.Row():
            s["mask_blur"] = gr.Slider(0, 64, value=4, step=1, label="Mask blur (feather, px)",
                                       info="softens the seam inside the mask; outside it nothing changes")
            s["invert_mask"] = gr.Checkbox(label="Invert mask (repaint what is not painted)")
        with gr.Row():
            s["only_masked"] = gr.Checkbox(label="Only masked region",
                                           info="crop around the mask, repaint it at the model's full resolution")
            s["padding"] = gr.Slider(0, 256, value=32, step=1, label="Padding around the mask (px)")
    with gr.Accordion("Outpainting: extend the canvas", open=False):
        with gr.Row():
            for side in ("left", "right", "top", "bottom"):
                s[f"outpaint_{side}"] = gr.Slider(0, 512, value=0, step=8, label=f"{side.capitalize()} (px)")
        s["outpaint_fill"] = gr.Radio(["edge", "mean"], value="edge", label="Start the new area from",
                                      info="edge: the border pixels stretched outwards; mean: the average colour")
    return s


def inpaint_handler(runner: Runner):
    def run(image, mask, prompt: str = "", negative_prompt: str = "", sampler: str = DEFAULT_SAMPLER,
            steps: int = DEFAULT_STEPS, guidance_scale: float = DEFAULT_GUIDANCE, strength: float = 1.0,
            seed: int = -1, mask_blur: int = 4, invert_mask: bool = False, only_masked: bool = False,
            padding: int = 32, outpaint_left: int = 0, outpaint_right: int = 0, outpaint_top: int = 0,
            outpaint_bottom: int = 0, outpaint_fill: str = "edge", masked_content: str = "original",
            request: gr.Request = None, progress=gr.Progress()):
        task_request = InpaintRequest(
            image=uploaded_path(image), mask=uploaded_path(mask), prompt=prompt, negative_prompt=negative_prompt,
            sampler=sampler, steps=steps, guidance_scale=guidance_scale, strength=strength, seed=seed,
            mask_blur=mask_blur, invert_mask=invert_mask, only_masked=only_masked, padding=padding,
            outpaint_left=outpaint_left, outpaint_right=outpaint_right, outpaint_top=outpaint_top,
            outpaint_bottom=outpaint_bottom, outpaint_fill=outpaint_fill, masked_content=masked_content)
        result = runner.run(inpaint, task_request, request, progress)
        result.images = [*result.images, result.changed]
        result_path, changed_path = runner.save_images(result)
        return result_path, changed_path, result.metadata

    return named("inpaint", run)


def split_uploads(value, uploaded_mask=None) -> tuple:
    """:func:`split_editor` on the payloads as the page sends them: only files Gradio received, each checked against
    the inpainting size limit before it is decoded, so a small file that decodes huge is refused unread."""
    limits = dict(max_pixels=MAX_PIXELS, max_side=MAX_SIDE)
    try:
        layers = value.get("layers") if isinstance(value, dict) else None
        editor = {"background": uploaded_image(value.get("background"), "image", mode="RGBA", **limits),
                  "layers": [uploaded_image(layer, "image", mode="RGBA", **limits)
                             for layer in (layers if isinstance(layers, list) else [])]} \
            if isinstance(value, dict) else None
        return split_editor(editor, uploaded_image(uploaded_mask, "mask", mode="L", **limits))
    except InvalidRequest as error:
        raise gr.Error(str(error), title="Please check the input", print_exception=False) from None


def split_editor(value, uploaded_mask=None) -> tuple:
    """The editor's value (+ an optional uploaded ``L`` mask) -> (background image, ``L`` mask: 255 where any
    layer is painted or the upload is ≥ 128, else 0).

    Never raises: a missing image or mask becomes None, and the task explains what is missing.
    """
    if not value or value.get("background") is None:
        return None, None
    background = value["background"]
    layers = [layer.convert("RGBA").getchannel("A") for layer in value.get("layers") or [] if layer is not None]
    if uploaded_mask is not None:
        layers.append(uploaded_mask.convert("L").point(lambda v: 255 if v >= 128 else 0))
    if not layers:
        return background, None
    painted = np.zeros((background.height, background.width), bool)
    for layer in layers:
        painted |= np.asarray(layer.resize(background.size, Image.NEAREST)) > 0
    return background, Image.fromarray(painted.astype(np.uint8) * 255, "L")


def _add_examples(runner: Runner, editor, mask_upload, settings: dict) -> None:
    picture, mask = example_files(Path(runner.output_dir) / "inpaint-examples")
    gr.Examples([[picture, mask, prompt, 0] for prompt in EXAMPLE_PROMPTS] + [[picture, None, OUTPAINT_PROMPT, 32]],
                inputs=[editor, mask_upload, settings["prompt"], settings["outpaint_right"]],
                label="Examples for the built-in model (the last one extends the picture 32 px to the right)")


def example_files(folder: Path, size: int = 128, radius: float = 0.19) -> tuple[str, str]:
    """Writes a shape-world picture (a large red circle in the centre on blue) and its mask (white on the circle
    plus 3 px, black elsewhere); returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    supersample = 4  # draw large and shrink: anti-aliased edges like the training renders

    def disc(mode: str, fill, background, grow: int) -> Image.Image:
        big = size * supersample
        image = Image.new(mode, (big, big), background)
        r = (radius * size + grow) * supersample
        ImageDraw.Draw(image).ellipse([big / 2 - r, big / 2 - r, big / 2 + r, big / 2 + r], fill=fill)
        return image.resize((size, size), Image.LANCZOS)

    paths = folder / "red-circle.png", folder / "red-circle-mask.png"
    disc("RGB", COLOURS["red"], COLOURS["blue"], 0).save(paths[0])
    disc("L", 255, 0, 3).point(lambda v: 255 if v > 0 else 0).save(paths[1])
    return str(paths[0]), str(paths[1])


def connect_send_to_inpainting(source: dict, target: dict, tabs, tab_id: str) -> None:
    """Wires the text-to-image tab's "Send to inpainting" button: the selected image becomes the editor's picture
    (any old uploaded mask is cleared) and the inpainting tab opens. ``source`` holds that tab's ``gallery``,
    ``selected`` index and button; ``target`` is what :func:`build_inpaint_tab` returned."""

    def send(gallery, index):
        if not gallery:
            raise gr.Error("Generate an image first, then send it to inpainting.", title="Nothing to send")
        path = gallery[index if isinstance(index, int) and 0 <= index < len(gallery) else 0][0]
        return {"background": path, "layers": [], "composite": path}, None, gr.Tabs(selected=tab_id)

    source["send_to_inpainting"].click(send, [source["gallery"], source["selected"]],
                                       [target["editor"], target["mask_upload"], tabs], api_visibility="private",
                                       queue=False)
