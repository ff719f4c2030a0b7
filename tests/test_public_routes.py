"""Public hosting, below the events: the upload route cannot fill the disk, decompression bombs cost no memory
through any event the page calls outside the queue, malformed calls get a 4xx and one log line, a login closes
every route but the login page (which shows no API), and the app's temp folders go when it exits. Live apps:
tests/fast_app.py."""
from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from pathlib import Path

import gradio as gr
import httpx
import pytest
from PIL import Image

from diffdemo.ui.uploads import MB
from fast_app import TIMEOUT, bomb_png, fast_model_set, fn_index, launched, local_limits, upload, write_image

LOGIN = ("ada", "correct-horse")


@pytest.fixture(scope="module")
def models(tiny_models, embedded_models):
    return fast_model_set(tiny_models, embedded_models)


@pytest.fixture(scope="module")
def app(models, tmp_path_factory):
    with launched(models, tmp_path_factory.mktemp("outputs"), limits=local_limits(upload_window_bytes=60 * MB)) as live:
        yield live


def uploads_on_disk(named: str) -> list:
    """Files in the upload folder (shared with any other Gradio app on the machine) whose name has ``named``,
    and the partial uploads Gradio keeps under its own temporary names."""
    folder = Path(gr.utils.get_upload_folder())
    return [p for p in folder.rglob("*") if p.is_file() and (named in p.name or p.name.startswith("tmp"))]


# --- 4. the upload route cannot fill the disk ------------------------------------------------------------------

def send_upload_headers(app, length: int, name: str) -> tuple[int, str]:
    """Starts a multipart upload (``length`` bytes declared), sends the start of its first file (``name``), and
    returns the answer's status and body: a refusal must come before the rest is sent."""
    boundary = "diffdemo-probe"
    head = f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"{name}\"\r\n\r\n".encode()
    with socket.create_connection(("127.0.0.1", app.port), timeout=TIMEOUT) as sock:
        sock.sendall(f"POST /gradio_api/upload HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {length}\r\n"
                     f"Content-Type: multipart/form-data; boundary={boundary}\r\n\r\n".encode() + head + b"\0" * 65536)
        answer = b""
        while b"\r\n\r\n" not in answer or len(answer.partition(b"\r\n\r\n")[2]) < _length(answer):
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
    head, _, body = answer.decode("latin-1").partition("\r\n\r\n")
    return int(head.split()[1]), body


def _length(answer: bytes) -> int:
    for line in answer.partition(b"\r\n\r\n")[0].split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":")[1])
    return 0


def test_forty_ten_megabyte_files_in_one_request_are_refused_and_nothing_stays(app):
    before = uploads_on_disk("probe-forty")
    started = time.perf_counter()
    status, body = send_upload_headers(app, 40 * 10 * MB + 40 * 200, "probe-forty-0.bin")
    assert status == 413 and "at most 32 MB" in json.loads(body)["detail"] and time.perf_counter() - started < 2
    assert set(uploads_on_disk("probe-forty")) <= set(before)


def test_an_upload_must_declare_its_size_and_hold_few_files(app, tmp_path):
    chunked = httpx.post(f"{app.url}gradio_api/upload", timeout=TIMEOUT, content=iter([b"x" * 10]),
                         headers={"content-type": "multipart/form-data; boundary=x"})
    assert chunked.status_code == 411
    before = uploads_on_disk("probe-nine")
    write_image(tmp_path / "a.png", size=(8, 8))
    files = [("files", (f"probe-nine-{i}.png", (tmp_path / "a.png").read_bytes(), "image/png")) for i in range(9)]
    answer = httpx.post(f"{app.url}gradio_api/upload", files=files, timeout=TIMEOUT)
    assert answer.status_code == 413 and "at most 8 files" in answer.json()["detail"]
    assert set(uploads_on_disk("probe-nine")) <= set(before)  # what Gradio wrote for it is gone


def test_uploads_from_one_address_are_limited_over_a_window(app, tmp_path):
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(9 * MB))
    answers = []
    for _ in range(8):  # 72 MB; this app allows 60 MB per 10 minutes (every 127.0.0.1 client shares the window)
        with big.open("rb") as handle:
            answers.append(httpx.post(f"{app.url}gradio_api/upload", files={"files": handle}, timeout=TIMEOUT))
    assert [a.status_code for a in answers[:6]] == [200] * 6 and answers[-1].status_code == 429
    assert "60 MB per 10 minutes" in answers[-1].json()["detail"]
    for path in {p for a in answers[:6] for p in a.json()}:  # one file: the same content each time
        os.remove(path)


