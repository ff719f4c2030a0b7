"""Soak: many identical requests to a live app (tiny model). Memory stays flat after warm-up, and result files do
not pile up: the runner's result folders and Gradio's cached copies are both deleted on a schedule.

DIFFDEMO_SOAK_REQUESTS sets the number of requests (default 120; a longer soak: e.g. 2000).
"""
from __future__ import annotations

import gc
import os
import threading
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import Image

from diffdemo.ui.runner import Runner, clean_gradio_cache
from fast_app import launched

REQUESTS = int(os.environ.get("DIFFDEMO_SOAK_REQUESTS", "120"))
WARM_UP = max(1, REQUESTS // 5)
MAX_RSS_GROWTH = 0.05
TTL = 2  # seconds a result file is kept in this test (the app keeps them an hour)


def rss_bytes() -> int:
    """This process's resident memory (the app runs in it)."""
    gc.collect()
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def result_folders(runner) -> list[Path]:
    return [p for p in runner.output_dir.iterdir() if p.is_dir() and len(p.name) == 32]


@pytest.fixture(scope="module")
def app(tiny_models, tmp_path_factory):
    with launched(tiny_models, tmp_path_factory.mktemp("outputs"), delete_cache=(1, TTL)) as live:
        live.runner.output_ttl = TTL
        yield live


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="reads memory use from /proc (Linux)")
def test_many_identical_requests_keep_memory_and_disk_bounded(app):
    from gradio_client import Client

    client = Client(app.url, verbose=False, download_files=False)
    served = {}  # path of the PNG in Gradio's cache -> when it was last served (identical PNGs share a path)

    def generate() -> None:
        gallery, metadata, _ = client.predict(api_name="/text_to_image", prompt="a red circle", steps=1, seed=7)
        assert metadata["seed"] == 7 and len(gallery) == 1
        served[gallery[0]["image"]["path"]] = time.monotonic()

    started = time.perf_counter()
    try:
        for index in range(REQUESTS):
            generate()
            if index == WARM_UP - 1:
                baseline = rss_bytes()
        seconds, growth = time.perf_counter() - started, rss_bytes() / baseline - 1
        folders = len(result_folders(app.runner))
        time.sleep(TTL + 1)
        generate()  # cleaning happens as results are saved (and on Gradio's own schedule)
    finally:
        client.close()
    now = time.monotonic()
    kept = [round(now - served_at, 1) for path, served_at in served.items() if os.path.exists(path)]
    print(f"{REQUESTS} requests in {seconds:.1f} s; memory after warm-up {baseline / 2**20:.0f} MiB, grew "
          f"{growth:+.1%}; {folders} result folders and {len(kept)} cached results left of {len(served)}")
    assert growth <= MAX_RSS_GROWTH
    assert folders < REQUESTS / 4  # only those younger than the TTL
    # the sweep that the last request makes deletes every copy older than TTL: only the newest are left
    assert len(kept) <= 3 and all(age < TTL for age in kept), kept
    assert len(result_folders(app.runner)) == 1


def test_the_app_schedules_cache_clean_up(tiny_models, tmp_path):
    from diffdemo.ui.app import build_demo

    frequency, age = build_demo(tiny_models, output_dir=tmp_path).delete_cache
    assert 0 < frequency <= age <= 24 * 3600


def save(runner, count: int) -> list[str]:
    image = Image.new("RGB", (8, 8), "red")
    result = SimpleNamespace(images=[image], metadata={"task": "text_to_image"})
    return [runner.save_images(result)[0] for _ in range(count)]


def test_result_folders_are_capped_whatever_their_age(tmp_path):
    runner = Runner(models=None, output_dir=tmp_path)
    runner.max_outputs = 5
    paths = []
    for index in range(12):  # one a second, a minute ago: all well within the TTL
        paths += save(runner, 1)
        stamp = time.time() - 60 + index
        os.utime(Path(paths[-1]).parent, (stamp, stamp))
    left = result_folders(runner)
    assert len(left) == 5
    assert {str(p) for p in left} == {str(Path(p).parent) for p in paths[-5:]}  # the newest are kept


def test_result_folders_older_than_the_ttl_are_deleted_and_nothing_else(tmp_path):
    runner = Runner(models=None, output_dir=tmp_path)
    old = save(runner, 3)
    examples = tmp_path / "inpaint-examples"
    examples.mkdir()
    hour_ago = time.time() - 2 * runner.output_ttl
    for folder in [Path(p).parent for p in old] + [examples]:
        os.utime(folder, (hour_ago, hour_ago))
    new = save(runner, 1)
    assert {p.name for p in result_folders(runner)} == {Path(new[0]).parent.name}
    assert examples.exists()  # not a result folder: the example pictures stay


def test_gradio_cache_clean_up_deletes_old_copies_while_requests_add_files(tmp_path):
    old, kept = [], []
    for index in range(50):
        folder = tmp_path / f"{index:064x}"  # Gradio names each cached copy's folder by the file's hash
        folder.mkdir()
        (folder / "diffdemo-text_to_image-0.png").write_bytes(b"png")
        (kept if index % 10 == 0 else old).append(str(folder / "diffdemo-text_to_image-0.png"))
    files = set(old + kept)
    blocks = SimpleNamespace(temp_file_sets=[files], blocks={1: SimpleNamespace(keep_in_cache=set(kept))})
    stop = threading.Event()

    def requests_add_files() -> None:  # what a busy app does to the same set meanwhile
        while not stop.is_set():
            path = str(tmp_path / f"new-{uuid.uuid4().hex}.png")
            files.add(path)
            files.discard(path)

    adder = threading.Thread(target=requests_add_files)
    adder.start()
    try:
        time.sleep(0.01)
        for _ in range(20):
            clean_gradio_cache(blocks, age=0)  # must not fail on "Set changed size during iteration"
    finally:
        stop.set()
        adder.join()
    assert not any(os.path.exists(path) for path in old)
    assert not any(os.path.exists(os.path.dirname(path)) for path in old)  # their hash folders too
    assert all(os.path.exists(path) for path in kept)  # Gradio's keep_in_cache (examples) is honoured
    assert not files & set(old)


def test_an_old_cached_copy_handed_out_again_counts_as_new(tmp_path):
    """Gradio reuses a cached copy with the same content hash and touches it, so the sweep ages it from its last
    use: an old copy handed out again survives the next sweep, and a sweep ``age`` after that deletes it."""
    from gradio.processing_utils import save_file_to_cache

    source = tmp_path / "picture.png"
    source.write_bytes(b"png")
    cache = tmp_path / "cache"
    path = save_file_to_cache(source, str(cache))
    blocks = SimpleNamespace(temp_file_sets=[{path}], blocks={})
    time.sleep(0.3)  # the copy is now older than the 0.2 s age used below
    assert save_file_to_cache(source, str(cache)) == path  # the same copy, handed out again
    clean_gradio_cache(blocks, age=0.2)
    assert os.path.exists(path)
    time.sleep(0.3)
    clean_gradio_cache(blocks, age=0.2)
    assert not os.path.exists(path) and not blocks.temp_file_sets[0]
