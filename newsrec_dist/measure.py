"""Measuring runs for benchmarks: wall time, peak RSS of the process tree, GPU utilisation when GPUs are there.

Used by ``newsrec bench`` and the scripts in benchmarks/, which append CSV rows and Markdown sections.
"""

from __future__ import annotations

import csv
import os
import platform
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

SAMPLE_SECONDS = 0.2


@dataclass(frozen=True)
class Measurement:
    wall_s: float
    peak_rss_mib: float
    stdout: str
    gpu_util_percent: float | None = None  # mean over samples, all GPUs; None without nvidia-smi
    gpu_mem_peak_mib: float | None = None  # peak of the summed used memory


def tree_rss(process: psutil.Process) -> int:
    total = 0
    for member in [process, *process.children(recursive=True)]:
        try:
            total += member.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


def gpu_sample() -> tuple[float, float] | None:
    """(mean utilisation %, used MiB summed) over the visible GPUs, from nvidia-smi; None when there is none."""
    if shutil.which("nvidia-smi") is None:
        return None
    done = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits"],
                          capture_output=True, text=True)
    rows = [line.split(",") for line in done.stdout.strip().splitlines() if "," in line]
    if done.returncode != 0 or not rows:
        return None
    return sum(float(util) for util, _ in rows) / len(rows), sum(float(used) for _, used in rows)


def measured(command: list[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> Measurement:
    """Run a command to its end, sampling its process tree's RSS (and the GPUs about once a second)."""
    start = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=cwd)
    watched, peak, gpu, ticks = psutil.Process(child.pid), 0, [], 0
    while child.poll() is None:
        peak = max(peak, tree_rss(watched))
        if ticks % int(1 / SAMPLE_SECONDS) == 0 and (sample := gpu_sample()) is not None:
            gpu.append(sample)
        ticks += 1
        time.sleep(SAMPLE_SECONDS)
    stdout, stderr = child.communicate()
    if child.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{stdout[-2000:]}\n{stderr[-4000:]}")
    return Measurement(time.perf_counter() - start, peak / 2**20, stdout,
                       sum(util for util, _ in gpu) / len(gpu) if gpu else None,
                       max(used for _, used in gpu) if gpu else None)


def append_csv(path: Path, rows: list[dict]) -> None:
    """Append result rows to a CSV file, writing the header when the file is new. Rows with columns the file
    lacks rewrite it with the new columns appended (empty in the older rows): a benchmark may grow a column."""
    old_rows: list[dict] = []
    fields = list(rows[0])
    if path.exists():
        with open(path, newline="") as handle:
            reader = csv.DictReader(handle)
            header = list(reader.fieldnames or [])
            old_rows = list(reader) if set(fields) - set(header) else []
        fields = header + [name for name in fields if name not in header]
    with open(path, "w" if old_rows or not path.exists() else "a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields, restval="")
        if old_rows or handle.tell() == 0:
            writer.writeheader()
        writer.writerows(old_rows + rows)


def machine_line() -> str:
    """The machine and its load average as the result is written (the benchmark's own work included: a figure
    well above its own threads means something else ran beside it)."""
    load = "/".join(f"{value:.2f}" for value in os.getloadavg())
    return (f"Machine: {os.cpu_count()} cores, Python {platform.python_version()}, {platform.platform()}; "
            f"load average (1/5/15 min) at the end: {load}")


def append_section(path: Path, title: str, command: str, body: list[str]) -> None:
    """Append a Markdown section: its title, the command that made it, the machine, then ``body`` lines."""
    with open(path, "a") as handle:
        handle.write("\n".join([f"\n## {title}\n", f"Command: `{command}`  ", machine_line() + "\n", *body]) + "\n")
