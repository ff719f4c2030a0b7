"""Security probes against a live app launched as app.py launches it (tests/fast_app.py): the file route serves
nothing but the app's own results, the queue-skipping routes are closed, uploads and pixel counts are capped, and
no string a client sends is ever opened as a file on the server."""
from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import httpx
import numpy as np
import pytest
from PIL import Image, ImageFile

from diffdemo.ui.runner import Runner, check_uploads
from fast_app import bomb_png, fn_index, raw_data, raw_result, upload, write_image, write_mask

ROOT = Path(__file__).resolve().parents[1]
SECRET_COLOUR = (200, 220, 240)  # bright: as a mask it would repaint everything


@pytest.fixture(scope="module")
def app(fast_live_app):
    return fast_live_app


@pytest.fixture(scope="module")
def secret(tmp_path_factory) -> Path:
    """A picture on the server, outside anything the app serves: no request may read it."""
    path = tmp_path_factory.mktemp("private") / "secret.png"
    Image.new("RGB", (64, 64), SECRET_COLOUR).save(path)
    return path


def through_uploads(path: Path) -> str:
    """``path`` written as if it were inside Gradio's upload folder: ``<uploads>/../../<path>``."""
    return f"{gr.utils.get_upload_folder()}/{os.path.relpath(path, gr.utils.get_upload_folder())}"


def get(app, path: str) -> httpx.Response:
    return httpx.get(f"http://127.0.0.1:{app.port}{path}", timeout=30)


# --- the file route ------------------------------------------------------------------------------------------

def probes(app, secret: Path) -> list[str]:
    return ["/etc/passwd", "../../../../etc/passwd", "..%2F..%2F..%2F..%2Fetc%2Fpasswd", "%2e%2e/%2e%2e/etc/passwd",
            "//etc/passwd", "/proc/self/environ", ".env", "app.py", str(ROOT / "app.py"), str(ROOT / ".git/config"),
            str(ROOT / "assets/model/model_index.json"), str(secret), through_uploads(secret),
            "http://example.com/x.png", f"http://127.0.0.1:{app.port}/config", "file:///etc/passwd"]


def test_file_route_refuses_everything_but_the_apps_results(app, secret):
    from gradio_client import Client

    for probe in probes(app, secret):
        for prefix in ("/gradio_api/file=", "/file="):
            response = get(app, prefix + probe)
            assert response.status_code in (403, 404), (prefix + probe, response.status_code)
            assert "root:" not in response.text and response.headers.get("content-type") != "image/png"
    client = Client(app.url, verbose=False, download_files=False)
    try:  # the same route does serve a result: the probes above were refused, not broken
        gallery, _, _ = client.predict(api_name="/text_to_image", prompt="a red circle", steps=1, seed=1)
    finally:
        client.close()
    served = get(app, "/gradio_api/file=" + gallery[0]["image"]["path"])
    assert served.status_code == 200 and served.content.startswith(b"\x89PNG")


# --- the queue is the only way in ----------------------------------------------------------------------------

def test_no_model_event_can_skip_the_queue(app):
    queued = {i: fn for i, fn in app.demo.fns.items() if fn.queue and fn.fn != app.runner.stop}
    assert len(queued) >= 5
    for index, fn in queued.items():
        body = {"data": [None] * len(fn.inputs), "fn_index": index, "session_hash": "probe"}
        if fn.api_name:
            for route in ("run", "api"):
                response = httpx.post(f"{app.url}gradio_api/{route}/{fn.api_name}", json={"data": []}, timeout=30)
                assert response.status_code == 404, (route, fn.api_name)
        assert httpx.post(f"{app.url}gradio_api/run/predict", json=body, timeout=30).status_code == 404, fn.name


# --- size caps -----------------------------------------------------------------------------------------------

def test_uploads_are_capped_at_the_app_limit(app, tmp_path):
    from diffdemo.ui.app import MAX_FILE_SIZE

    limit = gr.utils._parse_file_size(MAX_FILE_SIZE)
    small, large = tmp_path / "small.bin", tmp_path / "large.bin"
    small.write_bytes(b"\0" * (limit - 1024))
    large.write_bytes(b"\0" * (limit + 1024))
    for path, allowed in ((small, True), (large, False)):
        with open(path, "rb") as handle:
            response = httpx.post(f"{app.url}gradio_api/upload", files={"files": handle}, timeout=60)
        assert (response.status_code == 200) is allowed, (path.name, response.status_code, response.text[:200])


def test_app_py_launches_with_the_upload_cap_and_the_closed_queue(monkeypatch, tiny_models):
    import app as entry
    import diffdemo.engine
    from diffdemo.ui.app import MAX_FILE_SIZE, QUEUE_SIZE

    launched_with = {}
    monkeypatch.setattr(diffdemo.engine, "load_models", lambda *args, **kwargs: tiny_models)
    monkeypatch.setattr(gr.Blocks, "launch", lambda demo, **kwargs: launched_with.update(kwargs, demo=demo))
    entry.main([])
    demo = launched_with["demo"]
    assert launched_with["max_file_size"] == MAX_FILE_SIZE
    assert demo.api_open is False and demo._queue.max_size == QUEUE_SIZE


