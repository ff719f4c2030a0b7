"""docs/API.md is complete and true: every public endpoint is documented, only its main input is required, and
every Python example on the page runs against the live app and returns real files and values. Plus the MCP view
of the same endpoints (``--mcp``)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
API_DOC = ROOT / "docs" / "API.md"
DOC_URL = "http://127.0.0.1:7860/"
OUTPUT_TYPES = {".png", ".gif", ".mp4", ".json", ".safetensors"}
# Each endpoint's main input: the only parameters it may require (a new endpoint must be added here, on purpose).
MAIN_INPUTS = {"/text_to_image": {"prompt"}, "/inpaint": {"image", "mask"}, "/denoise": {"image"},
               "/psnr_vs_noise": {"image"}, "/super_resolve": {"image"}, "/trajectory": {"prompt"},
               "/branch": {"run_file"}, "/compare": {"prompt"}, "/forward": {"image"}, "/playground": set()}


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", API_DOC.read_text(encoding="utf-8"), flags=re.S)


def endpoints(live_app) -> dict:
    """``{"/name": info}`` for every public endpoint of the running app."""
    return live_app.demo.get_api_info()["named_endpoints"]


def required(info: dict) -> set[str]:
    return {p["parameter_name"] for p in info["parameters"] if not p["parameter_has_default"]}


def test_every_endpoint_is_documented(live_app):
    text = API_DOC.read_text(encoding="utf-8")
    calls = "\n".join(python_blocks())
    assert endpoints(live_app)
    for name in endpoints(live_app):
        assert f"## `{name}`" in text, f"docs/API.md has no section for {name}"
        assert f'api_name="{name}"' in calls, f"docs/API.md has no example calling {name}"


def section(name: str) -> str:
    text = API_DOC.read_text(encoding="utf-8")
    start = text.index(f"## `{name}`")
    end = text.find("\n## ", start + 1)
    return text[start:] if end < 0 else text[start:end]


def test_every_parameter_is_documented(live_app):
    for name, info in endpoints(live_app).items():
        body = section(name)
        missing = [p["parameter_name"] for p in info["parameters"] if f"`{p['parameter_name']}`" not in body]
        assert not missing, f"docs/API.md's {name} section does not mention {missing}"


def test_only_the_main_input_is_required(live_app):
    for name, info in endpoints(live_app).items():
        assert name in MAIN_INPUTS, f"{name} is new: name its main input in MAIN_INPUTS (and document it)"
        extra = required(info) - MAIN_INPUTS[name]
        assert not extra, f"{name}: {sorted(extra)} must have a default (only {sorted(MAIN_INPUTS[name])} may not)"


def files_in(value) -> list[str]:
    """Every string in a (nested) result that is the absolute path of a file the client downloaded."""
    if isinstance(value, str):
        return [value] if value.startswith("/") and Path(value).suffix in OUTPUT_TYPES else []
    if isinstance(value, dict):
        return [path for item in value.values() for path in files_in(item)]
    if isinstance(value, (list, tuple)):
        return [path for item in value for path in files_in(item)]
    return []


@pytest.mark.slow
def test_examples_run_against_the_live_app(live_app, tmp_path, monkeypatch):
    from gradio_client import Client

    calls, clients = [], []
    original = Client.predict

    def recording_predict(self, *args, api_name=None, **kwargs):
        clients.append(self)
        result = original(self, *args, api_name=api_name, **kwargs)
        calls.append((api_name, set(kwargs), result))
        return result

    monkeypatch.setattr(Client, "predict", recording_predict)
    monkeypatch.chdir(tmp_path)  # the examples write their test pictures to the working directory
    namespace: dict = {}
    try:
        for number, block in enumerate(python_blocks(), 1):
            before = len(calls)
            exec(compile(block.replace(DOC_URL, live_app.url), f"API.md block {number}", "exec"), namespace)
            assert "Client(" not in block or len(calls) > before, f"block {number} called no endpoint"
    finally:
        for client in set(clients):
            client.close()
    for name in endpoints(live_app):
        results = [(kwargs, result) for api, kwargs, result in calls if api == name]
        assert results, f"no example calls {name}"
        assert any(kwargs <= MAIN_INPUTS.get(name, set()) for kwargs, _ in results), \
            f"no example of {name} passes only its main input"
        for _, result in results:
            assert result not in (None, [], ()), name
            for path in files_in(result):
                assert Path(path).is_file() and Path(path).stat().st_size > 0, f"{name} returned a missing {path}"


@pytest.fixture(scope="module")
def mcp_app(tiny_models):
    """The app on the tiny model set, launched with Gradio's MCP server."""
    pytest.importorskip("mcp", reason='the MCP server needs pip install "gradio[mcp]"')
    from helpers import free_port
    from diffdemo.ui.app import build_demo, configure_queue

    demo = configure_queue(build_demo(tiny_models))
    port = free_port()
    _, url, _ = demo.launch(prevent_thread_lock=True, server_port=port, quiet=True, mcp_server=True)
    try:
        yield demo, url
    finally:
        demo.close()


