"""``prepare``: a tiny synthetic MIND dataset → Parquet, row accounting, manifest, no-op re-runs,
missing inputs and atomic output on failure. Real files on disk, no mocks."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from newsrec_dist.config import SynthConfig
from newsrec_dist.data.prepare import prepare, prepared_rows, read_behaviors, read_news_table
from newsrec_dist.data.reader import DataValidationError
from newsrec_dist.data.schema import BEHAVIORS_SCHEMA, MIND_TIME_FORMAT, NEWS_COLUMNS
from newsrec_dist.data.synth import generate

SPLITS = ["train", "dev"]


@pytest.fixture(scope="module")
def raw_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "raw"
    generate(SynthConfig(scale="tiny"), out, show_progress=False)
    return out


@pytest.fixture(scope="module")
def prepared(raw_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("prepared") / "prepared"
    result = prepare(raw_dir, out, SPLITS, strict=False, show_progress=False)
    return out, result


@pytest.fixture
def raw_copy(raw_dir: Path, tmp_path: Path) -> Path:
    """A private copy of the raw data that a test may modify."""
    copy = tmp_path / "raw"
    for split in SPLITS:
        (copy / split).mkdir(parents=True)
        for name in ("news.tsv", "behaviors.tsv"):
            shutil.copyfile(raw_dir / split / name, copy / split / name)
    return copy


def tsv_lines(path: Path) -> list[list[str]]:
    return [line.split("\t") for line in path.read_text(encoding="utf-8").split("\n") if line]


def parse_behaviors_tsv(path: Path) -> dict[int, dict]:
    rows = {}
    for iid, user, time, history, impressions in tsv_lines(path):
        tokens = impressions.split(" ")
        rows[int(iid)] = {
            "impression_id": int(iid), "user_id": user, "time": datetime.strptime(time, MIND_TIME_FORMAT),
            "history": history.split(" ") if history else [],
            "impressions": [t.rsplit("-", 1)[0] for t in tokens], "labels": [int(t.rsplit("-", 1)[1]) for t in tokens],
        }
    return rows


def snapshot(directory: Path) -> dict[str, tuple[int, int, int]]:
    """Relative path → (mtime_ns, inode, size) of every file under ``directory``."""
    out = {}
    for path in sorted(directory.rglob("*")):
        if path.is_file():
            stat = path.stat()
            out[str(path.relative_to(directory))] = (stat.st_mtime_ns, stat.st_ino, stat.st_size)
    return out


# ----------------------------------------------------------------------------------------------
# Output contents
# ----------------------------------------------------------------------------------------------


def test_prepare_writes_all_files(prepared) -> None:
    out, result = prepared
    assert not result.skipped
    assert result.out_dir == out
    files = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()}
    assert files == {"news.parquet", "rejects.jsonl", "summary.json", "manifest.json",
                     "behaviors/split=train/part-0.parquet", "behaviors/split=dev/part-0.parquet"}
    assert (out / "rejects.jsonl").read_text() == ""  # the synthetic data is valid
    assert not [p for p in out.parent.iterdir() if p.name.startswith((".tmp-", ".old-"))]


def test_behaviors_partitioned_and_readable(prepared, raw_dir: Path) -> None:
    out, _ = prepared
    expected = {split: len(tsv_lines(raw_dir / split / "behaviors.tsv")) for split in SPLITS}
    assert all(count > 0 for count in expected.values())

    table = ds.dataset(out / "behaviors", format="parquet", partitioning="hive").to_table()
    assert set(table.schema.names) == set(BEHAVIORS_SCHEMA.names) | {"split"}
    counts = table.group_by("split").aggregate([("impression_id", "count")]).to_pylist()
    assert {c["split"]: c["impression_id_count"] for c in counts} == expected

    whole = pq.read_table(out / "behaviors")
    assert "split" in whole.schema.names and whole.num_rows == sum(expected.values())

    frame = pd.read_parquet(out / "behaviors")
    assert "split" in frame.columns
    assert frame["split"].astype(str).value_counts().to_dict() == expected
    assert not frame.duplicated(["split", "impression_id"]).any()  # ids are unique within a split (as in MIND)

    for split in SPLITS:
        one = read_behaviors(out, split)
        assert one.schema == BEHAVIORS_SCHEMA
        assert one.num_rows == expected[split]
    assert prepared_rows(out) == {"news": 1500, **{f"behaviors/{s}": n for s, n in expected.items()}}


@pytest.mark.parametrize("split", SPLITS)
def test_list_columns_round_trip(prepared, raw_dir: Path, split: str) -> None:
    out, _ = prepared
    parsed = parse_behaviors_tsv(raw_dir / split / "behaviors.tsv")
    table = read_behaviors(out, split)
    rows = table.to_pylist()
    assert [r["impression_id"] for r in rows] == list(parsed)  # file order is kept
    for row in rows:
        assert row == parsed[row["impression_id"]]
        assert len(row["labels"]) == len(row["impressions"]) > 0
        assert set(row["labels"]) <= {0, 1}
    # cold-start users (empty history field in the raw text) survive as empty lists; the generator makes some
    raw_lines = (raw_dir / split / "behaviors.tsv").read_text().splitlines()
    empty = sum(line.split("\t")[3] == "" for line in raw_lines)
    assert sum(r["history"] == [] for r in rows) == empty > 0
    # spot check against the raw text itself, not only the test's parser
    first = raw_lines[0].split("\t")
    assert " ".join(f"{n}-{lab}" for n, lab in zip(rows[0]["impressions"], rows[0]["labels"])) == first[4]
    assert " ".join(rows[0]["history"]) == first[3]


def test_news_parquet_is_union_of_splits(prepared, raw_dir: Path) -> None:
    out, result = prepared
    news = read_news_table(out)
    assert news.schema.names == list(NEWS_COLUMNS)
    by_id: dict[str, list[str]] = {}
    for split in SPLITS:
        for fields in tsv_lines(raw_dir / split / "news.tsv"):
            by_id.setdefault(fields[0], fields)
    assert news.num_rows == len(by_id) == result.summary["news_rows"]
    for row in news.to_pylist()[:50]:
        assert list(row.values()) == by_id[row["news_id"]]


def test_summary_accounting(prepared, raw_dir: Path) -> None:
    out, result = prepared
    summary = json.loads((out / "summary.json").read_text())
    assert summary == result.summary
    files = {Path(f["path"]).relative_to(raw_dir).as_posix(): f for f in summary["files"]}
    assert set(files) == {f"{s}/{k}.tsv" for s in SPLITS for k in ("news", "behaviors")}
    for name, f in files.items():
        assert f["read"] == len(tsv_lines(raw_dir / name))
        assert f["read"] == f["kept"] + f["rejected"]
        assert f["rejected"] == 0 and f["reasons"] == {}
    assert summary["rows_read"] == sum(f["read"] for f in files.values())
    assert summary["rows_kept"] + summary["rows_rejected"] == summary["rows_read"]
    assert summary["rows_rejected"] == 0
    for split in SPLITS:
        b = files[f"{split}/behaviors.tsv"]
        assert summary["behaviors_rows"][split] == b["kept"]
        assert b["unknown_history_ids"] == 0 and b["unknown_impressions_ids"] == 0
    news_files = [files[f"{s}/news.tsv"] for s in SPLITS]
    assert summary["news_rows"] == sum(f["kept"] - f["merged_with_other_split"] for f in news_files)


def test_manifest_hashes_and_rows(prepared, raw_dir: Path) -> None:
    out, result = prepared
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["stage"] == "prepare"
    assert manifest["config"] == {"splits": SPLITS, "strict": False}
    expected = {f"{s}/{k}": hashlib.sha256((raw_dir / s / f"{k}.tsv").read_bytes()).hexdigest()
                for s in SPLITS for k in ("news", "behaviors")}
    assert manifest["inputs"] == expected
    assert manifest["rows"] == {"news": result.summary["news_rows"],
                                **{f"behaviors/{s}": result.summary["behaviors_rows"][s] for s in SPLITS}}
    assert re.fullmatch(r"[0-9a-f]{64}", manifest["fingerprint"])


# ----------------------------------------------------------------------------------------------
# Re-runs
# ----------------------------------------------------------------------------------------------


def test_rerun_is_a_noop_and_a_changed_byte_reruns(raw_copy: Path, tmp_path: Path) -> None:
    out = tmp_path / "prepared"
    first = prepare(raw_copy, out, SPLITS, show_progress=False)
    assert not first.skipped
    before = snapshot(out)

    again = prepare(raw_copy, out, SPLITS, show_progress=False)
    assert again.skipped
    assert again.summary == first.summary
    assert snapshot(out) == before  # nothing rewritten: same mtimes, same inodes

    # Change one byte of one input (the row stays valid): the first letter of a train news title.
    path = raw_copy / "train" / "news.tsv"
    data = bytearray(path.read_bytes())
    fields = data[: data.index(b"\n")].decode().split("\t")
    offset = len("\t".join(fields[:3])) + 1  # first character of the title
    data[offset] = ord("Q") if data[offset] != ord("Q") else ord("Z")
    path.write_bytes(bytes(data))
    new_title = chr(data[offset]) + fields[3][1:]

    changed = prepare(raw_copy, out, SPLITS, show_progress=False)
    assert not changed.skipped
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["inputs"]["train/news"] == hashlib.sha256(bytes(data)).hexdigest()
    assert snapshot(out)["news.parquet"] != before["news.parquet"]
    news = read_news_table(out).to_pydict()
    titles = dict(zip(news["news_id"], news["title"]))
    assert titles[fields[0]] == new_title != fields[3]
    assert not [p for p in out.parent.iterdir() if p.name.startswith((".tmp-", ".old-"))]

    assert prepare(raw_copy, out, SPLITS, show_progress=False).skipped


def test_changed_options_rerun(raw_copy: Path, tmp_path: Path) -> None:
    out = tmp_path / "prepared"
    assert not prepare(raw_copy, out, SPLITS, show_progress=False).skipped
    assert not prepare(raw_copy, out, SPLITS, strict=True, show_progress=False).skipped
    assert prepare(raw_copy, out, SPLITS, strict=True, show_progress=False).skipped
    only_train = prepare(raw_copy, out, ["train"], strict=True, show_progress=False)
    assert not only_train.skipped
    assert sorted(p.name for p in (out / "behaviors").iterdir()) == ["split=train"]  # dev output is gone
    assert json.loads((out / "manifest.json").read_text())["config"] == {"splits": ["train"], "strict": True}


def test_deleted_manifest_reruns(raw_copy: Path, tmp_path: Path) -> None:
    out = tmp_path / "prepared"
    prepare(raw_copy, out, SPLITS, show_progress=False)
    (out / "manifest.json").unlink()
    assert not prepare(raw_copy, out, SPLITS, show_progress=False).skipped
    assert (out / "manifest.json").is_file()


# ----------------------------------------------------------------------------------------------
# Failures
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("missing", ["train/news.tsv", "dev/behaviors.tsv"])
def test_missing_input_names_path(raw_copy: Path, tmp_path: Path, missing: str) -> None:
    (raw_copy / missing).unlink()
    out = tmp_path / "prepared"
    with pytest.raises(FileNotFoundError, match=re.escape(str(raw_copy / missing))):
        prepare(raw_copy, out, SPLITS, show_progress=False)
    assert not out.exists()


def test_unknown_split_dir_missing(raw_copy: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=re.escape(str(raw_copy / "test" / "news.tsv"))):
        prepare(raw_copy, tmp_path / "prepared", ["train", "test"], show_progress=False)


def _break_last_dev_row(raw: Path) -> tuple[Path, int, str]:
    """Give dev/behaviors.tsv's last row a bad time: strict mode fails after the rest was written."""
    path = raw / "dev" / "behaviors.tsv"
    lines = path.read_text(encoding="utf-8").split("\n")
    assert lines[-1] == ""
    fields = lines[-2].split("\t")
    fields[2] = "13/45/2019 1:00:00 AM"
    lines[-2] = "\t".join(fields)
    path.write_text("\n".join(lines), encoding="utf-8")
    return path, len(lines) - 1, lines[-2]


