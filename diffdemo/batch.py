"""Batch text-to-image: a prompt list or JSONL of requests in, PNGs and a manifest out; resumable, multi-process.

    python -m diffdemo.batch prompts.txt --out out/                      # one prompt per line
    python -m diffdemo.batch requests.jsonl --out out/ --seed 7          # {"prompt": ..., "steps": 30, ...} per line
    accelerate launch --multi_gpu --num_processes 4 -m diffdemo.batch prompts.txt --out out/
    accelerate launch --multi_gpu --num_processes 2 -m diffdemo.batch prompts.txt --out out/ --device cpu  # 2 CPU

(``accelerate launch --cpu --num_processes N`` starts one process unless given an MPI hostfile; ``--multi_gpu`` runs
torchrun, and with ``--device cpu`` or no GPU the processes talk over gloo.)

Every item becomes ``OUT/<id>.png`` (the same ``parameters`` and ``diffdemo`` chunks as the app's downloads) and a
record ``OUT/records/<id>.json``; at the end the main process writes ``OUT/manifest.jsonl``, one record per finished
item in input order. Files are written to a temporary name and renamed, so a killed run never leaves a half-written
file that counts as done. Running the same command again skips items whose PNG and record match the current request
and generates only the rest. Item ``i`` without its own seed uses ``--seed + i``, so an image does not depend on how
many processes made it. Under ``accelerate launch`` (or ``torchrun``) each process loads the models once on its own
device and takes an equal share of the pending items (accelerate's ``PartialState.split_between_processes``).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

from diffdemo.tasks.common import MAX_SEED, InvalidRequest, as_number, check_prompt, resolve_seed, save_png
from diffdemo.tasks.text_to_image import MAX_IMAGES, TextToImageRequest, text_to_image, validate

REQUEST_FIELDS = tuple(f.name for f in fields(TextToImageRequest))
JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")
MANIFEST = "manifest.jsonl"
RECORDS = "records"


class BatchInputError(ValueError):
    """The input file or options are unusable; the message is one line that says where and why."""


@dataclass(frozen=True)
class BatchItem:
    """One image to make: ``index`` counts items from 0 in input order, ``line`` is where it came from (1-based)."""

    index: int
    line: int
    request: TextToImageRequest

    @property
    def id(self) -> str:
        return f"{self.index:05d}"

    @property
    def file(self) -> str:
        return f"{self.id}.png"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m diffdemo.batch",
        description="Generate one PNG per prompt (text file, one per line; blank lines and lines starting with # are "
                    "skipped) or per request (JSONL with any of: " + ", ".join(REQUEST_FIELDS) + "). Resumable: run "
                    "the same command again to finish. Under `accelerate launch` the items are shared out between "
                    "the processes.")
    parser.add_argument("input", help="a .txt file of prompts or a .jsonl file of requests")
    parser.add_argument("--out", required=True, help="folder for the PNGs, records/ and manifest.jsonl")
    parser.add_argument("--seed", type=int, default=0,
                        help="item i without its own seed uses seed + i (default 0; fixed so that runs resume)")
    parser.add_argument("--limit", type=int, help="generate at most this many pending items, then stop")
    parser.add_argument("--model", default=os.environ.get("DIFFDEMO_MODEL"),
                        help="hub id or local diffusers folder; default: the embedded model (env DIFFDEMO_MODEL)")
    parser.add_argument("--device", help="cuda, cuda:1, mps or cpu (default: each process's accelerate device)")
    parser.add_argument("--dtype", choices=["auto", "float16", "bfloat16", "float32"], default="auto",
                        help="default: float16 on CUDA, float32 elsewhere")
    defaults = parser.add_argument_group("defaults for items that do not set them")
    defaults.add_argument("--negative-prompt", dest="negative_prompt")
    defaults.add_argument("--sampler")
    defaults.add_argument("--steps", type=int)
    defaults.add_argument("--guidance-scale", dest="guidance_scale", type=float)
    defaults.add_argument("--width", type=int)
    defaults.add_argument("--height", type=int)
    defaults.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser.parse_args(argv)


def read_items(path: str | os.PathLike, base_seed: int, defaults: dict | None = None) -> list[BatchItem]:
    """Reads prompts (text) or requests (JSONL); every item gets a concrete seed. Raises :class:`BatchInputError`."""
    path = Path(path)
    if not path.is_file():
        raise BatchInputError(f"{path}: no such file; pass a .txt file of prompts or a .jsonl file of requests.")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise BatchInputError(f"{path}: cannot be read as UTF-8 text ({error}).") from None
    jsonl = path.suffix.lower() in JSONL_SUFFIXES
    items: list[BatchItem] = []
    for number, text in enumerate(lines, start=1):
        text = text.strip()
        if not text or (not jsonl and text.startswith("#")):
            continue
        try:
            fields_ = _parse_json_line(text) if jsonl else {"prompt": text}
            items += _expand(len(items), number, {**(defaults or {}), **fields_}, base_seed)
        except InvalidRequest as error:
            raise BatchInputError(f"{path} line {number}: {error}") from None
    if not items:
        kind = "requests (one JSON object per line)" if jsonl else "prompts (one per line)"
        raise BatchInputError(f"{path} has no {kind}; nothing to generate.")
    return items


def _parse_json_line(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise InvalidRequest(f"not valid JSON ({error.msg} at column {error.colno}).") from None
    if not isinstance(value, dict):
        raise InvalidRequest('expected a JSON object such as {"prompt": "a red circle", "seed": 3}.')
    unknown = sorted(set(value) - set(REQUEST_FIELDS))
    if unknown:
        raise InvalidRequest(f"unknown field{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
                             f"known fields: {', '.join(REQUEST_FIELDS)}.")
    if "prompt" not in value:
        raise InvalidRequest('every request needs a "prompt".')
    return value


def _expand(first_index: int, line: int, values: dict, base_seed: int) -> list[BatchItem]:
    """One item per image: ``num_images`` n becomes n items with seeds seed, seed + 1, ... (as in the app)."""
    check_prompt("prompt", values["prompt"], required=True)
    count = as_number("num_images", values.pop("num_images", 1), integer=True, low=1, high=MAX_IMAGES)
    seed = values.pop("seed", -1)
    explicit = seed is not None and seed != -1
    seed = resolve_seed(seed) if explicit else None
    items = []
    for j in range(count):
        index = first_index + j
        item_seed = seed + j if explicit else (base_seed + index) % (MAX_SEED + 1)
        items.append(BatchItem(index, line, TextToImageRequest(**values, seed=item_seed)))
    return items


def validate_items(items: list[BatchItem], models, source: str) -> list[BatchItem]:
    """Each item's request with the model's defaults filled in; the first bad one raises with its line number."""
    checked = []
    for item in items:
        try:
            checked.append(replace(item, request=validate(models, item.request)))
        except InvalidRequest as error:
            raise BatchInputError(f"{source} line {item.line}: {error}") from None
    return checked


def record_for(item: BatchItem, model: str) -> dict:
    """The start of an item's manifest record: where it came from and exactly what was asked for."""
    return {"id": item.id, "index": item.index, "line": item.line, "file": item.file, "seed": item.request.seed,
            "request": json.loads(json.dumps(asdict(item.request))), "model": model}


