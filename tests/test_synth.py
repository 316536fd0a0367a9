"""The MIND-format generator: counts, format, determinism, planted signal, resume after kill -9."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from newsrec_dist.config import SynthConfig
from newsrec_dist.data.prepare import prepare
from newsrec_dist.data.synth import SCALES, generate, resolve_scale
from newsrec_dist.io import PROGRESS_NAME
from newsrec_dist.eval.evaluate import run_baselines

TIME_FORMAT = "%m/%d/%Y %I:%M:%S %p"


def read_behaviors_tsv(path: Path) -> pd.DataFrame:
    frame = pd.read_csv(path, sep="\t", header=None, quoting=3, keep_default_na=False, dtype=str,
                        names=["impression_id", "user_id", "time", "history", "impressions"])
    frame["time"] = pd.to_datetime(frame["time"], format=TIME_FORMAT)
    return frame


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("synth") / "tiny"
    return out, generate(SynthConfig(scale="tiny"), out, show_progress=False)


def test_counts_match_the_requested_scale(tiny: tuple[Path, dict]) -> None:
    out, stats = tiny
    spec = SCALES["tiny"]
    train = read_behaviors_tsv(out / "train" / "behaviors.tsv")
    dev = read_behaviors_tsv(out / "dev" / "behaviors.tsv")
    news = pd.read_csv(out / "train" / "news.tsv", sep="\t", header=None, quoting=3, dtype=str)
    assert len(train) + len(dev) == spec.n_impressions == stats["impressions"]
    assert pd.concat([train, dev])["user_id"].nunique() == spec.n_users
    assert news[0].nunique() == len(news) == spec.n_news
    clicks = sum(token.endswith("-1") for row in pd.concat([train, dev])["impressions"] for token in row.split())
    assert clicks == stats["clicks"]
    assert abs(clicks / spec.n_impressions - spec.clicks_per_impression) < 0.1


def test_every_impression_has_a_click_and_a_non_click(tiny: tuple[Path, dict]) -> None:
    out, _ = tiny
    for split in ("train", "dev"):
        for row in read_behaviors_tsv(out / split / "behaviors.tsv")["impressions"]:
            labels = [token[-1] for token in row.split()]
            assert "1" in labels and "0" in labels, row
            ids = [token[:-2] for token in row.split()]
            assert len(ids) == len(set(ids)), "a candidate repeats inside one impression"


def test_train_dev_split_is_by_time(tiny: tuple[Path, dict]) -> None:
    out, _ = tiny
    train = read_behaviors_tsv(out / "train" / "behaviors.tsv")
    dev = read_behaviors_tsv(out / "dev" / "behaviors.tsv")
    assert train["time"].max() < dev["time"].min()
    assert list(train["impression_id"].astype(int)) == list(range(1, len(train) + 1))


def test_histories_reference_known_news_and_cold_users_exist(tiny: tuple[Path, dict]) -> None:
    out, stats = tiny
    news_ids = set(pd.read_csv(out / "train" / "news.tsv", sep="\t", header=None, quoting=3, dtype=str)[0])
    behaviors = pd.concat([read_behaviors_tsv(out / split / "behaviors.tsv") for split in ("train", "dev")])
    per_user = behaviors.drop_duplicates("user_id")["history"].str.split()
    lengths = per_user.map(lambda h: len(h) if isinstance(h, list) else 0)
    assert all(token in news_ids for history in per_user.dropna() for token in history)
    assert all(len(history) == len(set(history)) for history in per_user.dropna())
    assert abs((lengths <= 3).mean() - SynthConfig().cold_user_share) < 0.08
    assert abs((lengths <= 3).mean() - stats["short_history_user_share"]) < 1e-9


def test_output_is_valid_mind_with_zero_rejects(tiny: tuple[Path, dict], tmp_path: Path) -> None:
    out, stats = tiny
    result = prepare(out, tmp_path / "prepared", ["train", "dev"], strict=True, show_progress=False)
    assert result.summary["rows_rejected"] == 0
    assert sum(result.summary["behaviors_rows"].values()) == stats["impressions"]
    for entry in result.summary["files"]:
        assert entry.get("unknown_history_ids", 0) == 0 and entry.get("unknown_impressions_ids", 0) == 0


def test_same_seed_same_bytes_other_seed_differs(tiny: tuple[Path, dict], tmp_path: Path) -> None:
    out, _ = tiny
    again = tmp_path / "again"
    generate(SynthConfig(scale="tiny"), again, show_progress=False)
    other = tmp_path / "other"
    generate(SynthConfig(scale="tiny", seed=8), other, show_progress=False)
    for relative in ("train/behaviors.tsv", "dev/behaviors.tsv", "train/news.tsv"):
        assert (again / relative).read_bytes() == (out / relative).read_bytes()
    assert (other / "train/behaviors.tsv").read_bytes() != (out / "train/behaviors.tsv").read_bytes()


def test_rerun_with_same_config_is_a_no_op(tiny: tuple[Path, dict]) -> None:
    out, stats = tiny
    before = (out / "train" / "behaviors.tsv").stat().st_mtime_ns
    assert generate(SynthConfig(scale="tiny"), out, show_progress=False) == stats
    assert (out / "train" / "behaviors.tsv").stat().st_mtime_ns == before


def test_invalid_scale_and_counts_are_rejected() -> None:
    with pytest.raises(ValueError, match="unknown synth scale"):
        resolve_scale(SynthConfig(scale="huge"))
    with pytest.raises(ValueError, match="n_impressions must be >= n_users"):
        resolve_scale(SynthConfig(scale="tiny", n_users=10, n_impressions=5))


def test_planted_signal_content_beats_popularity_beats_random(tmp_path: Path) -> None:
    """The difficulty the brief asks for: popularity ~0.55-0.65 AUC, a content profile clearly above."""
    raw = tmp_path / "raw"
    generate(SynthConfig(scale="small"), raw, show_progress=False)
    prepare(raw, tmp_path / "prepared", ["train", "dev"], show_progress=False)
    payload = run_baselines(tmp_path / "prepared", tmp_path / "eval", ["random", "popularity", "category_profile"],
                            "dev", ["train", "dev"], 3, 10, 0, False)
    auc = {name: groups["all"]["auc"] for name, groups in payload["models"].items()}
    assert abs(auc["random"] - 0.5) < 0.03
    assert 0.53 <= auc["popularity"] <= 0.65
    assert auc["category_profile"] >= 0.65
    assert auc["category_profile"] >= auc["popularity"] + 0.05
    warm = payload["models"]["category_profile"]["warm"]["auc"]
    new = payload["models"]["category_profile"]["new"]["auc"]
    assert warm > new + 0.08, "history-based content signal must help warm users more than cold ones"


def test_resume_after_kill_matches_an_uninterrupted_run(tmp_path: Path) -> None:
    cfg = SynthConfig(scale="small", chunk_impressions=1500)
    reference = tmp_path / "reference"
    generate(cfg, reference, show_progress=False)
    target = tmp_path / "killed"
    command = [sys.executable, "-m", "newsrec_dist.cli", "data", "synth", "--quiet", "--scale", "small",
               "--out", str(target), "data.synth.chunk_impressions=1500"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    progress_file = tmp_path / f".partial-{target.name}" / PROGRESS_NAME
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if progress_file.is_file() and json.loads(progress_file.read_text())["state"]["next_chunk"] >= 3:
            break
        time.sleep(0.005)
    assert process.poll() is None, f"finished before it could be killed: {process.stderr.read()!r}"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not target.exists() and json.loads(progress_file.read_text())["state"]["next_chunk"] >= 3
    resumed = generate(replace(cfg), target, show_progress=False)
    for relative in ("train/behaviors.tsv", "dev/behaviors.tsv", "dev/news.tsv"):
        assert (target / relative).read_bytes() == (reference / relative).read_bytes(), relative
    assert resumed["impressions"] == SCALES["small"].n_impressions
    lines = (target / "train/behaviors.tsv").read_text().splitlines()
    assert len({line.split("\t")[0] for line in lines}) == len(lines)
    assert np.all(np.diff([int(line.split("\t")[0]) for line in lines]) == 1)
