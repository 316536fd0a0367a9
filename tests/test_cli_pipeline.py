"""The `newsrec` command line and the main job, run as a user runs them (subprocesses)."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from newsrec_dist.config import ConfigError, load_config


def newsrec(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "newsrec_dist.cli", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=900)


def test_config_composes_quickstart_with_typed_overrides() -> None:
    cfg = load_config(["data.synth.scale=tiny", "eval.diversity_k=5"])
    assert cfg.experiment_name == "quickstart"
    assert cfg.data.name == "synth-tiny"
    assert cfg.data.raw_dir == "runs/quickstart/raw/synth-tiny"
    assert cfg.eval.diversity_k == 5
    assert list(cfg.stages) == ["synth", "prepare", "keywords", "graphs", "node2vec", "finetune", "embed", "glove",
                                "generate", "train", "eval", "report"]
    assert list(cfg.train.models) == ["nrms", "lecop", "nrms_genre"]
    with pytest.raises(ConfigError, match="could not be converted to Float"):
        load_config(["data.synth.affinity_weight=strong"])
    with pytest.raises(ConfigError, match="experiment"):
        load_config(["experiment=nonexistent"])


def test_quickstart_pipeline_end_to_end_and_rerun_skips(tmp_path: Path) -> None:
    work = tmp_path / "run"
    ray_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # private Ray; socket paths must stay short
    settings = ["data.synth.scale=tiny", f"paths.work_dir={work}", f"node2vec.ray.temp_dir={ray_dir}",
                f"encoder.embed.ray.temp_dir={ray_dir}", "encoder.finetune.steps=4", "encoder.finetune.deepspeed=zero0",
                f"generate.ray.temp_dir={ray_dir}", f"generate.cache_dir={tmp_path / 'llm-cache'}",
                "generate.task.max_news=2", "generate.task.max_users=1", "generate.task.news_per_user=1",
                "train.max_steps=6", "train.checkpoint_every_n_steps=3", "train.progress=false"]
    first = newsrec("run", "experiment=quickstart", *settings, cwd=tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    report = (work / "report.md").read_text()
    assert "## Co-occurrence graphs" in report and "| news/w=2 |" in report
    assert "## Node2Vec embeddings" in report
    assert "## News encoder" in report and "| adapted model |" in report
    for name in ("minilm-finetuned", "glove-6b-50d"):
        assert (work / "embeddings" / name / "embeddings.parquet").is_file(), name
    assert (work / "encoder" / "minilm" / "adapter").is_dir()
    assert "## LLM generation" in report and "| chain (profiler step) | " in report
    for task in ("keywords", "summarize", "profile", "news", "chain", "chain_profile"):
        assert (work / "generate" / task / "results.parquet").is_file(), task
    assert (work / "generate" / "chain" / "prepared" / "news.parquet").is_file()
    for graph in ("news/w=2", "item_keyword/w=2", "intra_keyword"):
        assert (work / "node2vec" / graph / "embeddings.parquet").is_file()
    assert "## Recommenders" in report and "GENRE cost per gain" in report
    for model in ("nrms", "lecop", "nrms_genre"):
        assert f"| {model} | 6 |" in report and f"| {model} | warm |" in report
        assert (work / "train" / model / "model.safetensors").is_file(), model
    coverage = json.loads((work / "train" / "lecop" / "summary.json").read_text())["coverage"]
    assert {entry["keyed_by"] for entry in coverage.values()} == {"news", "keyword"}
    for name in ("random", "popularity", "category_profile"):
        assert f"| {name} | all |" in report and f"| {name} | new |" in report
    metrics = json.loads((work / "eval" / "metrics.json").read_text())
    assert set(metrics["models"]) == {"random", "popularity", "category_profile"}
    assert metrics["models"]["category_profile"]["warm"]["auc"] > metrics["models"]["random"]["warm"]["auc"]
    prediction_lines = (work / "eval" / "prediction-popularity.txt").read_text().splitlines()
    assert len(prediction_lines) == metrics["impressions"]
    raw_file = work / "raw" / "synth-tiny" / "train" / "behaviors.tsv"
    parquet = work / "prepared" / "synth-tiny" / "behaviors" / "split=train" / "part-0.parquet"
    embeddings = work / "node2vec" / "news" / "w=2" / "manifest.json"
    generated = work / "generate" / "chain" / "manifest.json"
    trained = work / "train" / "lecop" / "manifest.json"
    stamps = [path.stat().st_mtime_ns for path in (raw_file, parquet, embeddings, generated, trained)]
    second = newsrec("run", "experiment=quickstart", *settings, cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert [path.stat().st_mtime_ns for path in (raw_file, parquet, embeddings, generated, trained)] == stamps
    unknown = newsrec("node2vec", "train", "--graph", "news/w=9", *settings, cwd=tmp_path)
    assert unknown.returncode == 2 and "news/w=9" in unknown.stdout


def test_bad_options_fail_with_a_clear_message(tmp_path: Path) -> None:
    result = newsrec("data", "synth", "--scale", "huge", "--out", str(tmp_path / "x"), cwd=tmp_path)
    assert result.returncode == 2
    assert "unknown synth scale 'huge'" in result.stdout
    result = newsrec("run", "stages=[synth,teleport]", f"paths.work_dir={tmp_path}", cwd=tmp_path)
    assert result.returncode == 2 and "unknown stage(s) ['teleport']" in result.stdout
    result = newsrec("data", "synth", "data.synth.seed=many", cwd=tmp_path)
    assert result.returncode == 2 and "data.synth.seed=many" in result.stdout


def test_prepare_strict_names_file_and_line(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    assert newsrec("data", "synth", "--quiet", "--scale", "tiny", "--out", str(raw), cwd=tmp_path).returncode == 0
    behaviors = raw / "dev" / "behaviors.tsv"
    lines = behaviors.read_text().splitlines()
    lines[4] = lines[4].replace("\t", " ", 1)
    behaviors.write_text("\n".join(lines) + "\n")
    strict = newsrec("data", "prepare", "--quiet", "--strict", "--raw", str(raw), "--out", str(tmp_path / "p"),
                     cwd=tmp_path)
    assert strict.returncode == 2
    assert f"{behaviors}:5: expected 5 tab-separated columns, found 4" in strict.stdout.replace("\n", "")
    lenient = newsrec("data", "prepare", "--quiet", "--raw", str(raw), "--out", str(tmp_path / "p"), cwd=tmp_path)
    assert lenient.returncode == 0, lenient.stdout
    assert f"read {len(lines)} = kept {len(lines) - 1} + rejected 1" in lenient.stdout
    reject = json.loads((tmp_path / "p" / "rejects.jsonl").read_text().splitlines()[0])
    assert (reject["file"], reject["line"]) == (str(behaviors), 5)


def test_eval_command_prints_table_and_rejects_unknown_baseline(tmp_path: Path) -> None:
    work = f"paths.work_dir={tmp_path / 'run'}"
    assert newsrec("run", "data.synth.scale=tiny", "stages=[synth,prepare]", work, cwd=tmp_path).returncode == 0
    result = newsrec("eval", "--baseline", "popularity", "data.synth.scale=tiny", work, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "| popularity | warm |" in result.stdout
    bad = newsrec("eval", "--baseline", "oracle", "data.synth.scale=tiny", work, cwd=tmp_path)
    assert bad.returncode == 2 and "unknown baseline(s) ['oracle']" in bad.stdout


def test_job_scripts_call_the_same_core(tmp_path: Path) -> None:
    repo = Path(__file__).resolve().parents[1]
    out = tmp_path / "raw"
    result = subprocess.run([sys.executable, str(repo / "jobs" / "prepare_data.py"), "synth", "--quiet", "--scale",
                             "tiny", "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads((out / "synth_stats.json").read_text())["impressions"] == 3000