def test_mcp_schema_lists_every_endpoint_as_a_tool(mcp_app, live_app):
    import httpx

    demo, url = mcp_app
    response = httpx.get(f"{url}gradio_api/mcp/schema", timeout=30, trust_env=False)
    assert response.status_code == 200
    tools = {tool["name"]: tool for tool in response.json()}
    assert {name.lstrip("/") for name in endpoints(live_app)} <= set(tools)
    prompt = tools["text_to_image"]["inputSchema"]["properties"]["prompt"]
    assert prompt["type"] == "string"
    assert tools["text_to_image"]["inputSchema"]["properties"]["steps"]["default"] == 25


def test_mcp_tool_call_runs_the_task(mcp_app):
    import asyncio

    import httpx
    from mcp import ClientSession
    from mcp.client.streamable_http import streamable_http_client

    _, url = mcp_app

    async def call():
        async with streamable_http_client(f"{url}gradio_api/mcp/") as (read, write, _):
            async with ClientSession(read, write) as session:
                await session.initialize()
                return await session.call_tool("text_to_image", {"prompt": "a red circle", "steps": 2, "seed": 5})

    result = asyncio.run(call())
    assert not result.isError, result.content
    text = " ".join(getattr(item, "text", "") for item in result.content)
    assert "'seed': 5" in text and "'steps': 2" in text
    image_url = re.search(r"'url': '([^']+diffdemo-text_to_image-0\.png)'", text).group(1)
    assert image_url.startswith(url)
    image = httpx.get(image_url, timeout=30, trust_env=False)
    assert image.status_code == 200 and image.content.startswith(b"\x89PNG")


def http_call(url: str, endpoint: str, parameters: dict) -> tuple[str, object]:
    """The page's curl recipe in Python: POST named parameters, read the event stream to its last event."""
    import json

    import httpx

    with httpx.Client(base_url=url, timeout=120) as http:
        event_id = http.post(f"gradio_api/call/v2/{endpoint}", json=parameters).raise_for_status().json()["event_id"]
        kind = None
        with http.stream("GET", f"gradio_api/call/{endpoint}/{event_id}") as stream:
            for line in stream.iter_lines():
                if line.startswith("event: "):
                    kind = line[len("event: "):]
                elif line.startswith("data: ") and kind in ("complete", "error"):
                    return kind, json.loads(line[len("data: "):])
    raise AssertionError(f"{endpoint}: the event stream ended without a result")


def test_plain_http_with_named_parameters(live_app, tmp_path):
    """The "Without Python" recipe: only the main input, by name; image outputs are URLs; an image goes in as an
    upload; errors come back as `event: error` with the page's one-sentence message."""
    import httpx
    from PIL import Image

    kind, (gallery, metadata, _) = http_call(live_app.url, "text_to_image", {"prompt": "a small green circle"})
    assert kind == "complete" and metadata["steps"] == 25 and metadata["prompt"] == "a small green circle"
    picture = httpx.get(gallery[0]["image"]["url"])
    assert picture.status_code == 200 and picture.content.startswith(b"\x89PNG")

    path = tmp_path / "small.png"
    Image.new("RGB", (16, 16), (40, 80, 220)).save(path)
    with path.open("rb") as file:
        uploaded = httpx.post(f"{live_app.url}gradio_api/upload", files={"files": file}).raise_for_status().json()
    kind, outputs = http_call(live_app.url, "super_resolve", {"image": {"path": uploaded[0]}, "steps": 1})
    assert kind == "complete" and outputs[-1]["size"] == "64x64"

    kind, error = http_call(live_app.url, "text_to_image", {"prompt": ""})
    assert kind == "error" and "prompt" in error["error"]


def test_plain_http_calls_can_keep_one_gradio_session(live_app):
    """The "Many calls over plain HTTP" tip: the positional route takes a ``session_hash``, and Gradio then keeps
    one session for every call that names it instead of building one per call."""
    import json

    import httpx

    state_holder = live_app.demo.server_app.state_holder
    inputs = ["a small green circle", "", "DDIM", 2, 5.0, 128, 128, 3, 1]  # every input, in the page's order
    with httpx.Client(base_url=live_app.url, timeout=120) as http:
        for _ in range(2):
            body = {"data": inputs, "session_hash": "docs-session"}
            event_id = http.post("gradio_api/call/text_to_image", json=body).raise_for_status().json()["event_id"]
            with http.stream("GET", f"gradio_api/call/text_to_image/{event_id}") as stream:
                lines = list(stream.iter_lines())
            assert "event: complete" in lines, lines[-3:]
            metadata = json.loads(lines[lines.index("event: complete") + 1][len("data: "):])[1]
            assert metadata["steps"] == 2 and metadata["seed"] == 3
    assert "docs-session" in state_holder