def test_the_sweep_removes_uploads_no_request_used(app, tmp_path):
    used, unused = (upload(app.url, write_image(tmp_path / f"{name}.png", size=(8, 8))) for name in ("used", "unused"))
    leftover = Path(gr.utils.get_upload_folder()) / "tmpdiffdemo-partial"  # a disconnected client's part
    leftover.write_bytes(b"\0" * 100)
    httpx.post(f"{app.url}gradio_api/run/predict", timeout=TIMEOUT, json={  # a request names `used`
        "data": [{"background": used, "layers": [], "composite": None}, None],
        "fn_index": fn_index(app.demo, "split_uploads"), "session_hash": "sweeper", "event_data": None,
        "trigger_id": None})
    guard = app.demo.guard
    removed = guard.uploads.sweep(app.demo.upload_file_set, now=time.time() + guard.limits.unused_upload_seconds + 1)
    assert removed >= 2 and not os.path.exists(unused["path"]) and not leftover.exists()
    assert os.path.exists(used["path"])


# --- 5. decompression bombs ------------------------------------------------------------------------------------

def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def unqueued_image_calls(app, payload) -> list[tuple[int, list]]:
    """Every event the page calls outside the queue that takes a picture, with ``payload`` as that picture."""
    split = fn_index(app.demo, "split_uploads")
    send = next(i for i, fn in app.demo.fns.items() if fn.name == "send")
    return [(split, [{"background": payload, "layers": [payload], "composite": payload}, None]),
            (split, [None, payload]), (send, [[{"image": payload, "caption": None}], 0])]


def test_bombs_through_every_unqueued_event_cost_no_memory(app, tmp_path):
    assert Image.MAX_IMAGE_PIXELS == local_limits().max_image_pixels  # set for the whole process
    bombs = {}
    for name, side in (("64mp", 8000), ("100mp", 10_000)):
        (tmp_path / f"{name}.png").write_bytes(bomb_png(side, side))
        bombs[name] = upload(app.url, tmp_path / f"{name}.png")
    calls = [call for payload in bombs.values() for call in unqueued_image_calls(app, payload)]
    assert {fn for fn, _ in calls} >= {i for i, fn in app.demo.fns.items() if not fn.queue and any(
        type(block).__name__ in ("Image", "ImageEditor", "Gallery") for block in fn.inputs)}

    def call(fn, data):
        return httpx.post(f"{app.url}gradio_api/run/predict", timeout=TIMEOUT, json={
            "data": data, "fn_index": fn, "session_hash": "bomber", "event_data": None, "trigger_id": None})

    call(*unqueued_image_calls(app, upload(app.url, write_image(tmp_path / "ok.png")))[0])  # warm up
    before = rss_mb()
    answers = [call(fn, data) for fn, data in calls]
    threads = [threading.Thread(target=call, args=unqueued_image_calls(app, bombs["100mp"])[0]) for _ in range(3)]
    for thread in threads:  # three 100-MP bombs at once
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT)
    growth = rss_mb() - before
    print(f"RSS growth after {len(calls) + 3} bombs: {growth:.1f} MB")
    assert growth < 100
    refused = [a.json() for a in answers if a.status_code != 200]
    assert any("megapixels" in str(r) for r in refused), refused


# --- malformed calls: a 4xx and one log line ---------------------------------------------------------------------

