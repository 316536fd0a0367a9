"""``newsrec data prepare``: MIND TSV files → the Parquet dataset every later stage reads.

Layout of the prepared directory::

    news.parquet                              one row per news id (union of the splits' news.tsv)
    behaviors/split=<split>/part-0.parquet    Hive-partitioned: pyarrow, pandas and Spark read the split
    rejects.jsonl                             every rejected row: file, line, reason, text
    summary.json                              per file: read = kept + rejected, reasons, unknown ids
    manifest.json                             input hashes, config, row counts (a matching re-run is a no-op)
"""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from newsrec_dist.data import schema
from newsrec_dist.data.reader import FileSummary, NewsRegistry, RejectSink, iter_behaviors, read_news
from newsrec_dist.io import Manifest, ResumableDir, atomic_write_text, is_up_to_date, read_manifest, sha256_file
from newsrec_dist.progress import progress_bar

NEWS_FILE = "news.parquet"
BEHAVIORS_DIR = "behaviors"
REJECTS_PARTS = "rejects.parts"


@dataclass(frozen=True)
class PrepareResult:
    out_dir: Path
    skipped: bool
    summary: dict[str, Any]


def _other_datasets(raw_dir: Path) -> str:
    """A hint naming the datasets beside a missing one (a scale given to `data synth` but not to the next verb)."""
    siblings = sorted(path.name for path in raw_dir.parent.glob("*") if path.is_dir()) if raw_dir.parent.is_dir() else []
    if not siblings:
        return " (make one with `newsrec data synth` or `newsrec data download`)"
    scales = [name.removeprefix("synth-") for name in siblings if name.startswith("synth-")]
    choice = f"data.synth.scale={scales[0]}" if scales else f"data.name={siblings[0]}"
    return f"; {raw_dir.parent} holds {', '.join(siblings)}: pick one with e.g. {choice}"


def split_inputs(raw_dir: Path, splits: list[str]) -> dict[str, dict[str, Path]]:
    """``{split: {"news": path, "behaviors": path}}``, with a clear error for a missing file."""
    if not Path(raw_dir).is_dir():
        raise FileNotFoundError(f"{raw_dir}: no such dataset directory{_other_datasets(Path(raw_dir))}")
    inputs = {}
    for split in splits:
        files = {kind: Path(raw_dir) / split / f"{kind}.tsv" for kind in ("news", "behaviors")}
        for path in files.values():
            if not path.is_file():
                raise FileNotFoundError(f"{path}: missing (expected MIND layout {raw_dir}/<split>/news.tsv, behaviors.tsv)")
        inputs[split] = files
    return inputs


def prepare(
    raw_dir: Path, out_dir: Path, splits: list[str], strict: bool = False, show_progress: bool = True
) -> PrepareResult:
    """Validate and convert; skipped when ``out_dir`` was made from identical inputs and options.

    Work proceeds in units (news, then each split's behaviors); a run killed mid-way resumes at the
    first unfinished unit. An error (e.g. a bad row in strict mode) leaves no partial output.
    """
    inputs = split_inputs(raw_dir, splits)
    hashes = {f"{split}/{kind}": sha256_file(path) for split, files in inputs.items() for kind, path in files.items()}
    config = {"splits": list(splits), "strict": strict}
    if is_up_to_date(out_dir, "prepare", hashes, config):
        return PrepareResult(Path(out_dir), True, json.loads((Path(out_dir) / "summary.json").read_text()))
    work = ResumableDir(Path(out_dir), Manifest(stage="prepare", inputs=hashes, config=config).fingerprint())
    try:
        units = _run_units(inputs, work, strict, show_progress)
    except Exception:
        work.discard()
        raise
    summary = _summarize(units)
    _merge_rejects(work.path)
    atomic_write_text(work.path / "summary.json", json.dumps(summary, indent=2))
    rows = {"news": summary["news_rows"]} | {f"behaviors/{s}": summary["behaviors_rows"][s] for s in splits}
    Manifest(stage="prepare", inputs=hashes, config=config, rows=rows).write(work.path)
    work.publish()
    return PrepareResult(Path(out_dir), False, summary)