def finished_record(out: Path, item: BatchItem, model: str) -> dict | None:
    """The item's record when its PNG and record exist, ask for the same request and model, and the PNG is whole."""
    try:
        record = json.loads((out / RECORDS / f"{item.id}.json").read_text(encoding="utf-8"))
        png_size = (out / item.file).stat().st_size
    except (OSError, ValueError):
        return None
    expected = record_for(item, model)
    same = record.get("request") == expected["request"] and record.get("model") == model
    return record if same and png_size == record.get("bytes") else None


def write_atomic(path: Path, write) -> None:
    """Calls ``write(tmp)`` then renames tmp to ``path``: readers see the old file or the whole new one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def generate_item(models, item: BatchItem, out: Path, process: int) -> dict:
    """Makes one image, writes its PNG then its record (in that order) and returns the record."""
    started = time.perf_counter()
    result = text_to_image(models, item.request)
    png = out / item.file
    write_atomic(png, lambda tmp: save_png(result.images[0], tmp, result.metadata))
    data = png.read_bytes()
    record = {**record_for(item, models.name), "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(),
              "seconds": round(time.perf_counter() - started, 3), "process": process}
    write_atomic(out / RECORDS / f"{item.id}.json",
                 lambda tmp: tmp.write_text(json.dumps(record) + "\n", encoding="utf-8"))
    return record


def write_manifest(out: Path, items: list[BatchItem], model: str) -> int:
    """Writes ``manifest.jsonl``: the records of the finished items, in input order. Returns how many."""
    done = [record for record in (finished_record(out, item, model) for item in items) if record is not None]
    text = "".join(json.dumps(record) + "\n" for record in done)
    write_atomic(out / MANIFEST, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    return len(done)


def remove_stale_temporaries(out: Path) -> None:
    """Deletes half-written files a killed run left behind (they were never renamed, so never counted)."""
    for folder in (out, out / RECORDS):
        for tmp in folder.glob(".*.tmp"):
            tmp.unlink(missing_ok=True)


def run(args: argparse.Namespace, state) -> None:
    """Loads the models once per process and makes this process's share of the pending items."""
    from diffdemo.engine import load_models

    defaults = {name: getattr(args, name) for name in ("negative_prompt", "sampler", "steps", "guidance_scale",
                                                       "width", "height") if getattr(args, name) is not None}
    if not 0 <= args.seed <= MAX_SEED:
        raise BatchInputError(f"--seed must be between 0 and {MAX_SEED}; got {args.seed}.")
    if args.limit is not None and args.limit < 1:
        raise BatchInputError(f"--limit must be at least 1; got {args.limit}.")
    items = read_items(args.input, args.seed, defaults)
    models = load_models(args.model, device=process_device(args.device, state), dtype=args.dtype)
    items = validate_items(items, models, args.input)
    out = Path(args.out)
    todo = plan(out, items, models.name, args.limit, state)
    generate_share(models, todo, out, state, progress=not args.no_progress)
    state.wait_for_everyone()
    if state.is_main_process:
        finished = write_manifest(out, items, models.name)
        print(f"diffdemo batch: {finished} of {len(items)} items done; manifest: {out / MANIFEST}"
              + ("" if finished == len(items) else "; run the same command again to make the rest"),
              file=sys.stderr, flush=True)


