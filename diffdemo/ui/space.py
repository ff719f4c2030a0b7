"""Hugging Face Spaces: detect a Space, bind where Spaces expect, and run model events under ZeroGPU's ``@spaces.GPU``.

The ``spaces`` package is optional. Where it imports (every Space has it; ZeroGPU needs it), each event of the
model queue group is wrapped with ``spaces.GPU``: on ZeroGPU hardware the whole event then runs in a forked process
that holds a GPU for its duration (arguments and results are pickled across; ``gr.Progress`` is forwarded); on any
other machine ``spaces.GPU`` returns the function unchanged. Events are wrapped rather than ``Runner.run`` because
their inputs and outputs are plain picklable values (text, numbers, PIL images, file paths), whereas ``Runner.run``
receives closures (step callbacks, the trajectory tab's preview queue) that cannot cross a process boundary.
The cost on ZeroGPU: what an event leaves in memory (the runs the trajectory tab keeps for scrubbing and branching)
stays in the GPU process, and Stop cannot reach a run there.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Mapping

SPACES_PORT = 7860
GPU_DURATION = 120  # seconds a ZeroGPU call may hold the GPU; shorter is queued sooner, longer fits big upscales
SD_LICENCE_URL = "https://huggingface.co/spaces/CompVis/stable-diffusion-license"
LICENCE_NOTICE = (
    "**Model licence.** This app runs `{model}`, and using it means using those weights under their licence. "
    "Stable Diffusion 1.x weights are licensed under [CreativeML OpenRAIL-M]({url}): its paragraph 5 requires "
    "everyone who uses them to keep to its use-based restrictions (Attachment A), and you are accountable for "
    "what you generate.")


def on_spaces(environ: Mapping[str, str] = os.environ) -> bool:
    """True inside a Hugging Face Space (the platform sets ``SYSTEM=spaces``)."""
    return environ.get("SYSTEM") == "spaces"


def on_zero_gpu(environ: Mapping[str, str] = os.environ) -> bool:
    """True on ZeroGPU hardware, where a GPU exists only inside ``@spaces.GPU`` calls."""
    return environ.get("SPACES_ZERO_GPU", "").lower() in ("1", "true")


def server_address(host: str | None, port: int | None, environ: Mapping[str, str] = os.environ) -> tuple[str, int]:
    """Where to listen: the arguments if given, else ``GRADIO_SERVER_NAME``/``GRADIO_SERVER_PORT`` (or ``PORT``),
    else ``0.0.0.0:7860`` on a Space (its proxy connects from outside the container) and ``127.0.0.1:7860`` here."""
    host = host or environ.get("GRADIO_SERVER_NAME") or ("0.0.0.0" if on_spaces(environ) else "127.0.0.1")
    port = port or environ.get("GRADIO_SERVER_PORT") or environ.get("PORT") or SPACES_PORT
    return host, int(port)


def gpu_decorator(duration: int = GPU_DURATION) -> Callable | None:
    """``spaces.GPU(duration=...)`` when the ``spaces`` package imports, else None.

    Call it before the models are loaded: on ZeroGPU, ``spaces`` must be imported before CUDA is initialised.
    """
    try:
        import spaces  # optional: only on Hugging Face Spaces
    except ImportError:
        return None
    return spaces.GPU(duration=duration)


def model_device(device: str | None, decorator: Callable | None, environ: Mapping[str, str] = os.environ):
    """The device to load models on: the one asked for; else ``cuda`` on ZeroGPU (``spaces`` records the move and
    replays it inside each GPU call); else None, i.e. what accelerate finds."""
    if device:
        return device
    return "cuda" if decorator is not None and on_zero_gpu(environ) else None


def wrap_model_events(demo, concurrency_id: str, decorator: Callable) -> list[str]:
    """Wraps the function of every event of ``demo`` in the queue group ``concurrency_id`` (the events that run a
    model) with ``decorator``; returns the wrapped events' names.

    This is the hook Gradio itself uses on Spaces (``BlockFunction.spaces_auto_wrap`` replaces ``fn`` the same way);
    ``spaces.GPU`` keeps the signature (``functools.wraps``), so the API and its defaults do not change.
    """
    wrapped = []
    for block_fn in demo.fns.values():
        if block_fn.concurrency_id == concurrency_id:
            block_fn.fn = decorator(block_fn.fn)
            wrapped.append(block_fn.name)
    return wrapped


def licence_notice(model_name: str, embedded: bool, environ: Mapping[str, str] = os.environ) -> str | None:
    """Markdown telling users which weights they are using and that their licence binds them (CreativeML
    OpenRAIL-M's paragraph 5 asks whoever serves SD 1.x to make its users keep to its restrictions).
    ``DIFFDEMO_NOTICE`` replaces it; the built-in model, trained here from scratch, needs none."""
    if environ.get("DIFFDEMO_NOTICE"):
        return environ["DIFFDEMO_NOTICE"]
    return None if embedded else LICENCE_NOTICE.format(model=model_name, url=SD_LICENCE_URL)


def add_notice(demo, markdown: str) -> None:
    """Appends ``markdown`` at the end of the page (below the tabs)."""
    import gradio as gr

    with demo:
        gr.Markdown(markdown, elem_id="licence-notice")
