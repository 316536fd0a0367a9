"""The `newsrec` command line and the main job, run as a user runs them (subprocesses)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import matplotlib.image
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from omegaconf import open_dict
from helpers import THREADS, run
from safetensors.torch import load_file
from typer.testing import CliRunner, Result

from newsrec_dist.cli import app
from newsrec_dist.config import ConfigError, load_config, with_variant
from newsrec_dist.embed.vectors import read_vectors
from newsrec_dist.graphs.artifact import node_keys
from newsrec_dist.pipeline import train_jobs


def newsrec(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """The command as a user runs it: a process of its own (the end-to-end runs, kill -9)."""
    return run([sys.executable, "-m", "newsrec_dist.cli", *args], cwd=cwd, timeout=900)


def newsrec_here(*args: str) -> Result:
    """The same command in this process (typer's runner): error paths and short runs without a start-up each."""
    return CliRunner().invoke(app, list(args))


def test_config_composes_quickstart_with_typed_overrides() -> None:
    cfg = load_config(["experiment=quickstart", "data.synth.scale=tiny", "eval.diversity_k=5"])
    assert cfg.experiment_name == "quickstart" and cfg.budget == "demo"
    assert cfg.data.name == "synth-tiny"
    assert cfg.data.raw_dir == "runs/quickstart/raw/synth-tiny"
    assert cfg.eval.diversity_k == 5
    assert list(cfg.stages) == ["synth", "prepare", "keywords", "graphs", "node2vec", "finetune", "embed", "glove",
                                "generate", "embed_profiles", "train", "eval", "report"]
    assert list(cfg.train.models) == ["nrms", "lecop", "nrms_genre"]
    with pytest.raises(ConfigError, match="could not be converted to Float"):
        load_config(["data.synth.affinity_weight=strong"])
    with pytest.raises(ConfigError, match="experiment"):
        load_config(["experiment=nonexistent"])


@pytest.mark.parametrize(("experiment", "runs"), [("quickstart", 5), ("lecop", 16 * 3), ("popk", 4 * 4 * 3),
                                                   ("genre", 48 * 3), ("pfr", 4 * 3)])
def test_experiments_compose_and_every_ablation_arm_applies(experiment: str, runs: int) -> None:
    cfg = load_config([f"experiment={experiment}"])
    jobs = train_jobs(cfg)
    assert len({job.name for job in jobs}) == len(jobs) == runs
    seeds = list(cfg.seeds) or [None]  # the experiments' arms run once per seed, the quickstart once
    assert sorted({job.seed for job in jobs}, key=str) == sorted(seeds, key=str)
    for job in jobs:
        arm = with_variant(cfg, job.model, job.settings)  # a misspelt key or a wrong type fails here
        assert arm.model.name == job.name
        assert arm.train.seed == (job.seed if job.seed is not None else cfg.train.seed)
        assert all(source.startswith(cfg.paths.work_dir) for view in arm.model.news.views for source in view.sources)
        graphs = [source.removeprefix(f"{cfg.node2vec.output_dir}/") for view in arm.model.news.views
                  for source in view.sources if source.startswith(cfg.node2vec.output_dir)]
        assert set(graphs) <= set(cfg.node2vec.graphs), job.name  # every graph an arm reads is embedded


def test_a_presets_file_reaches_every_run_and_an_arms_own_key_wins(tmp_path: Path) -> None:
    """A search's best.yaml (``presets``) applies to every run after its model preset; an arm's own key wins."""
    best = tmp_path / "best.yaml"
    best.write_text("settings: {train.lr: 0.0042, model.news.dim: 32}\n")
    cfg = load_config(["experiment=popk", f"presets=[{best}]"])
    for job in train_jobs(cfg):
        arm = with_variant(cfg, job.model, job.settings)
        assert (arm.train.lr, arm.model.news.dim) == (0.0042, 32), job.name
    assert with_variant(cfg, "nrms", {"train.lr": 0.01}).train.lr == 0.01
    with pytest.raises(ConfigError, match="missing.yaml"):
        with_variant(load_config([f"presets=[{tmp_path / 'missing.yaml'}]"]), "nrms", {})
    (tmp_path / "bad.yaml").write_text("train.lr: 0.1\n")  # not under `settings`
    with pytest.raises(ConfigError, match="'settings' mapping"):
        with_variant(load_config([f"presets=[{tmp_path / 'bad.yaml'}]"]), "nrms", {})
    search = load_config(["experiment=search"])  # its train stage reads its own search's best draw
    assert list(search.presets) == [f"{search.search.output_dir}/best.yaml"]
    assert search.stages.index("search") < search.stages.index("train")


def test_command_line_model_settings_reach_every_arm_and_an_arms_own_key_wins() -> None:
    """`newsrec run experiment=popk model.news.dim=32` trains every arm at 32: each arm loads its model preset,
    which once silently put the preset's 256 back. A key the arm itself sets defines the arm and stays."""
    cfg = load_config(["experiment=lecop", "model.news.dim=32", "model.news.views.0.fusion=concat"])
    arms = {job.name: with_variant(cfg, job.model, job.settings) for job in train_jobs(cfg)}
    assert {arm.model.news.dim for arm in arms.values()} == {32}
    fusion = {name.removesuffix(".seed1"): arm.model.news.views[0].fusion for name, arm in arms.items()
              if name.startswith("fusion.") and name.endswith(".seed1")}
    assert fusion == {"fusion.add": "concat", "fusion.concat": "concat", "fusion.attention": "attention"}
    assert arms["encoder.glove.seed1"].model.news.views[0].sources[0].endswith("glove-6b-50d")
    # the keywords arm: the LLM's keyword table and graphs, or TF-IDF's table with its own graphs
    llm, tfidf = arms["keywords.llm.seed1"].model.news, arms["keywords.tfidf.seed1"].model.news
    assert llm.keywords_path.endswith("generate/keywords/keywords.parquet")
    assert tfidf.keywords_path.endswith("keywords/tfidf/keywords.parquet")
    assert [source.split("/node2vec/")[1] for source in tfidf.views[0].sources[1:]] == \
        ["news/w=2", "tfidf/item_keyword/w=2", "tfidf/intra_keyword"]


def test_an_ablations_shared_settings_reach_every_arm_and_a_variants_own_win() -> None:
    cfg = load_config(["experiment=genre"])
    with open_dict(cfg):
        cfg.ablations[0].variants[1].set["train.lr"] = 0.01  # arm ns sets its own rate
    arms = {job.name: with_variant(cfg, job.model, job.settings) for job in train_jobs(cfg) if job.seed == 1}
    assert {(arm.train.weight_decay, arm.model.news.dim, arm.train.negatives) for arm in arms.values()} == {(0.01, 64, 4)}
    assert {name.split(".")[2]: arm.train.lr for name, arm in arms.items() if ".nrms." in name} == \
        {"base": 1.0e-3, "ns": 0.01, "up": 1.0e-3, "ng1": 1.0e-3, "ng": 1.0e-3, "chain": 1.0e-3}
    # every arm has the interest-fusion module; only `up` gets the LLM's profiles
    assert all(arm.model.interest.enabled for arm in arms.values())
    assert {name for name, arm in arms.items() if arm.model.interest.profiles_path} == \
        {name for name in arms if ".up." in name}


def test_ablation_settings_are_checked_against_the_schema() -> None:
    cfg = load_config(["experiment=popk"])
    with pytest.raises(ConfigError, match="model.news.nope"):
        with_variant(cfg, "nrms", {"model.news.nope": 1})
    with pytest.raises(ConfigError, match="train.negatives"):
        with_variant(cfg, "nrms", {"train.negatives": "many"})
    with pytest.raises(ValueError, match="names a model"):
        train_jobs(load_config(["experiment=genre", "ablations.0.variants.0.model=nrms"]))


@pytest.mark.slow
def test_quickstart_pipeline_end_to_end_and_rerun_skips(tmp_path: Path, ray_dir: str) -> None:
    work = tmp_path / "run"
    settings = ["data.synth.scale=micro", f"paths.work_dir={work}", f"node2vec.ray.temp_dir={ray_dir}",
                f"encoder.embed.ray.temp_dir={ray_dir}", "encoder.finetune.steps=4", "encoder.finetune.deepspeed=zero0",
                f"generate.ray.temp_dir={ray_dir}", f"generate.cache_dir={tmp_path / 'llm-cache'}",
                "generate.task.max_news=2", "generate.task.max_users=1", "generate.task.news_per_user=1",
                "train.max_steps=12", "train.checkpoint_every_n_steps=6", "train.progress=false",
                # the worker's share of the cores: the demo's 2 llama.cpp threads beside another test's work spin
                # in their barriers (measured: 0.33 completion tokens/s instead of ~24; this test took 559 s)
                f"generate.backend.threads={THREADS}", f"encoder.embed.actor_cpus={THREADS}"]
    first = newsrec("run", "experiment=quickstart", *settings, cwd=tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    report = (work / "report.md").read_text()
    assert "## Co-occurrence graphs" in report and "| news/w=2 |" in report
    assert "## Node2Vec embeddings" in report
    assert "## News encoder" in report and "| adapted model |" in report
    assert "## LLM generation" in report and "| chain (profiler step) | " in report
    news_ids = pq.read_table(work / "prepared" / "synth-micro" / "news.parquet", columns=["news_id"])["news_id"]
    for name, width in (("minilm-finetuned", 384), ("glove-6b-50d", 50), ("minilm-profiles", 384)):
        keys, vectors = read_vectors(work / "embeddings" / name)
        assert sorted(keys) == sorted(news_ids.to_pylist()) and vectors.shape == (len(news_ids), width), name
        assert np.isfinite(vectors).all() and (np.linalg.norm(vectors, axis=1) > 0).mean() > 0.99, name
    # every stage's manifest records the values it ran with: the demo budget and this test's overrides
    assert manifest(work / "encoder" / "minilm")["config"]["finetune"]["steps"] == 4
    adapter = load_file(work / "encoder" / "minilm" / "adapter" / "adapter_model.safetensors")
    assert any("lora_B" in key and adapter[key].abs().sum() > 0 for key in adapter)  # LoRA B starts at 0: it trained
    for graph in ("news/w=2", "item_keyword/w=2", "intra_keyword"):
        ran = manifest(work / "node2vec" / graph)
        assert (ran["config"]["epochs"], ran["config"]["walks_per_node"]) == (2, 5), graph  # budget small, via demo
        keys, vectors = read_vectors(work / "node2vec" / graph)
        assert len(keys) == ran["rows"]["embeddings"] == len(node_keys(work / "graphs", graph)), graph
        assert vectors.shape[1] == ran["config"]["embedding_dim"] and vectors.std() > 0, graph
    assert manifest(work / "generate" / "summarize")["config"]["task"]["max_news"] == 2
    asked = {"keywords": 2, "summarize": 2, "item_profile": 2, "profile": 1, "news": 1, "chain": 1, "chain_profile": 1}
    for task, rows in asked.items():
        statuses = pq.read_table(work / "generate" / task / "results.parquet")["status"].to_pylist()
        assert len(statuses) - statuses.count("skipped") == rows, task
    assert (work / "generate" / "chain" / "prepared" / "news.parquet").is_file()
    for model, batch in (("nrms", 32), ("lecop", 32), ("nrms_genre", 32), ("pfr.pfr", 1024)):
        ran = manifest(work / "train" / model)["config"]["train"]
        assert (ran["max_steps"], ran["batch_size"]) == (12, batch), model  # the arm's own batch beats the demo's
        weights = load_file(work / "train" / model / "model.safetensors")
        assert weights and all(torch.isfinite(tensor).all() for tensor in weights.values()), model
    assert "## Recommenders" in report and "GENRE cost per gain" in report
    for model in ("nrms", "lecop", "nrms_genre"):
        assert f"| {model} | 12 |" in report and f"| {model} | warm |" in report
    coverage = json.loads((work / "train" / "lecop" / "summary.json").read_text())["coverage"]
    assert {entry["keyed_by"] for entry in coverage.values()} == {"news", "keyword"}
    assert "## Ablation `pfr`" in report and "Top-k over the pool's cold news" in report and "| pfr | " in report
    assert (work / "train" / "pfr.pfr" / "recommendations.parquet").is_file()
    for name in ("random", "popularity", "category_profile"):
        assert f"| {name} | all |" in report and f"| {name} | new |" in report
    metrics = json.loads((work / "eval" / "metrics.json").read_text())
    assert set(metrics["models"]) == {"random", "popularity", "category_profile"}
    assert metrics["models"]["category_profile"]["warm"]["auc"] > metrics["models"]["random"]["warm"]["auc"]
    prediction_lines = (work / "eval" / "prediction-popularity.txt").read_text().splitlines()
    assert len(prediction_lines) == metrics["impressions"]
    raw_file = work / "raw" / "synth-micro" / "train" / "behaviors.tsv"
    parquet = work / "prepared" / "synth-micro" / "behaviors" / "split=train" / "part-0.parquet"
    embeddings = work / "node2vec" / "news" / "w=2" / "manifest.json"
    generated = work / "generate" / "chain" / "manifest.json"
    trained = work / "train" / "lecop" / "manifest.json"
    stamps = [path.stat().st_mtime_ns for path in (raw_file, parquet, embeddings, generated, trained)]
    assert_html_report(work, ["curves-models.png", "timings.png"])
    second = newsrec("run", "experiment=quickstart", *settings, cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert [path.stat().st_mtime_ns for path in (raw_file, parquet, embeddings, generated, trained)] == stamps
    rerun_report = (work / "report.md").read_text()
    for stage in ("synth", "graphs", "node2vec", "finetune", "generate", "train", "eval"):
        assert re.search(rf"\| {stage} \| [0-9.]+ \| up to date \(skipped\) \|", rerun_report), stage
    unknown = newsrec("node2vec", "train", "--graph", "news/w=9", *settings, cwd=tmp_path)
    assert unknown.returncode == 2 and "news/w=9" in unknown.stdout


def manifest(directory: Path) -> dict:
    return json.loads((directory / "manifest.json").read_text())


def assert_html_report(work: Path, figures: list[str]) -> None:
    """report.html stands alone: every figure of report.md inlined as a PNG that decodes to a real chart."""
    markdown_text, html = (work / "report.md").read_text(), (work / "report.html").read_text()
    for name in figures:
        assert f"](figures/{name})" in markdown_text, name
        image = matplotlib.image.imread(work / "figures" / name)
        assert image.shape[0] > 200 and image.shape[1] > 300 and image.std() > 0.01, name
    assert html.count('src="data:image/png;base64,') == markdown_text.count("](figures/")
    tables = sum(line.startswith("|---") for line in markdown_text.splitlines())
    assert "src=\"figures/" not in html and html.count("<table>") == tables


@pytest.mark.slow
def test_killed_pipeline_resumes_and_from_reruns_the_later_stages(tmp_path: Path) -> None:
    work = tmp_path / "run"
    # POPK's ablation with arm k1 made equal to k0 (uniform negatives): it must be trained once, not twice. One
    # seed (`seeds=[]`) and one model (the default NRMS, not the grid): resume is under test here; seeds are
    # tests/test_train.py's protocol test
    settings = ["experiment=popk", "seeds=[]", "ablations.0.models=[]", "data.synth.scale=micro",
                f"paths.work_dir={work}", "train.max_steps=30",
                "train.checkpoint_every_n_steps=5", "train.progress=false",
                "ablations.0.variants.1.set={train.sampler.kind:uniform,train.sampler.popk_count:2}"]
    command = [sys.executable, "-m", "newsrec_dist.cli", "run", *settings]
    with open(tmp_path / "first.log", "w") as log:
        first = subprocess.Popen(command, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    checkpoints = work / "train" / ".partial-popk.k2" / "checkpoints"
    deadline = time.monotonic() + 600
    while not list(checkpoints.glob("*step=*.ckpt")):  # killed mid-training of the third arm
        assert first.poll() is None and time.monotonic() < deadline, (tmp_path / "first.log").read_text()
        time.sleep(0.05)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    kept = [work / "prepared" / "synth-micro" / "manifest.json", work / "train" / "popk.k0" / "manifest.json"]
    stamps = [path.stat().st_mtime_ns for path in kept]
    second = newsrec("run", *settings, cwd=tmp_path)
    assert second.returncode == 0, second.stdout + second.stderr
    assert [path.stat().st_mtime_ns for path in kept] == stamps
    assert "popk.k1: the same run as popk.k0" in second.stdout
    assert not (work / "train" / "popk.k1").exists()
    assert json.loads((work / "train" / "popk.k2" / "summary.json").read_text())["resumed_from"]
    report = (work / "report.md").read_text()
    rows = {line.split(" | ")[0].strip("| "): line.split(" | ")[1:5] for line in report.splitlines()
            if re.match(r"\| k[0-4] \|", line)}
    assert sorted(rows) == ["k0", "k1", "k2", "k4"] and rows["k1"] == rows["k0"] != rows["k4"]
    assert re.search(r"\| synth \| [0-9.]+ \| up to date \(skipped\) \|", report)
    assert re.search(r"\| train \| [0-9.]+ \| ran \|", report)
    assert_html_report(work, ["ablation-popk.png", "curves-popk.png", "timings.png"])
    eval_manifest, trained = work / "eval" / "manifest.json", work / "train" / "popk.k4" / "manifest.json"
    before = eval_manifest.stat().st_mtime_ns, trained.stat().st_mtime_ns
    third = newsrec("run", "--from", "eval", *settings, cwd=tmp_path)
    assert third.returncode == 0, third.stdout + third.stderr
    assert eval_manifest.stat().st_mtime_ns > before[0] and trained.stat().st_mtime_ns == before[1]
    assert "stage eval done" in third.stdout and "stage train up to date, skipped" in third.stdout


def test_bad_options_fail_with_a_clear_message(tmp_path: Path) -> None:
    result = newsrec_here("data", "synth", "--scale", "huge", "--out", str(tmp_path / "x"))
    assert result.exit_code == 2
    assert "unknown synth scale 'huge'" in result.stdout
    result = newsrec_here("run", "stages=[synth,teleport]", f"paths.work_dir={tmp_path}")
    assert result.exit_code == 2 and "unknown stage(s) ['teleport']" in result.stdout
    result = newsrec_here("run", "--from", "embed", "stages=[synth]", f"paths.work_dir={tmp_path}")
    assert result.exit_code == 2 and "--from embed: not a stage of this run" in result.stdout
    result = newsrec_here("data", "synth", "data.synth.seed=many")
    assert result.exit_code == 2 and "data.synth.seed=many" in result.stdout


def test_prepare_strict_names_file_and_line(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    assert newsrec_here("data", "synth", "--quiet", "--scale", "tiny", "--out", str(raw)).exit_code == 0
    behaviors = raw / "dev" / "behaviors.tsv"
    lines = behaviors.read_text().splitlines()
    lines[4] = lines[4].replace("\t", " ", 1)
    behaviors.write_text("\n".join(lines) + "\n")
    strict = newsrec_here("data", "prepare", "--quiet", "--strict", "--raw", str(raw), "--out", str(tmp_path / "p"))
    assert strict.exit_code == 2
    assert f"{behaviors}:5: expected 5 tab-separated columns, found 4" in strict.stdout.replace("\n", "")
    lenient = newsrec_here("data", "prepare", "--quiet", "--raw", str(raw), "--out", str(tmp_path / "p"))
    assert lenient.exit_code == 0, lenient.output
    assert f"read {len(lines)} = kept {len(lines) - 1} + rejected 1" in lenient.output
    reject = json.loads((tmp_path / "p" / "rejects.jsonl").read_text().splitlines()[0])
    assert (reject["file"], reject["line"]) == (str(behaviors), 5)


def test_eval_command_prints_table_and_rejects_unknown_baseline(tmp_path: Path) -> None:
    work = f"paths.work_dir={tmp_path / 'run'}"
    assert newsrec_here("run", "data.synth.scale=tiny", "stages=[synth,prepare]", work).exit_code == 0
    result = newsrec_here("eval", "--baseline", "popularity", "--baseline", "oracle", "data.synth.scale=tiny", work)
    assert result.exit_code == 0, result.output
    assert "| popularity | warm |" in result.stdout and "| oracle | all |" in result.stdout
    assert "AUC lift / oracle's" in result.stdout
    elsewhere = newsrec_here("eval", "--baseline", "oracle", "data.synth.scale=tiny", work,
                             f"eval.oracle_dir={tmp_path / 'none'}", f"eval.output_dir={tmp_path / 'eval-none'}")
    assert elsewhere.exit_code == 0 and "oracle: left out, no oracle for split 'dev'" in elsewhere.stdout
    bad = newsrec_here("eval", "--baseline", "clairvoyant", "data.synth.scale=tiny", work)
    assert bad.exit_code == 2 and "unknown baseline(s) ['clairvoyant']" in bad.stdout


def test_job_scripts_call_the_same_core(tmp_path: Path) -> None:
    repo = Path(__file__).resolve().parents[1]
    out = tmp_path / "raw"
    result = run([sys.executable, str(repo / "jobs" / "prepare_data.py"), "synth", "--quiet", "--scale",
                             "tiny", "--out", str(out)], timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads((out / "synth_stats.json").read_text())["impressions"] == 3000
