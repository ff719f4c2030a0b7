"""Builds the Blocks interface around one :class:`~diffdemo.ui.runner.Runner`."""
from __future__ import annotations

import gradio as gr

from diffdemo.engine.threads import model_thread
from diffdemo.ui.branch_section import build_branch_section
from diffdemo.ui.compare_tab import build_compare_tab
from diffdemo.ui.denoise_tab import build_denoise_tab
from diffdemo.ui.forward_tab import build_forward_tab
from diffdemo.ui.inpaint_tab import build_inpaint_tab, connect_send_to_inpainting
from diffdemo.ui.model_menu import build_model_menu
from diffdemo.ui.playground_tab import build_playground_tab
from diffdemo.ui.runner import Runner
from diffdemo.ui.super_resolution_tab import build_super_resolution_tab
from diffdemo.ui.text_to_image_tab import build_text_to_image_tab
from diffdemo.ui.trajectory_tab import build_trajectory_tab

GPU_GROUP = "model"  # every event that runs a model shares this queue: one job at a time
QUEUE_SIZE = 20
MAX_FILE_SIZE = "10mb"

INTRO = """# diffdemo — see diffusion models work
A diffusion model starts from pure noise and removes a little of it at every step, guided by your prompt.
{model_line}"""
EMBEDDED_LINE = ("The built-in model was trained from scratch on a world of coloured shapes: describe one shape "
                 "(circle, square, triangle, star or heart), its colour, size, position and the background colour.")


def build_demo(models, output_dir=None, switcher=None) -> gr.Blocks:
    """The whole app for ``models`` (a loaded ``ModelSet``). Call ``.queue()``/``.launch()`` on the result.
    ``switcher`` (an ``engine.switching.ModelSwitcher``, from ``--models-dir``) adds the model menu.

    Built on the model thread, where the runner also runs every task: the tabs draw their examples with torch, and
    a second thread using torch would slow every model call on a CPU (see :mod:`diffdemo.engine.threads`)."""
    return model_thread().run(_build_demo, models, output_dir, switcher)


def _build_demo(models, output_dir, switcher=None) -> gr.Blocks:
    runner = Runner(models, output_dir, switcher)
    embedded = "embedded" in models.name
    model_line = EMBEDDED_LINE if embedded else f"Model: `{models.name}`."
    with gr.Blocks(title="diffdemo", delete_cache=(1800, 3600)) as demo:
        gr.Markdown(INTRO.format(model_line=model_line))
        build_model_menu(runner, GPU_GROUP)
        with gr.Tabs() as tabs:
            with gr.Tab("Text to image"):
                text_to_image = build_text_to_image_tab(runner, GPU_GROUP)
            with gr.Tab("Inpainting", id="inpaint"):
                inpainting = build_inpaint_tab(runner, GPU_GROUP)
            with gr.Tab("Denoising", id="denoise"):
                build_denoise_tab(runner, GPU_GROUP)
            with gr.Tab("Super-resolution", id="super_resolution"):
                build_super_resolution_tab(runner, GPU_GROUP)
            with gr.Tab("Trajectory", id="trajectory"):
                trajectory = build_trajectory_tab(runner, GPU_GROUP)
                build_branch_section(runner, GPU_GROUP, trajectory)
            with gr.Tab("Compare", id="compare"):
                build_compare_tab(runner, GPU_GROUP)
            with gr.Tab("Forward process", id="forward"):
                build_forward_tab(runner, GPU_GROUP)
            with gr.Tab("2-D playground", id="playground"):
                build_playground_tab(runner, GPU_GROUP)
        connect_send_to_inpainting(text_to_image, inpainting, tabs, "inpaint")
        demo.unload(runner.stop)  # a closed tab (or API client) stops its run within one step
    demo.runner = runner
    runner.watch_cache(demo)  # delete_cache's clean-up, also done when results are saved (see runner.py)
    return demo


def configure_queue(demo: gr.Blocks) -> gr.Blocks:
    """One model job at a time across all tabs, a bounded wait list, and no queue-skipping /run route."""
    return demo.queue(max_size=QUEUE_SIZE, default_concurrency_limit=1, api_open=False)