def _run_units(
    inputs: dict[str, dict[str, Path]], work: ResumableDir, strict: bool, show_progress: bool
) -> dict[str, dict[str, Any]]:
    """Each unit's file summaries and row count, from the saved state or by running it."""
    units: dict[str, dict[str, Any]] = dict(work.state)
    (work.path / REJECTS_PARTS).mkdir(exist_ok=True)
    if "news" not in units:
        with _reject_sink(work.path, "news", strict) as sink:
            news, files = _news_table(inputs, sink)
        pq.write_table(news, work.path / NEWS_FILE)
        units["news"] = {"files": [f.as_dict() for f in files], "rows": news.num_rows}
        work.save(units)
    news_ids = pq.read_table(work.path / NEWS_FILE, columns=["news_id"])["news_id"].combine_chunks()
    for split, paths in inputs.items():
        if f"behaviors/{split}" in units:
            continue
        summary = FileSummary(path=str(paths["behaviors"]))
        with _reject_sink(work.path, f"behaviors-{split}", strict) as sink:
            rows = _write_behaviors(paths["behaviors"], work.path, split, sink, summary, news_ids, show_progress)
        units[f"behaviors/{split}"] = {"files": [summary.as_dict()], "rows": rows}
        work.save(units)
    return units


@contextlib.contextmanager
def _reject_sink(work: Path, unit: str, strict: bool) -> Iterator[RejectSink]:
    with open(work / REJECTS_PARTS / f"{unit}.jsonl", "w", encoding="utf-8") as handle:
        yield RejectSink(handle, strict)


def _merge_rejects(work: Path) -> None:
    """One ``rejects.jsonl`` in input order (news first, then behaviors by split)."""
    parts = work / REJECTS_PARTS
    with open(work / "rejects.jsonl", "wb") as merged:
        for part in sorted(parts.glob("news*.jsonl")) + sorted(parts.glob("behaviors-*.jsonl")):
            with open(part, "rb") as handle:
                shutil.copyfileobj(handle, merged)
    shutil.rmtree(parts)


def _summarize(units: dict[str, dict[str, Any]]) -> dict[str, Any]:
    files = [entry for unit in units.values() for entry in unit["files"]]
    return {
        "files": files,
        "news_rows": units["news"]["rows"],
        "behaviors_rows": {name.split("/", 1)[1]: unit["rows"] for name, unit in units.items() if name != "news"},
        "rows_read": sum(f["read"] for f in files),
        "rows_kept": sum(f["kept"] for f in files),
        "rows_rejected": sum(f["rejected"] for f in files),
    }


def _news_table(inputs: dict[str, dict[str, Path]], sink: RejectSink) -> tuple[pa.Table, list[FileSummary]]:
    registry = NewsRegistry()
    tables, files = [], []
    for paths in inputs.values():
        table, summary = read_news(paths["news"], sink, registry)
        tables.append(table)
        files.append(summary)
    return pa.concat_tables(tables), files


def _write_behaviors(
    path: Path, work: Path, split: str, sink: RejectSink, summary: FileSummary, news_ids: pa.Array,
    show_progress: bool,
) -> int:
    target = work / BEHAVIORS_DIR / f"split={split}" / "part-0.parquet"
    target.parent.mkdir(parents=True, exist_ok=True)  # a resumed unit overwrites its partial file
    rows = 0
    with pq.ParquetWriter(target, schema.BEHAVIORS_SCHEMA) as writer, \
            progress_bar(f"prepare {split} behaviors (rows)", total=None, enabled=show_progress) as advance:
        for batch in iter_behaviors(path, sink, summary, split in schema.LABELED_SPLITS, news_ids):
            writer.write_batch(batch)
            rows += batch.num_rows
            advance(batch.num_rows)
    return rows


def behaviors_path(prepared_dir: Path, split: str) -> Path:
    """Directory of one split's prepared behaviors, with a clear error when it is missing."""
    path = Path(prepared_dir) / BEHAVIORS_DIR / f"split={split}"
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no prepared behaviors for split {split!r}; run `newsrec data prepare`")
    return path


def read_behaviors(prepared_dir: Path, split: str) -> pa.Table:
    """One split of the prepared behaviors (the partition column is dropped)."""
    return pq.read_table(behaviors_path(prepared_dir, split), schema=schema.BEHAVIORS_SCHEMA)


def read_news_table(prepared_dir: Path) -> pa.Table:
    path = Path(prepared_dir) / NEWS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no prepared news; run `newsrec data prepare`")
    return pq.read_table(path)


def prepared_rows(prepared_dir: Path) -> dict[str, int]:
    manifest = read_manifest(prepared_dir)
    return dict(manifest["rows"]) if manifest else {}
