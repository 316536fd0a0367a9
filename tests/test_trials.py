"""An experiment's arms × seeds as parallel Ray Tune trials (train.trials), tracked in MLflow (train.tracking):
the grid gives what the sequential run gives, a killed cluster resumes it training only the unfinished runs, and
the MLflow store holds every run with its tags and metrics."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml
from helpers import COMMAND_TIMEOUT_S, kill_processes_mentioning, run

# POPK's ablation cut to 2 arms (k0, k2) × 2 seeds of NRMS on the micro data, one epoch each: 4 runs
GRID = ["experiment=popk", "seeds=[1,2]", "ablations.0.models=[]", "data.synth.scale=micro", "train.epochs=1",
        "train.max_history=10", "train.progress=false", "train.threads=1",
        "ablations.0.variants=[{name:k0},{name:k2,set:{train.sampler.kind:popk,train.sampler.popk_count:2}}]"]
RUNS = ["popk.k0.seed1", "popk.k0.seed2", "popk.k2.seed1", "popk.k2.seed2"]


def _newsrec(*args: str) -> list[str]:
    return [sys.executable, "-m", "newsrec_dist.cli", "run", *args]


def _finished(train: Path) -> dict[str, int]:
    return {path.parent.name: path.stat().st_mtime_ns for path in train.glob("popk.*/manifest.json")}


def _kill_after_the_first_run(command: list[str], train: Path, log: Path, ray_dir: str) -> None:
    """Run the grid, then kill -9 the driver and every Ray process (the whole local cluster) once a run finished."""
    with open(log, "wb") as sink:  # a file, not a pipe: Ray's logs would fill a pipe and block the driver
        child = subprocess.Popen(command, stdout=sink, stderr=sink, start_new_session=True)
    try:
        deadline = time.monotonic() + COMMAND_TIMEOUT_S
        while not _finished(train) and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert child.poll() is None, log.read_text()[-3000:]
    finally:  # the driver's whole tree at once: Ray's workers (renamed ray::...) are children of its raylet
        family = psutil.Process(child.pid).children(recursive=True)
        os.killpg(child.pid, signal.SIGKILL)
        for process in family:
            with contextlib.suppress(psutil.Error):
                process.kill()
        child.wait()
        kill_processes_mentioning(ray_dir)


def _ablation_rows(report: str) -> list[str]:
    return [line for line in report.splitlines() if re.match(r"\| k[02] \|", line)]


@pytest.mark.slow
def test_arms_and_seeds_run_as_parallel_trials_resume_after_a_killed_cluster_and_match_the_sequential_run(
        tmp_path: Path, ray_dir: str) -> None:
    work, sequential = tmp_path / "trials", tmp_path / "sequential"
    train = work / "train"
    parallel = [*GRID, f"paths.work_dir={work}", "train.trials.parallel=2", f"train.trials.ray.temp_dir={ray_dir}",
                "train.tracking.loggers=[mlflow]"]
    _kill_after_the_first_run(_newsrec(*parallel), train, tmp_path / "killed.log", ray_dir)
    before = _finished(train)
    assert 1 <= len(before) < len(RUNS), before

    resumed = run(_newsrec(*parallel))
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert re.findall(r"\d+ of \d+ runs already trained", resumed.stdout) == [f"{len(before)} of {len(RUNS)} runs "
                                                                              "already trained"]
    trials = set(re.findall(r"trial (\S+) finished", resumed.stdout))
    assert trials == set(RUNS) - set(before)  # only the unfinished runs were trials again
    assert {name: _finished(train)[name] for name in before} == before  # the finished ones untouched

    alone = run(_newsrec(*GRID, f"paths.work_dir={sequential}"))
    assert alone.returncode == 0, alone.stdout[-3000:] + alone.stderr[-3000:]
    for name in RUNS:  # deterministic training: each trial computed what the in-process run computed
        assert (train / name / "metrics.json").read_text() == (sequential / "train" / name / "metrics.json").read_text()
    rows = _ablation_rows((work / "report.md").read_text())
    assert len(rows) == 2 and rows == _ablation_rows((sequential / "report.md").read_text())

    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{train / 'mlflow.db'}")
    logged = client.search_runs([client.get_experiment_by_name("popk").experiment_id])
    assert sorted(entry.info.run_name for entry in logged) == RUNS  # a resumed trial continued its MLflow run
    for entry in logged:
        name, tags = entry.info.run_name, entry.data.tags
        manifest = json.loads((train / name / "manifest.json").read_text())
        summary = json.loads((train / name / "summary.json").read_text())
        assert entry.info.status == "FINISHED"
        assert (tags["ablation"], tags["arm"], tags["seed"], tags["model"]) == ("popk", name.split(".")[1],
                                                                             name[-1], "nrms")
        assert tags["config_hash"] == manifest["fingerprint"]
        assert entry.data.metrics["val_auc"] == pytest.approx(summary["epochs"][-1]["val_auc"])


@pytest.mark.slow
def test_a_search_stops_weak_trials_with_asha_and_the_seeds_protocol_trains_the_best_draw(tmp_path: Path,
                                                                                          ray_dir: str) -> None:
    work = tmp_path / "search"
    settings = ["experiment=search", f"paths.work_dir={work}", "data.synth.scale=micro", "train.epochs=3",
                "train.early_stopping.patience=null", "train.max_history=10", "train.progress=false",
                # one trial at a time: ASHA compares each with those before it, so which it stops is deterministic
                "search.trials=4", "seeds=[1]", "train.trials.parallel=1", f"train.trials.ray.temp_dir={ray_dir}",
                "stages=[synth,prepare,glove,search,train]"]
    first = run(_newsrec(*settings))
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    trials = json.loads((work / "search" / "trials.json").read_text())
    assert len(trials) == 4 and not any(trial["error"] for trial in trials)
    stopped = [trial for trial in trials if trial["stopped_by_asha"]]
    assert stopped and all(trial["epochs"] < 3 for trial in stopped)  # ASHA ended them before the last epoch
    assert all(trial["epochs"] == 3 for trial in trials if trial["finished"])
    best = yaml.safe_load((work / "search" / "best.yaml").read_text())
    winner = max(trials, key=lambda trial: trial["best"])
    assert best["settings"] == winner["settings"] and best["value"] == winner["best"]
    trained = yaml.safe_load((work / "train" / "nrms.seed1" / "config.yaml").read_text())
    assert trained["train"]["lr"] == best["settings"]["train.lr"]  # the protocol ran on the best draw
    assert trained["model"]["news"]["dim"] == best["settings"]["model.news.dim"]

    again = run(_newsrec(*settings))
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "stage search up to date, skipped" in again.stdout and "stage train up to date, skipped" in again.stdout