def test_strict_failure_leaves_no_output(raw_copy: Path, tmp_path: Path) -> None:
    path, line, _ = _break_last_dev_row(raw_copy)
    parent = tmp_path / "outputs"
    parent.mkdir()
    (parent / "unrelated").write_text("keep me")
    before = sorted(os.listdir(parent))
    out = parent / "prepared"
    with pytest.raises(DataValidationError) as info:
        prepare(raw_copy, out, SPLITS, strict=True, show_progress=False)
    assert str(info.value) == f"{path}:{line}: time must be a real date like 11/15/2019 8:55:22 AM"
    assert not out.exists()
    assert sorted(os.listdir(parent)) == before  # no .tmp-* directory left behind


def test_strict_failure_keeps_previous_output(raw_copy: Path, tmp_path: Path) -> None:
    out = tmp_path / "prepared"
    prepare(raw_copy, out, SPLITS, strict=True, show_progress=False)
    before = snapshot(out)
    siblings = sorted(os.listdir(tmp_path))
    _break_last_dev_row(raw_copy)
    with pytest.raises(DataValidationError):
        prepare(raw_copy, out, SPLITS, strict=True, show_progress=False)
    assert snapshot(out) == before  # the previous complete artifact is untouched
    assert sorted(os.listdir(tmp_path)) == siblings


