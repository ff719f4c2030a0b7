"""Shared by the benchmark scripts: machine description, timing with medians, Markdown tables, BENCHMARKS.md sections.

Each script owns one section of docs/BENCHMARKS.md, delimited by ``<!-- bench:NAME start/end -->`` markers, and
rewrites only that section, so the CPU and GPU tables are updated independently.
"""
from __future__ import annotations

import datetime
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "BENCHMARKS.md"
DOC_HEADER = """# Benchmarks

Measured by the scripts in `bench/` (`python bench/cpu.py`, `python bench/gpu.py`); each section below is rewritten
by its script, with the machine, library versions and date it ran on. Every comparison in a table was measured
side by side in one run; times are medians over repeats, warm-up runs excluded (and reported).
"""


def setup_paths() -> None:
    """Lets ``python bench/x.py`` import the repository's ``diffdemo`` package without installing it."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))


@dataclass
class Timing:
    """Seconds of each measured repeat and of each warm-up run (not in the median)."""

    runs: list = field(default_factory=list)
    warmup: list = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.runs) if self.runs else float("nan")

    @property
    def spread(self) -> str:
        """``min–max`` of the measured runs, for the table's reader to judge the noise."""
        return f"{min(self.runs):.3f}–{max(self.runs):.3f}" if self.runs else "–"


def timed(fn, timing: Timing | None = None, warmup: bool = False):
    """Calls ``fn()`` once, appends its wall time to ``timing`` (to ``warmup`` if asked); returns fn's result."""
    started = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - started
    if timing is not None:
        (timing.warmup if warmup else timing.runs).append(seconds)
    return result


def interleaved(variants: dict, repeats: int, warmups: int = 1) -> dict:
    """Runs each ``name -> fn`` ``warmups`` then ``repeats`` times, alternating variants within each round so slow
    drifts of a shared machine hit all of them alike; returns ``name -> Timing``."""
    timings = {name: Timing() for name in variants}
    for round_index in range(warmups + repeats):
        for name, fn in variants.items():
            timed(fn, timings[name], warmup=round_index < warmups)
    return timings


def peak_rss_mb(pid: int | None = None) -> float:
    """Peak resident memory in MiB of this process (or of ``pid``, read from /proc: VmHWM)."""
    if pid is None:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(extra: dict | None = None) -> dict:
    """What the numbers were measured on: CPU, cores, memory, GPU, library versions, date, commit, load."""
    import torch

    info = {"date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
            "cpu": f"{cpu_model()} ({os.cpu_count()} cores, torch uses {torch.get_num_threads()} threads, "
                   f"{torch.backends.cpu.get_cpu_capability()} kernels)",
            "memory": _memory(), "python": platform.python_version(), "torch": torch.__version__}
    for name in ("diffusers", "transformers", "accelerate", "gradio"):
        info[name] = _version(name)
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info["gpu"] = f"{props.name} ({props.total_memory / 2**30:.0f} GiB), CUDA {torch.version.cuda}"
    info["commit"] = _commit()
    info["load average"] = " ".join(f"{v:.2f}" for v in os.getloadavg())
    return {**info, **(extra or {})}


def _version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def _memory() -> str:
    try:
        kib = int(Path("/proc/meminfo").read_text().split()[1])
        return f"{kib / 2**20:.0f} GiB"
    except (OSError, ValueError, IndexError):
        return "unknown"


def _commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                             timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True,
                               timeout=10).stdout.strip()
        return out.stdout.strip() + (" (with uncommitted changes)" if dirty else "") if out.returncode == 0 else "?"
    except (OSError, subprocess.SubprocessError):
        return "?"


def markdown_table(headers: list, rows: list) -> str:
    lines = ["| " + " | ".join(map(str, headers)) + " |", "|" + "|".join(" --- " for _ in headers) + "|"]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in rows]
    return "\n".join(lines)


def machine_lines(info: dict) -> str:
    return "\n".join(f"- **{key}**: {value}" for key, value in info.items())


def update_section(name: str, text: str, path: Path = DOC) -> Path:
    """Replaces (or appends) the ``name`` section of ``path`` with ``text``; the rest of the file is kept."""
    start, end = f"<!-- bench:{name} start -->", f"<!-- bench:{name} end -->"
    block = f"{start}\n{text.strip()}\n{end}"
    current = path.read_text() if path.exists() else DOC_HEADER
    if start in current and end in current:
        before, rest = current.split(start, 1)
        current = before + block + rest.split(end, 1)[1]
    else:
        current = current.rstrip() + "\n\n" + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(current)
    return path


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 10 else f"{seconds:.1f} s"
