"""The model menu (with ``--models-dir``): a dropdown of the folder's models, like AUTOMATIC1111's checkpoint menu,
and the ``/list_models`` and ``/select_model`` API endpoints. One model is loaded at a time (Runner.switch_model)."""
from __future__ import annotations

import gradio as gr

from diffdemo.ui.runner import Runner


def build_model_menu(runner: Runner, gpu_group: str) -> None:
    """A row with the dropdown and a Load button; nothing when switching is off."""
    if runner.switcher is None:
        return
    with gr.Row():
        # custom values: the folder may gain models after start; switch_model says which names exist
        choice = gr.Dropdown(runner.model_names(), value=runner.switcher.current_name, label="Model", scale=3,
                             allow_custom_value=True,
                             info=f"Models in {runner.switcher.folder}; loading one frees the current one")
        load = gr.Button("Load model", scale=1)
        status = gr.Markdown(f"Running **{runner.switcher.current_name}**.")
    # the model queue group: a switch waits for running jobs, and jobs wait for the switch
    load.click(select_model_handler(runner), [choice], [status], api_name="select_model", concurrency_id=gpu_group)
    choice.focus(lambda: gr.Dropdown(choices=runner.model_names()), None, choice, api_visibility="private",
                 queue=False)
    gr.api(list_models_handler(runner), api_name="list_models", queue=False)


def select_model_handler(runner: Runner):
    def select_model(name: str) -> str:
        """Loads the model ``name`` (one of /list_models) in place of the current one; returns a status line."""
        loaded = runner.switch_model(name)
        return f"Running **{loaded}**."

    return select_model


def list_models_handler(runner: Runner):
    def list_models() -> dict:
        """The models that /select_model can load, and the one running now."""
        return {"models": runner.model_names(), "current": runner.switcher.current_name}

    return list_models