def test_lenient_run_records_the_bad_row(raw_copy: Path, tmp_path: Path) -> None:
    path, line, text = _break_last_dev_row(raw_copy)
    out = tmp_path / "prepared"
    result = prepare(raw_copy, out, SPLITS, strict=False, show_progress=False)
    rejects = [json.loads(x) for x in (out / "rejects.jsonl").read_text(encoding="utf-8").split("\n") if x]
    assert rejects == [{"file": str(path), "line": line,
                        "reason": "time must be a real date like 11/15/2019 8:55:22 AM", "text": text}]
    assert result.summary["rows_rejected"] == 1
    assert result.summary["behaviors_rows"]["dev"] == line - 1
    assert read_behaviors(out, "dev").num_rows == line - 1
    dev = next(f for f in result.summary["files"] if f["path"] == str(path))
    assert dev["reasons"] == {"time must be a real date like 11/15/2019 8:55:22 AM": 1}
    assert dev["read"] == line == dev["kept"] + dev["rejected"]


def test_prepared_schema_types(prepared) -> None:
    out, _ = prepared
    table = read_behaviors(out, "train")
    assert table.schema.field("time").type == pa.timestamp("s")
    assert table.schema.field("labels").type == pa.list_(pa.int8())


def test_resume_after_kill_skips_finished_units(tmp_path: Path) -> None:
    """kill -9 after the news unit: the re-run keeps news.parquet and equals an uninterrupted run."""
    raw = tmp_path / "raw"
    generate(SynthConfig(scale="small"), raw, show_progress=False)
    reference = prepare(raw, tmp_path / "reference", SPLITS, show_progress=False)
    target = tmp_path / "prepared"
    progress = tmp_path / f".partial-{target.name}" / ".progress.json"
    process = subprocess.Popen([sys.executable, "-m", "newsrec_dist.cli", "data", "prepare", "--quiet",
                                "--raw", str(raw), "--out", str(target)], stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if progress.is_file() and "news" in json.loads(progress.read_text())["state"]:
            break
        time.sleep(0.002)
    assert process.poll() is None, "prepare finished before it could be killed"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    state = json.loads(progress.read_text())["state"]
    assert "news" in state and "behaviors/dev" not in state and not target.exists()
    news_stamp = (progress.parent / "news.parquet").stat().st_mtime_ns
    resumed = prepare(raw, target, SPLITS, show_progress=False)
    assert (target / "news.parquet").stat().st_mtime_ns == news_stamp, "the finished news unit was redone"
    assert resumed.summary == reference.summary
    for split in SPLITS:
        assert read_behaviors(target, split).equals(read_behaviors(tmp_path / "reference", split))
    assert not progress.parent.exists() and not (target / "rejects.parts").exists()
