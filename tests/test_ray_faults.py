"""Ray Train: two DDP workers learn what one process learns, and survive a worker's death: a worker killed
mid-epoch, the worker group restarted from the last checkpoint (``train.ray.max_failures``, Ray's
``FailureConfig``), the same run finishing. One run tests both (one Ray Train start instead of two: ~1.5 min of the
suite). The Ray Data side (a generation actor killed mid-run) is in tests/test_generate.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from helpers import COMMAND_TIMEOUT_S
from planted import floor, overrides, train

TRAIN_WORKER = "ray::RayTrainWorker"  # the title Ray gives a Ray Train worker's process
STEPS_PER_CHECKPOINT = 10


def _train_workers(root: psutil.Process) -> list[psutil.Process]:
    """Ray Train workers among ``root``'s descendants: the Ray that this run started, never another test's."""
    found = []
    for process in root.children(recursive=True):
        try:
            if " ".join(process.cmdline()).startswith(TRAIN_WORKER):
                found.append(process)
        except psutil.Error:
            pass
    return sorted(found, key=lambda process: process.pid)


def _steps(checkpoints: Path) -> list[int]:
    return sorted(int(path.stem.split("step=")[1]) for path in checkpoints.glob("*step=*.ckpt"))


@pytest.mark.slow
def test_two_ray_train_workers_match_one_process_and_resume_after_a_killed_worker(
        planted: Path, tmp_path: Path, ray_dir: str) -> None:
    single = train(planted, tmp_path / "single")
    out = tmp_path / "ray"
    # two epochs of ~60 steps a worker on the planted data, a checkpoint every 10: the kill lands between the first
    # checkpoint and the last step
    command = [sys.executable, "-m", "newsrec_dist.cli", "train", "--quiet",
               *overrides(planted, out, "train=ray", f"train.ray.ray.temp_dir={ray_dir}",
                          f"train.checkpoint_every_n_steps={STEPS_PER_CHECKPOINT}", "train.threads=1")]
    checkpoints = out / ".partial-nrms" / "checkpoints"
    log = tmp_path / "train.log"
    with open(log, "wb") as sink:  # a file, not a pipe: Ray's and Lightning's logs would fill a pipe and block it
        child = subprocess.Popen(command, stdout=sink, stderr=sink, start_new_session=True)
    try:
        deadline = time.monotonic() + COMMAND_TIMEOUT_S
        while not _steps(checkpoints) and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert child.poll() is None, log.read_text()[-3000:]
        written_at_kill = _steps(checkpoints)
        workers = _train_workers(psutil.Process(child.pid))
        assert len(workers) == 2, [process.cmdline() for process in workers]
        workers[-1].send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        child.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
    text = log.read_text()
    assert child.returncode == 0, text[-5000:]
    summary = json.loads((out / "nrms" / "summary.json").read_text())
    print(f"killed at checkpoints {written_at_kill}; finished {time.monotonic() - killed_at:.1f} s later; "
          f"resumed from {summary['resumed_from']}; {summary['steps']} steps")
    assert written_at_kill and max(written_at_kill) < summary["steps"]  # the kill landed mid-run
    # the new worker group resumed from a checkpoint written before the kill (not from step 0) and finished
    assert len(summary["resumed_from"]) == 1, summary["resumed_from"]
    resumed_step = int(summary["resumed_from"][0].split("step=")[1].removesuffix(".ckpt"))
    assert STEPS_PER_CHECKPOINT <= resumed_step < summary["steps"]
    assert [epoch["epoch"] for epoch in summary["epochs"]] == [0, 1] and summary["epochs"][-1]["step"] == summary["steps"]
    assert json.loads((out / "nrms" / "metrics.json").read_text()) == summary["metrics"]
    # what two workers learn, killed or not: one process's AUC, in half its optimizer steps at the same batch size
    # (each epoch drops its last partial batch, so one process may take one more step per epoch)
    auc = summary["metrics"]["all"]["auc"]
    assert auc >= floor(planted) and abs(auc - single["metrics"]["all"]["auc"]) < 0.05, (auc, single["metrics"])
    assert 0 <= single["steps"] - 2 * summary["steps"] <= 3, (single["steps"], summary["steps"])