def test_malformed_calls_get_a_4xx_and_one_log_line(app, caplog, capfd):
    join, url = f"{app.url}gradio_api/queue/join", app.url
    t2i = fn_index(app.demo, "text_to_image")
    probes = [("POST", join, {"data": [], "fn_index": 9999, "session_hash": "s1"}, 404),
              ("POST", f"{url}gradio_api/run/predict", {"data": [], "fn_index": 9999, "session_hash": "s"}, 404),
              ("POST", join, {"data": ["x"], "fn_index": t2i, "session_hash": "x" * 200_000}, 422),
              ("POST", join, {"data": ["x"] * 50, "fn_index": t2i, "session_hash": "s2"}, 422),
              ("POST", f"{url}gradio_api/call/v2/text_to_image", {"prompt": "a", "bogus": 1}, 422),
              ("POST", f"{url}gradio_api/call/v2/no_such_endpoint", {"prompt": "a"}, 404),
              ("POST", f"{url}gradio_api/call/no_such_endpoint", {"data": []}, 404),
              ("POST", f"{url}gradio_api/run/no_such_endpoint", {"data": []}, 404),
              ("GET", f"{url}gradio_api/heartbeat/{'y' * 2000}", None, 422),
              ("GET", f"{url}gradio_api/queue/data?session_hash={'z' * 2000}", None, 422),
              ("POST", f"{url}gradio_api/process_recording", None, 404)]
    capfd.readouterr()
    with caplog.at_level(logging.WARNING, logger="diffdemo"):
        for method, target, body, status in probes:
            caplog.clear()
            answer = httpx.request(method, target, json=body, timeout=TIMEOUT)
            assert answer.status_code == status, (target[:80], answer.status_code, answer.text[:200])
            detail = answer.json()["detail"]
            assert isinstance(detail, str) and "\n" not in detail and len(detail) < 300, detail
            assert len(caplog.records) <= 1 and all("\n" not in r.getMessage() for r in caplog.records)
    err = capfd.readouterr().err
    assert "Traceback" not in err and "KeyError" not in err, err[-2000:]


# --- a login closes every route -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def private_app(models, tmp_path_factory):
    with launched(models, tmp_path_factory.mktemp("private"), auth=LOGIN) as live:
        yield live


def every_route(routes):
    """The app's routes, those of included routers too (FastAPI wraps them)."""
    for route in routes:
        if hasattr(route, "original_router"):
            yield from every_route(route.original_router.routes)
        else:
            yield route


def concrete(path: str) -> str:
    """A route's path with its parameters filled in."""
    return path.replace("{path:path}", "x").replace("{path_or_url:path}", "x").replace(
        "{url_path:path}", "x").replace("{", "").replace("}", "").replace(":path", "")


def test_with_a_login_every_route_but_the_login_page_needs_it(private_app):
    open_routes = {"/", "/login", "/login/", "/logout", "/favicon.ico", "/manifest.json", "/robots.txt",
                   "/theme.css", "/gradio_api/theme.css"}
    checked = 0
    for route in every_route(private_app.demo.server_app.routes):
        path, methods = getattr(route, "path", None), getattr(route, "methods", None) or {"GET"}
        if path is None or path in open_routes or path.startswith(("/assets", "/static", "/svelte", "/pwa_icon")):
            continue
        for method in methods - {"HEAD"}:
            answer = httpx.request(method, private_app.url.rstrip("/") + concrete(path), timeout=TIMEOUT,
                                   json={} if method == "POST" else None)
            assert answer.status_code == 401, (method, path, answer.status_code)
            checked += 1
    assert checked > 40
    page = httpx.get(private_app.url, timeout=TIMEOUT).text
    assert '"auth_required":true' in page.replace(" ", "")
    assert "text_to_image" not in page and "super_resolve" not in page and "parameter_name" not in page


def test_logging_in_opens_the_app(private_app):
    from gradio_client import Client

    with httpx.Client(base_url=private_app.url, timeout=TIMEOUT) as http:
        assert http.post("login", data={"username": LOGIN[0], "password": LOGIN[1]}).status_code == 200
        assert "text_to_image" in http.get("/").text and http.get("gradio_api/info").status_code == 200
    client = Client(private_app.url, auth=LOGIN, verbose=False, download_files=False)
    try:
        _, metadata, _ = client.predict(api_name="/text_to_image", prompt="a red circle", steps=1, seed=2)
    finally:
        client.close()
    assert metadata["seed"] == 2


# --- temp folders ------------------------------------------------------------------------------------------------

def test_the_apps_temp_folders_go_at_exit(app, monkeypatch):
    import atexit

    from diffdemo.ui.runner import Runner

    assert all(Path(app.runner.output_dir, f"{tab}-examples").is_dir() for tab in ("denoise", "forward"))
    at_exit = []
    monkeypatch.setattr(atexit, "register", lambda fn, *args, **kwargs: at_exit.append((fn, args, kwargs)))
    runner = Runner(None)  # makes its own folder, as app.py's does
    (runner.output_dir / "result.png").write_bytes(b"x")
    assert Runner(None, app.runner.output_dir) and len(at_exit) == 1  # a folder it was given is not its own
    for fn, args, kwargs in at_exit:
        fn(*args, **kwargs)
    assert not runner.output_dir.exists() and app.runner.output_dir.exists()
