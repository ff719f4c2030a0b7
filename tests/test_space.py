"""Hugging Face Space readiness: README front matter, Space mode without the ``spaces`` package, and ZeroGPU's
``@spaces.GPU`` applied to exactly the events that run a model (with a stand-in ``spaces`` module)."""
from __future__ import annotations

import functools
import inspect
import re
import sys
import types
from pathlib import Path

import pytest
import yaml

import app
from diffdemo.ui import space

ROOT = Path(__file__).resolve().parents[1]
SPACE_KEYS = ("title", "emoji", "colorFrom", "colorTo", "sdk", "sdk_version", "app_file", "python_version",
              "short_description", "license", "suggested_hardware")
COLOURS = {"red", "yellow", "green", "blue", "indigo", "purple", "pink", "gray"}  # what the Hub accepts
HARDWARE = {"cpu-basic", "cpu-upgrade", "zero-a10g", "t4-small", "t4-medium", "l4x1", "l4x4", "l40sx1", "l40sx4",
            "l40sx8", "a10g-small", "a10g-large", "a10g-largex2", "a10g-largex4", "a100-large", "a100x4", "a100x8"}
MODEL_API = {"text_to_image", "inpaint", "denoise", "psnr_vs_noise", "super_resolve", "trajectory"}


def front_matter() -> tuple[dict, str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert text.startswith("---\n"), "README.md must start with the Space front matter"
    header, body = text[4:].split("\n---\n", 1)
    return yaml.safe_load(header), body


def gradio_pin() -> str:
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        found = re.match(r"\s*gradio(\[[^\]]*\])?\s*==\s*([\w.]+)", line)
        if found:
            return found.group(2)
    raise AssertionError("requirements.txt does not pin gradio==X.Y.Z")


def test_readme_front_matter_is_a_valid_space_config():
    meta, _ = front_matter()
    assert set(SPACE_KEYS) <= set(meta), f"missing: {set(SPACE_KEYS) - set(meta)}"
    assert meta["sdk"] == "gradio"
    assert str(meta["sdk_version"]) == gradio_pin()
    assert (ROOT / meta["app_file"]).is_file() and meta["app_file"] == "app.py"
    assert isinstance(meta["python_version"], str) and re.fullmatch(r"3\.\d+(\.\d+)?", meta["python_version"])
    assert meta["colorFrom"] in COLOURS and meta["colorTo"] in COLOURS
    assert meta["suggested_hardware"] in HARDWARE
    assert 0 < len(meta["short_description"]) <= 60  # the Hub's limit
    assert meta["emoji"] and meta["title"] and meta["license"]


def test_installed_gradio_is_the_pinned_one():
    import gradio

    assert gradio.__version__ == gradio_pin()


def test_readme_first_commands_still_run_the_app_and_the_tests():
    _, body = front_matter()
    blocks = re.findall(r"```bash\n(.*?)```", body, flags=re.S)
    assert "pip install -r requirements.txt" in blocks[0] and "python app.py" in blocks[0]
    assert "pip install -r requirements-dev.txt" in blocks[1] and "python -m pytest" in blocks[1]


@pytest.mark.parametrize("environ, expected", [
    ({}, ("127.0.0.1", 7860)),
    ({"SYSTEM": "spaces"}, ("0.0.0.0", 7860)),
    ({"SYSTEM": "spaces", "PORT": "8080"}, ("0.0.0.0", 8080)),
    ({"GRADIO_SERVER_NAME": "0.0.0.0", "GRADIO_SERVER_PORT": "7000", "PORT": "8080"}, ("0.0.0.0", 7000)),
], ids=["local", "space", "space-port", "gradio-env"])
def test_server_address(environ, expected):
    assert space.server_address(None, None, environ) == expected
    assert space.server_address("10.0.0.2", 9000, environ) == ("10.0.0.2", 9000)  # the command line wins


def test_models_go_to_cuda_only_on_zero_gpu():
    decorator = object()
    assert space.model_device(None, decorator, {"SPACES_ZERO_GPU": "true"}) == "cuda"
    assert space.model_device(None, None, {"SPACES_ZERO_GPU": "true"}) is None  # no `spaces`: nothing to replay
    assert space.model_device(None, decorator, {}) is None
    assert space.model_device("cpu", decorator, {"SPACES_ZERO_GPU": "true"}) == "cpu"


@pytest.fixture
def space_env(monkeypatch, tiny_model_dir):
    """A Space's environment: SYSTEM=spaces, its id, and the model chosen by a Space variable."""
    for name in ("GRADIO_SERVER_NAME", "GRADIO_SERVER_PORT", "PORT", "DIFFDEMO_AUTH", "DIFFDEMO_UPSCALER",
                 "DIFFDEMO_TINY_VAE", "DIFFDEMO_NOTICE", "SPACES_ZERO_GPU"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SYSTEM", "spaces")
    monkeypatch.setenv("SPACE_ID", "someone/diffdemo")
    monkeypatch.setenv("DIFFDEMO_MODEL", str(tiny_model_dir))
    return tiny_model_dir


def split_events(demo) -> tuple[list, list]:
    """(events of the model queue group, all other events)."""
    from diffdemo.ui.app import GPU_GROUP

    fns = list(demo.fns.values())
    return [fn for fn in fns if fn.concurrency_id == GPU_GROUP], [fn for fn in fns if fn.concurrency_id != GPU_GROUP]


def test_space_mode_builds_without_the_spaces_package(space_env, monkeypatch):
    monkeypatch.setitem(sys.modules, "spaces", None)  # `import spaces` raises ImportError
    assert space.gpu_decorator() is None
    demo, plan = app.build_app(app.parse_args([]))
    try:
        assert demo.runner.models.name == str(space_env)  # read from DIFFDEMO_MODEL
        assert (plan.kwargs["server_name"], plan.kwargs["server_port"]) == ("0.0.0.0", 7860)
        assert plan.kwargs["share"] is False
        model, _ = split_events(demo)
        assert MODEL_API <= {fn.name for fn in model}
        assert all(hasattr(fn.fn, "ungated") for fn in model)  # the job gate's wrapper (ui/limits.py), and
        assert not any(hasattr(fn.fn.ungated, "__wrapped__") for fn in model)  # nothing else: no spaces.GPU
        notices = [block.value for block in demo.blocks.values()
                   if getattr(block, "elem_id", None) == "licence-notice"]
        assert len(notices) == 1 and str(space_env) in notices[0] and "OpenRAIL-M" in notices[0]
    finally:
        demo.close()


def test_licence_notice_only_for_weights_from_elsewhere():
    assert space.licence_notice("diffdemo-shapes (embedded)", embedded=True, environ={}) is None
    notice = space.licence_notice("stable-diffusion-v1-5/stable-diffusion-v1-5", embedded=False, environ={})
    assert "stable-diffusion-v1-5/stable-diffusion-v1-5" in notice and space.SD_LICENCE_URL in notice
    own = {"DIFFDEMO_NOTICE": "Use of this Space means you accept [these terms](https://example.org)."}
    assert space.licence_notice("any/model", embedded=False, environ=own) == own["DIFFDEMO_NOTICE"]


def fake_spaces(calls: list) -> types.ModuleType:
    """A stand-in for the ``spaces`` package: ``GPU(duration=...)`` wraps like the real one (``functools.wraps``,
    generators stay generators) and records each call."""

    def GPU(task=None, *, duration=None):  # noqa: N802 (the real name)
        def decorate(fn):
            if inspect.isgeneratorfunction(fn):
                @functools.wraps(fn)
                def wrapper(*args, **kwargs):
                    calls.append(fn.__name__)
                    yield from fn(*args, **kwargs)
            else:
                @functools.wraps(fn)
                def wrapper(*args, **kwargs):
                    calls.append(fn.__name__)
                    return fn(*args, **kwargs)
            wrapper.gpu_duration = duration
            return wrapper

        return decorate if task is None else decorate(task)

    module = types.ModuleType("spaces")
    module.GPU = GPU
    return module


@pytest.mark.slow
def test_spaces_gpu_wraps_exactly_the_model_events(space_env, monkeypatch):
    from gradio_client import Client

    from helpers import free_port

    calls: list = []
    monkeypatch.setitem(sys.modules, "spaces", fake_spaces(calls))
    demo, _ = app.build_app(app.parse_args([]))
    api_names = {fn.api_name: fn for fn in demo.fns.values()}
    try:
        model, others = split_events(demo)
        assert MODEL_API <= {fn.name for fn in model}
        for fn in model:
            assert fn.fn.gpu_duration == space.GPU_DURATION, fn.name
        assert others and not any(hasattr(fn.fn, "gpu_duration") for fn in others)  # Stop, scrubbing, ...
        assert api_names["trajectory"].types_generator and inspect.isgeneratorfunction(api_names["trajectory"].fn)

        for name in ("SYSTEM", "SPACE_ID"):  # launch as here: a Space's server also wants the real package
            monkeypatch.delenv(name)
        _, url, _ = demo.launch(prevent_thread_lock=True, server_port=free_port(), quiet=True)
        client = Client(url, verbose=False)
        gallery, metadata, _ = client.predict(prompt="a red circle", steps=2, seed=3, api_name="/text_to_image")
        frames, *_ = client.predict(prompt="a red circle", steps=2, seed=3, api_name="/trajectory")
        client.close()
    finally:
        demo.close()
    assert len(gallery) == 1 and metadata["seed"] == 3 and metadata["steps"] == 2  # defaults filled through it
    assert len(frames) == 2
    assert calls == ["text_to_image", "trajectory"]
