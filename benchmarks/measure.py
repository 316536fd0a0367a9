"""Shared by the benchmark scripts: run a command, report wall time and peak RSS of its process tree."""

from __future__ import annotations

import csv
import os
import platform
import subprocess
import time
from pathlib import Path

import psutil


def tree_rss(process: psutil.Process) -> int:
    total = 0
    for member in [process, *process.children(recursive=True)]:
        try:
            total += member.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


def measured(command: list[str], env: dict[str, str] | None = None) -> tuple[float, float, str]:
    """Run a command; returns (wall seconds, peak RSS of its process tree in MiB sampled every 0.2 s, stdout)."""
    start = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    watched, peak = psutil.Process(child.pid), 0
    while child.poll() is None:
        peak = max(peak, tree_rss(watched))
        time.sleep(0.2)
    stdout, stderr = child.communicate()
    if child.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{stdout}\n{stderr[-4000:]}")
    return time.perf_counter() - start, peak / 2**20, stdout


def append_csv(path: Path, rows: list[dict]) -> None:
    """Append result rows to a CSV file, writing the header when the file is new."""
    new_file = not path.exists()
    with open(path, "a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        if new_file:
            writer.writeheader()
        writer.writerows(rows)


def append_section(path: Path, title: str, command: str, body: list[str]) -> None:
    """Append a Markdown section: its title, the command that made it, the machine, then ``body`` lines."""
    machine = f"Machine: {os.cpu_count()} cores, Python {platform.python_version()}, {platform.platform()}\n"
    with open(path, "a") as handle:
        handle.write("\n".join([f"\n## {title}\n", f"Command: `{command}`  ", machine, *body]) + "\n")