class DecodeSpy:
    """Records the size of every picture PIL decodes while it is installed."""

    def __init__(self, monkeypatch):
        self.sizes, original = [], ImageFile.ImageFile.load

        def load(image):
            self.sizes.append(image.size)
            return original(image)

        monkeypatch.setattr(ImageFile.ImageFile, "load", load)

    def largest(self) -> int:
        return max((w * h for w, h in self.sizes), default=0)


@pytest.mark.parametrize("api", ["inpaint", "denoise", "super_resolve"])
def test_a_decompression_bomb_is_refused_before_it_is_decoded(app, monkeypatch, tmp_path, api):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(bomb_png(8000, 8000))  # 8 KB on disk, 64 megapixels decoded
    mask = write_mask(tmp_path / "mask.png")
    files = {"image": upload(app.url, bomb), "mask": upload(app.url, mask)}
    values = {k: v for k, v in files.items() if k == "image" or api == "inpaint"}
    spy = DecodeSpy(monkeypatch)
    answer = raw_result(app.url, fn_index(app.demo, api), raw_data(app.url, api, steps=2, **values))
    assert not answer["success"] and "megapixels" in answer["output"]["error"]
    assert spy.largest() <= 4_200_000, spy.sizes


# --- no client string becomes a file path --------------------------------------------------------------------

def server_path_payloads(app, secret: Path) -> list:
    return [{"path": str(secret)}, {"path": str(secret), "meta": {"_type": "gradio.FileData"}},
            {"path": through_uploads(secret)},
            {"url": f"http://127.0.0.1:{app.port}/gradio_api/file={secret}", "meta": {"_type": "gradio.FileData"}},
            str(secret)]


@pytest.mark.parametrize("api, field", [("inpaint", "image"), ("inpaint", "mask"), ("denoise", "image"),
                                        ("super_resolve", "image")])
def test_a_server_path_sent_as_an_image_is_never_opened(app, secret, tmp_path, api, field):
    valid = {"image": upload(app.url, write_image(tmp_path / "picture.png", size=(16, 16) if api == "super_resolve"
                                                  else (64, 64)))}
    if api == "inpaint":
        valid["mask"] = upload(app.url, write_mask(tmp_path / "mask.png"))
    for payload in server_path_payloads(app, secret):
        data = raw_data(app.url, api, steps=2, seed=1, **{**valid, field: payload})
        answer = raw_result(app.url, fn_index(app.demo, api), data)
        assert not answer["success"], (payload, answer)
        assert "data" not in answer["output"], payload


def test_file_names_never_come_from_what_the_user_typed(app):
    from gradio_client import Client

    prompt = "../../../../../tmp/diffdemo-escape a red circle"
    client = Client(app.url, verbose=False, download_files=False)
    try:
        gallery, metadata, _ = client.predict(api_name="/text_to_image", prompt=prompt, steps=1, seed=1)
    finally:
        client.close()
    assert metadata["prompt"] == prompt
    assert Path(gallery[0]["image"]["path"]).name == "diffdemo-text_to_image-0.png"
    saved = sorted(app.runner.output_dir.glob("*/*.png"), key=os.path.getmtime)[-1]
    assert saved.name == "diffdemo-text_to_image-0.png" and saved.parent.parent == app.runner.output_dir
    assert not list(Path("/tmp").glob("diffdemo-escape*"))


def test_the_runner_opens_only_uploaded_files(secret):
    upload_folder = Path(gr.utils.get_upload_folder())
    upload_folder.mkdir(parents=True, exist_ok=True)
    uploaded = upload_folder / "diffdemo-test-upload.png"
    Image.new("RGB", (8, 8)).save(uploaded)
    calls = []

    def task(models, request, callback):
        calls.append(request)
        return "ran"

    runner = Runner(models=None)
    try:
        for value in (str(secret), secret, through_uploads(secret), "/etc/passwd",
                      "a" * 5000, "x\0y", Image.open(secret)):
            with pytest.raises(gr.Error, match="uploaded as a file"):
                runner.run(task, SimpleNamespace(image=value, mask=None), None, None)
            with pytest.raises(gr.Error, match="uploaded as a file"):
                runner.run(task, SimpleNamespace(image=None, mask=value), None, None)
        assert calls == []
        for value in (str(uploaded), Image.open(uploaded), Image.new("RGB", (8, 8)), np.zeros((8, 8, 3), np.uint8),
                      uploaded.read_bytes(), None):
            check_uploads(SimpleNamespace(image=value, mask=value))
            assert runner.run(task, SimpleNamespace(image=value, mask=None), None, None) == "ran"
    finally:
        uploaded.unlink()