def plan(out: Path, items: list[BatchItem], model: str, limit: int | None, state) -> list[BatchItem]:
    """The items to make in this run, the same list in every process: the main process decides and tells the rest."""
    from accelerate.utils import broadcast_object_list

    todo_indices = [None]
    if state.is_main_process:
        (out / RECORDS).mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(out)
        pending = [item.index for item in items if finished_record(out, item, model) is None]
        todo_indices = [pending[:limit] if limit else pending]
        print(f"diffdemo batch: {len(items)} items, {len(items) - len(pending)} already done, "
              f"{len(todo_indices[0])} to make with {model} on {state.num_processes} process(es) -> {out}",
              file=sys.stderr, flush=True)
    broadcast_object_list(todo_indices)  # also keeps the others from writing before the main process has looked
    return [items[index] for index in todo_indices[0]]


def generate_share(models, todo: list[BatchItem], out: Path, state, progress: bool) -> None:
    """Makes this process's consecutive slice of ``todo``; the main process shows a bar for its slice."""
    from tqdm.auto import tqdm

    with state.split_between_processes(todo) as share:
        label = "generating" if state.num_processes == 1 else f"process 0 of {state.num_processes}: generating"
        bar = tqdm(share, desc=label, unit="image", disable=not (progress and state.is_main_process))
        for item in bar:
            bar.set_postfix_str(item.id)
            generate_item(models, item, out, state.process_index)


def process_device(device: str | None, state):
    """The device this process uses: ``--device`` as given, except that a bare ``cuda`` means this process's GPU."""
    import torch

    if device is None or (state.num_processes > 1 and device in ("cuda", "xpu", "npu", "mlu", "musa")):
        return torch.device("cpu") if state.device.type == "cpu" else state.device
    return device


def distributed_state(device: str | None):
    """accelerate's PartialState; processes launched without an accelerator (or told ``--device cpu``) use gloo."""
    import torch
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    cpu = (device or "").startswith("cpu") or parse_flag_from_env("ACCELERATE_USE_CPU") \
        or not torch.accelerator.is_available()
    state = PartialState(cpu=cpu)
    launched = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if launched > 1 and state.num_processes != launched:
        raise BatchInputError(f"started as one of {launched} processes, but accelerate set up "
                              f"{state.num_processes}; every process would make every image. Check the launcher "
                              f"and --device.")
    if state.num_processes == 1 and "MASTER_ADDR" in os.environ and "WORLD_SIZE" not in os.environ:
        print("diffdemo batch: note: running as a single process; for several CPU processes use "
              "`accelerate launch --multi_gpu --num_processes N ... --device cpu` or torchrun.", file=sys.stderr)
    return state


def main(argv=None) -> None:
    args = parse_args(argv)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    from diffdemo.engine import ModelLoadError

    state = None
    try:
        state = distributed_state(args.device)
        run(args, state)
    except (BatchInputError, ModelLoadError) as error:
        if state is None or state.is_main_process:
            print(f"diffdemo batch: {error}", file=sys.stderr, flush=True)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit("diffdemo batch: interrupted; run the same command again to continue.")


if __name__ == "__main__":
    main()
