"""The branch section of the trajectory tab: continue the run shown from its current step with a new prompt or
guidance, and see original and branch side by side."""
from __future__ import annotations

import gradio as gr

from diffdemo.tasks.branch import BranchRequest, branch, read_run
from diffdemo.ui.compare_tab import build_comparison_view
from diffdemo.ui.live import stream_task
from diffdemo.ui.runner import Runner, named
from diffdemo.ui.trajectory_tab import RunStore

EXPLANATION = """Start from the **x_t shown above** (step k) and run steps k…N again with a new prompt or guidance:
the steps before k are shared, so you see how much of the picture the model had already decided by then. The
sampler's state at k (the DPM++ 2M/UniPC history, the Euler a/DDPM noise stream) is rebuilt from the recorded steps,
so with unchanged settings the branch ends where the original did. Needs a run kept at every step."""


def build_branch_section(runner: Runner, gpu_group: str, trajectory: dict) -> dict:
    """An accordion (``/branch`` API) under the trajectory tab's views; ``trajectory`` is what
    :func:`~diffdemo.ui.trajectory_tab.build_trajectory_tab` returned (run-id state, step slider, run store)."""
    comparisons, comparison_id = RunStore(), gr.State(None)
    runner.on_switch.append(comparisons.clear)
    with gr.Accordion("Branch: continue from this step with another prompt or guidance", open=False):
        gr.Markdown(EXPLANATION)
        with gr.Row():
            step = gr.Number(value=0, precision=0, minimum=0, label="Branch at step (follows the slider above)")
            prompt = gr.Textbox(value="", label="New prompt (empty = keep the run's)", scale=3)
            guidance_scale = gr.Number(value=-1, label="New guidance scale (-1 = keep the run's)", minimum=-1,
                                       maximum=30)
        run_file = gr.File(label="…or branch a saved run (trajectory-run.safetensors)", file_types=[".safetensors"],
                           height=120)
        with gr.Row():
            button = gr.Button("Branch from this step", variant="primary")
            stop = gr.Button("Stop", variant="stop")
        status = gr.Markdown()
        build_comparison_view(comparisons, comparison_id, max_runs=2, label="Progress through both runs (%)")
        metadata = gr.JSON(label="Branch metadata")
    # its own field, not the slider: an API call gives any step, whatever range the page's slider has
    trajectory["slider"].change(lambda value: value, trajectory["slider"], step, api_visibility="private",
                                queue=False)
    inputs = [step, prompt, guidance_scale, run_file, trajectory["run_id"]]
    event = button.click(branch_handler(runner, trajectory["store"], comparisons), inputs,
                         [metadata, status, comparison_id], api_name="branch", concurrency_id=gpu_group)
    stop.click(runner.stop, None, None, cancels=[event], api_visibility="private", queue=False)
    return {"comparison_id": comparison_id}


def branch_handler(runner: Runner, runs: RunStore, comparisons: RunStore):
    def branch_event(step: int, prompt: str = "", guidance_scale: float = -1, run_file: str | None = None,
                     run_id: str | None = None, request: gr.Request = None):
        keep_guidance = guidance_scale is None or guidance_scale < 0
        task_request = BranchRequest(step=step, prompt=prompt or None,
                                     guidance_scale=None if keep_guidance else guidance_scale)

        def branch_task(models, req, callback):
            run = read_run(run_file, models) if run_file else runs.get(run_id)
            return branch(models, run, req, callback)

        named("branch", branch_task)

        def on_step(step_):
            return gr.skip(), f"step {step_.index + 1}/{step_.total}", gr.skip()

        result = yield from stream_task(runner, branch_task, task_request, request, on_step)
        meta = result.metadata
        text = (f"Branched at step {meta['branched_from']['step'] + 1} (t = {meta['branched_from']['t']}); "
                f"final latents differ from the original's by RMS {meta['final_rms_vs_original']:.3g}. "
                f"Sampler state: {meta['solver_state']}")
        yield meta, text, comparisons.add(result.comparison, request)

    return named("branch", branch_event)
