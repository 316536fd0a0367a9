"""`newsrec bench`: each stage's throughput read from its own output, at 1 and 2 workers, written as CSV, PNG
and Markdown."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib.image
import pytest
from helpers import run
from planted import NODE2VEC

from newsrec_dist.cluster.bench import with_scaling
from newsrec_dist.measure import append_csv

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_bench_train_one_vs_two_ray_workers_writes_csv_png_markdown(planted: Path, tmp_path: Path) -> None:
    prepared = planted
    out = tmp_path / "report" / "scaling_train"
    cli = [sys.executable, "-m", "newsrec_dist.cli", "bench"]
    settings = [f"data.prepared_dir={prepared}", "train.epochs=1", "train.max_steps=12", "train.batch_size=32",
                "train.progress=false", "train.eval_batch_impressions=256", "model.news.dim=32",
                "model.news.heads=2", "model.user.heads=2"]
    done = run([*cli, "train", "--workers", "1,2", "--out", str(out), *settings], cwd=ROOT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = [line.split(",") for line in out.with_suffix(".csv").read_text().splitlines()]
    header, one, two = rows[0], dict(zip(rows[0], rows[1])), dict(zip(rows[0], rows[2]))
    assert header[:3] == ["stage", "workers", "throughput"] and (one["workers"], two["workers"]) == ("1", "2")
    for row in (one, two):  # the throughput is each run's own measurement, and a training loop is faster
        (summary_path,) = (out.with_name(out.name + "-runs") / f"workers-{row['workers']}").glob("**/summary.json")
        summary = json.loads(summary_path.read_text())  # than the whole process (start-up, evaluation)
        assert float(row["throughput"]) == round(summary["epochs"][-1]["samples_per_second"], 2)
        assert float(row["throughput"]) > summary["steps"] * 32 * int(row["workers"]) / float(row["wall_s"])
    assert float(two["peak_rss_mib"]) > 100
    image = matplotlib.image.imread(out.with_suffix(".png"))  # a real chart, not an empty canvas
    assert image.shape[0] > 200 and image.shape[1] > 300 and image.std() > 0.01
    table = out.with_suffix(".md").read_text()
    assert f"| 2 | {two['throughput']} | samples/s |" in table and "Command: `newsrec bench train" in table
    unknown = run([*cli, "prepare", "--out", str(out)], cwd=ROOT)
    assert unknown.returncode == 2 and "no benchmark for stage 'prepare'" in unknown.stdout


def own_throughput(stage: str, work: Path, wall_s: float) -> float:
    """What each stage wrote: Node2Vec walks done over the wall time, generation's completion tokens per second."""
    if stage == "node2vec":
        (graph,) = json.loads((work / "node2vec" / "summary.json").read_text()).values()
        return graph["nodes_with_edges"] * 2 * graph["epochs"] / wall_s  # NODE2VEC: walks_per_node=2
    (cost,) = [json.loads(path.read_text()) for path in (work / "generate").glob("*/cost.json")]
    return cost["completion_tokens"] / cost["seconds"]


def test_scaling_is_throughput_over_linear_from_the_smallest_scale() -> None:
    rows = with_scaling([{"workers": 2, "throughput": 100.0}, {"workers": 4, "throughput": 150.0},
                         {"workers": 8, "throughput": 400.0}])
    assert [(row["speedup"], row["efficiency"]) for row in rows] == [(1.0, 1.0), (1.5, 0.75), (4.0, 1.0)]


# generation at two scales (the bench's loop over scales); Node2Vec's reader at one, the bench train test has two
@pytest.mark.parametrize(("stage", "scales"), [("node2vec", [2]), ("generate", [1, 2])], ids=["node2vec", "generate"])
def test_bench_reads_each_stages_own_throughput(stage: str, scales: list[int], tiny: tuple[Path, Path],
                                                tiny_graphs: Path, tmp_path: Path) -> None:
    from newsrec_dist.cluster.bench import bench

    prepared, _ = tiny
    settings = {"node2vec": [f"node2vec.graphs_dir={tiny_graphs}", *NODE2VEC],
                "generate": [f"data.prepared_dir={prepared}", "generate.task.max_news=2", "generate.sampling.max_tokens=24",
                             "generate.backend.threads=1"]}[stage]
    stale = tmp_path / "runs" / f"workers-{scales[0]}" / "stale-output"  # an earlier bench's output must not be reused
    stale.mkdir(parents=True)
    rows = bench(stage, scales, settings, tmp_path / "report" / stage, tmp_path / "runs", progress=lambda _: None)
    assert [row["workers"] for row in rows] == scales
    for row in rows:  # each scale's own output, read back independently of the bench's reader
        work = tmp_path / "runs" / f"workers-{row['workers']}"
        assert row["throughput"] == pytest.approx(own_throughput(stage, work, row["wall_s"]), rel=0.02)  # wall_s: 0.1 s
    assert rows[0]["unit"] == {"node2vec": "walks/s", "generate": "tokens/s"}[stage]
    assert (tmp_path / "report" / f"{stage}.png").is_file() and (tmp_path / "runs" / f"workers-{scales[-1]}").is_dir()
    assert not stale.exists()


def test_bench_pipeline_counts_the_runs_an_experiment_trained(tmp_path: Path) -> None:
    """One scale, in-process (trials in parallel are tests/test_trials.py's): the runs/hour reader."""
    from newsrec_dist.cluster.bench import bench

    settings = ["data.synth.scale=micro", "stages=[synth,prepare,train]", "train.models=[nrms]", "seeds=[1,2]",
                "train.epochs=1", "train.max_history=10", "train.progress=false"]
    (row,) = bench("pipeline", [1], settings, tmp_path / "report" / "pipeline", tmp_path / "runs",
                   progress=lambda _: None)
    train = tmp_path / "runs" / "workers-1" / "train"
    assert sorted(path.parent.name for path in train.glob("*/summary.json")) == ["nrms.seed1", "nrms.seed2"]
    assert row["unit"] == "runs/h" and row["throughput"] == pytest.approx(2 * 3600 / row["wall_s"], rel=0.02)


def test_a_benchmark_csv_grows_a_column_and_keeps_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "speed.csv"
    append_csv(path, [{"model": "nrms", "samples": 1}])
    append_csv(path, [{"model": "naml", "samples": 2}])
    append_csv(path, [{"model": "din", "samples": 3, "load_s": 4.5}])
    append_csv(path, [{"load_s": 6, "model": "bst", "samples": 7}])
    assert path.read_text().splitlines() == ["model,samples,load_s", "nrms,1,", "naml,2,", "din,3,4.5", "bst,7,6"]
