"""End-to-end tests of the Gradio app through its public API (gradio_client), plus the command line.

The embedded model runs on the CPU (about a second per 25-step image), so these run everywhere, offline.
"""
from __future__ import annotations

import os

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ["HF_HUB_OFFLINE"] = "1"

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import UPLOAD_INPUTS, pixels
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
API = "/text_to_image"
MAX_SEED = 2**32 - 1
FAST = dict(steps=8)  # fewer steps where the test is not about the defaults


@pytest.fixture(scope="module")
def server(live_app):
    """The app launched once for the session (conftest); yields (url, port)."""
    return live_app.url, live_app.port


@pytest.fixture(scope="module")
def client(server):
    from gradio_client import Client

    url, _ = server
    client = Client(url, verbose=False)
    try:
        yield client
    finally:
        client.close()


def generate(client, **kwargs):
    return client.predict(api_name=API, **kwargs)


def test_prompt_only_uses_defaults(client):
    gallery, metadata, seed_used = generate(client, prompt="a red circle")
    assert len(gallery) == 1
    with Image.open(gallery[0]["image"]) as image:
        assert image.format == "PNG"
        assert image.size == (128, 128)
    assert metadata["steps"] == 25 and metadata["sampler"] == "DDIM" and metadata["num_images"] == 1
    assert metadata["prompt"] == "a red circle"
    assert seed_used == str(metadata["seed"])


def test_same_seed_same_pixels(client):
    first = generate(client, prompt="a blue square", seed=1234, **FAST)
    second = generate(client, prompt="a blue square", seed=1234, **FAST)
    for gallery, metadata, seed_used in (first, second):
        assert metadata["seed"] == 1234
        assert metadata["seeds"] == [1234]
        assert seed_used == "1234"
        assert gallery[0]["caption"] == "seed 1234"
    np.testing.assert_array_equal(pixels(first[0][0]["image"]), pixels(second[0][0]["image"]))


def test_random_seed_is_reported(client):
    _, metadata, seed_used = generate(client, prompt="a green heart", seed=-1, **FAST)
    assert isinstance(metadata["seed"], int)
    assert 0 <= metadata["seed"] <= MAX_SEED
    assert seed_used == str(metadata["seed"])


def test_png_carries_generation_data(client):
    prompt = "a small yellow circle in the top left corner on a black background"
    gallery, _, _ = generate(client, prompt=prompt, seed=42, **FAST)
    with Image.open(gallery[0]["image"]) as image:
        info = dict(image.info)
    assert prompt in info["parameters"]
    assert "Seed: 42" in info["parameters"]
    assert "Steps: 8" in info["parameters"]
    stored = json.loads(info["diffdemo"])
    assert stored["task"] == "text_to_image"
    assert stored["prompt"] == prompt
    assert stored["seed"] == 42


def test_several_images_use_consecutive_seeds(client):
    gallery, metadata, seed_used = generate(client, prompt="a purple triangle", seed=7, num_images=2, **FAST)
    assert [item["caption"] for item in gallery] == ["seed 7", "seed 8"]
    assert metadata["seeds"] == [7, 8]
    assert seed_used == "7, 8"
    for item in gallery:
        with Image.open(item["image"]) as image:
            assert image.size == (128, 128)


@pytest.mark.parametrize("kwargs, message", [
    (dict(prompt=""), "prompt"),
    (dict(prompt="   "), "prompt"),
    (dict(prompt="a red circle", width=100), "multiple of 8"),
    (dict(prompt="a red circle", steps=2.5), "whole number"),
    (dict(prompt="a red circle", sampler="Foo"), "Foo"),
], ids=["empty-prompt", "blank-prompt", "width-100", "fractional-steps", "unknown-sampler"])
def test_bad_input_gives_a_clear_error(client, kwargs, message):
    with pytest.raises(Exception) as caught:
        generate(client, **{**FAST, **kwargs})
    text = str(caught.value)
    assert message in text
    assert "Traceback" not in text


def test_server_still_works_after_bad_inputs(client):
    from gradio_client.exceptions import AppError

    for kwargs in (dict(prompt=""), dict(prompt="x", width=100)):
        with pytest.raises(AppError):
            generate(client, **{**FAST, **kwargs})
    gallery, metadata, _ = generate(client, prompt="a white square", seed=3, **FAST)
    assert len(gallery) == 1 and metadata["seed"] == 3


def test_queue_skipping_rest_route_is_closed(server):
    import httpx

    _, port = server
    response = httpx.post(f"http://127.0.0.1:{port}/gradio_api/run/text_to_image",
                          json={"data": ["a red circle", "", "DDIM", 2, 5, 128, 128, 1, 1]}, timeout=30)
    assert response.status_code == 404


def test_cli_help_lists_options(capsys):
    import app

    with pytest.raises(SystemExit) as exited:
        app.parse_args(["--help"])
    assert exited.value.code == 0
    text = capsys.readouterr().out
    for option in ("--model", "--tiny-vae", "--host", "--port", "--share", "--device", "--dtype"):
        assert option in text


@pytest.mark.slow
@pytest.mark.parametrize("option", ["--model", "--tiny-vae"])
def test_cli_missing_model_folder_is_one_clear_line(option):
    folder = "/nonexistent/folder"
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "app.py", option, folder], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    if option == "--tiny-vae":  # the model itself loaded first, with its loading bar
        lines = lines[-1:]
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("diffdemo:")
    assert folder in lines[0]


def test_every_output_picture_gallery_and_file_is_not_interactive(live_app):
    """An interactive output shows "Drop Media Here - or - Click to Upload" before the first run, as if the visitor
    should upload something there; only the inputs may (tests/test_browser.py looks at the page itself)."""
    kinds = ("image", "gallery", "file", "video", "imageeditor")
    components = [c["props"] for c in live_app.demo.config["components"] if c["type"] in kinds]
    assert UPLOAD_INPUTS <= {props.get("label") for props in components}  # the list of inputs is up to date
    offering = [props.get("label") for props in components
                if props.get("label") not in UPLOAD_INPUTS and props.get("interactive") is not False]
    assert not offering, f"outputs that offer an upload: {offering}"


@pytest.mark.parametrize("tab_input", ["Image", "Small image"])
def test_denoising_and_super_resolution_offer_photographs_as_examples(live_app, tab_input):
    """Beside the world scenes, both restoration tabs offer photographs (scikit-image's) a visitor can try at once."""
    config = live_app.demo.config
    ids = {c["id"]: c["props"].get("label") for c in config["components"]}
    files = [str(sample[0].get("path", "")) if isinstance(sample[0], dict) else str(sample[0])
             for c in config["components"] if c["type"] == "dataset"
             and ids.get(c["props"]["component_ids"][0]) == tab_input for sample in c["props"]["samples"]]
    photos = [f for f in files if any(name in f for name in ("chelsea", "coffee", "astronaut"))]
    assert len(photos) >= 3, files
