"""python -m diffdemo.batch: PNGs with metadata, the manifest, seeds, resuming, two processes, input errors."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from diffdemo.batch import main
from helpers import pixels, wait_until
from diffdemo.tasks import TextToImageRequest, text_to_image

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ["a red circle", "a large blue square on the left", "a green star at the top", "a pink heart",
           "a tiny yellow triangle in the center"]


def write_prompts(path: Path, prompts=PROMPTS) -> Path:
    path.write_text("# shapes\n" + "\n\n".join(prompts) + "\n", encoding="utf-8")
    return path


def batch(tiny_model_dir, source, out, *extra):
    main([str(source), "--out", str(out), "--model", str(tiny_model_dir), "--steps", "2", "--device", "cpu",
          "--no-progress", *extra])


def manifest(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


def file_identity(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_ino, stat.st_mtime_ns


def test_prompt_file_gives_one_png_per_prompt_with_metadata_and_manifest(tiny_model_dir, tmp_path):
    out = tmp_path / "out"
    batch(tiny_model_dir, write_prompts(tmp_path / "prompts.txt", PROMPTS[:3]), out, "--seed", "7")
    assert sorted(p.name for p in out.glob("*.png")) == ["00000.png", "00001.png", "00002.png"]
    records = manifest(out)
    assert [r["id"] for r in records] == ["00000", "00001", "00002"]
    assert [r["line"] for r in records] == [2, 4, 6]  # line 1 is a comment, blank lines between prompts
    assert [r["seed"] for r in records] == [7, 8, 9]  # item i uses --seed + i
    for record, prompt in zip(records, PROMPTS):
        path = out / record["file"]
        assert record["request"]["prompt"] == prompt and record["request"]["steps"] == 2
        assert record["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        with Image.open(path) as image:
            assert image.size == (64, 64)
            assert f"Seed: {record['seed']}" in image.info["parameters"] and "Steps: 2" in image.info["parameters"]
            assert json.loads(image.info["diffdemo"])["seeds"] == [record["seed"]]
    assert not np.array_equal(pixels(out / "00000.png"), pixels(out / "00001.png"))


def test_jsonl_requests_keep_their_fields_and_seeds(tiny_models, tiny_model_dir, tmp_path):
    source = tmp_path / "requests.jsonl"
    lines = [{"prompt": "a red circle", "seed": 123, "width": 32, "sampler": "Euler a"},
             {"prompt": "a blue star", "num_images": 2, "seed": 5, "guidance_scale": 2.5}, {"prompt": "a heart"}]
    source.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    out = tmp_path / "out"
    batch(tiny_model_dir, source, out, "--seed", "100")
    records = manifest(out)
    assert [(r["line"], r["seed"]) for r in records] == [(1, 123), (2, 5), (2, 6), (3, 103)]
    assert records[0]["request"]["sampler"] == "Euler a" and records[1]["request"]["guidance_scale"] == 2.5
    assert Image.open(out / "00000.png").size == (32, 64)
    # the same request through the task function (as the app runs it) gives the same pixels
    direct = text_to_image(tiny_models, TextToImageRequest("a red circle", seed=123, width=32, sampler="Euler a",
                                                           steps=2))
    assert np.array_equal(pixels(out / "00000.png"), np.asarray(direct.images[0].convert("RGB")))


def test_resume_skips_finished_items_and_redoes_broken_or_changed_ones(tiny_model_dir, tmp_path):
    source, out = write_prompts(tmp_path / "prompts.txt", PROMPTS[:4]), tmp_path / "out"
    batch(tiny_model_dir, source, out, "--limit", "2")
    assert [r["id"] for r in manifest(out)] == ["00000", "00001"]
    kept = {name: file_identity(out / name) for name in ("00000.png", "00001.png")}
    # what a kill can leave: a temporary file never renamed, and a PNG whose record was never written
    (out / ".00002.png.4242.tmp").write_bytes(b"\x89PNG half")
    (out / "00003.png").write_bytes(b"\x89PNG half")
    batch(tiny_model_dir, source, out)
    assert [r["id"] for r in manifest(out)] == ["00000", "00001", "00002", "00003"]
    assert {name: file_identity(out / name) for name in kept} == kept  # finished items were not redone
    assert not list(out.glob(".*.tmp"))
    assert pixels(out / "00003.png").shape == (64, 64, 3)
    # a changed prompt and a damaged file are redone; the rest is left alone
    write_prompts(source, [PROMPTS[0], "a purple star", *PROMPTS[2:4]])
    (out / "00002.png").write_bytes((out / "00002.png").read_bytes()[:100])
    untouched = {name: file_identity(out / name) for name in ("00000.png", "00003.png")}
    batch(tiny_model_dir, source, out)
    records = manifest(out)
    assert records[1]["request"]["prompt"] == "a purple star"
    assert records[2]["sha256"] == hashlib.sha256((out / "00002.png").read_bytes()).hexdigest()
    assert {name: file_identity(out / name) for name in untouched} == untouched


@pytest.mark.slow
def test_a_killed_run_resumes_without_redoing_finished_items(tiny_model_dir, tmp_path):
    source, out = write_prompts(tmp_path / "prompts.txt", [f"a red circle number {i}" for i in range(40)]), \
        tmp_path / "out"
    command = [sys.executable, "-m", "diffdemo.batch", str(source), "--out", str(out), "--model", str(tiny_model_dir),
               "--steps", "2", "--device", "cpu", "--no-progress"]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def three_records() -> bool:
            assert process.poll() is None, "the batch ended before it could be killed"
            return len(list((out / "records").glob("*.json"))) >= 3

        wait_until(three_records, 90, "three records", interval=0.05)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    finished = {path.stem for path in (out / "records").glob("*.json")}
    assert 3 <= len(finished) < 40 and not (out / "manifest.jsonl").exists()
    kept = {name: file_identity(out / f"{name}.png") for name in finished}
    batch(tiny_model_dir, source, out)
    assert [r["id"] for r in manifest(out)] == [f"{i:05d}" for i in range(40)]
    assert {name: file_identity(out / f"{name}.png") for name in finished} == kept
    assert all(pixels(out / f"{i:05d}.png").shape == (64, 64, 3) for i in range(40))


@pytest.mark.slow
def test_two_processes_make_the_same_images_as_one(tiny_model_dir, tmp_path):
    source = write_prompts(tmp_path / "prompts.txt")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in each launched process: on a CPU the thread count can move a pixel value by 1
    try:
        batch(tiny_model_dir, source, tmp_path / "one", "--seed", "11")
    finally:
        torch.set_num_threads(threads)
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
              "-m", "diffdemo.batch", str(source), "--out", str(tmp_path / "two"), "--model", str(tiny_model_dir),
              "--steps", "2", "--seed", "11", "--device", "cpu"]
    done = subprocess.run(launch, cwd=ROOT, env=env, capture_output=True, text=True, timeout=150)
    assert done.returncode == 0, done.stderr[-3000:]
    one, two = manifest(tmp_path / "one"), manifest(tmp_path / "two")
    assert [r["id"] for r in two] == [f"{i:05d}" for i in range(len(PROMPTS))]  # none lost, none twice
    assert sorted(p.name for p in (tmp_path / "two").glob("*.png")) == [r["file"] for r in two]
    assert [r["process"] for r in two] == [0, 0, 0, 1, 1]  # accelerate's split: 3 and 2 items
    assert [r["request"] for r in two] == [r["request"] for r in one]
    for record in one:
        assert np.array_equal(pixels(tmp_path / "one" / record["file"]), pixels(tmp_path / "two" / record["file"]))
    assert "2 process(es)" in done.stderr


@pytest.mark.parametrize("name, text, expected", [
    ("missing.txt", None, "missing.txt: no such file"),
    ("empty.txt", "\n# only a comment\n\n", "has no prompts (one per line)"),
    ("bad.jsonl", '{"prompt": "a red circle"}\n{"prompt": "a star",}\n', "bad.jsonl line 2: not valid JSON"),
    ("list.jsonl", '["a red circle"]\n', "line 1: expected a JSON object"),
    ("typo.jsonl", '{"promt": "a red circle"}\n', "line 1: unknown field 'promt'; known fields: prompt,"),
    ("blank.jsonl", '{"prompt": "a circle"}\n\n{"prompt": "  "}\n', "line 3: Please describe the image"),
    ("width.jsonl", '{"prompt": "a circle"}\n{"prompt": "a star", "width": 50}\n',
     "line 2: Width must be a multiple of 8 pixels; got 50"),
    ("sampler.txt", "a red circle\n", "line 1: Unknown sampler 'Eulr'"),
])
def test_bad_input_is_one_clear_line_and_a_nonzero_exit(tiny_model_dir, tmp_path, capsys, name, text, expected):
    source = tmp_path / name
    if text is not None:
        source.write_text(text)
    extra = ["--sampler", "Eulr"] if name == "sampler.txt" else []
    with pytest.raises(SystemExit) as exit_info:
        batch(tiny_model_dir, source, tmp_path / "out", *extra)
    assert exit_info.value.code == 2
    message = capsys.readouterr().err.strip().splitlines()[-1]
    assert message.startswith("diffdemo batch: ") and expected in message, message
    assert not list((tmp_path / "out").glob("*.png"))


def test_command_line_error_has_no_traceback(tmp_path):
    done = subprocess.run([sys.executable, "-m", "diffdemo.batch", str(tmp_path / "nope.txt"), "--out",
                           str(tmp_path / "out")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip() == f"diffdemo batch: {tmp_path / 'nope.txt'}: no such file; pass a .txt file of " \
                                  f"prompts or a .jsonl file of requests."
