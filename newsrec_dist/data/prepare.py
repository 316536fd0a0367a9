"""``newsrec data prepare``: MIND TSV files → the Parquet dataset every later stage reads.

Layout of the prepared directory::

    news.parquet                              one row per news id (union of the splits' news.tsv)
    behaviors/split=<split>/part-0.parquet    Hive-partitioned: pyarrow, pandas and Spark read the split
    rejects.jsonl                             every rejected row: file, line, reason, text
    summary.json                              per file: read = kept + rejected, reasons, unknown ids
    manifest.json                             input hashes, config, row counts (a matching re-run is a no-op)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from newsrec_dist.data import schema
from newsrec_dist.data.reader import FileSummary, NewsRegistry, RejectSink, iter_behaviors, read_news
from newsrec_dist.io import Manifest, atomic_dir, atomic_write_text, is_up_to_date, read_manifest, sha256_file
from newsrec_dist.progress import progress_bar

NEWS_FILE = "news.parquet"
BEHAVIORS_DIR = "behaviors"


@dataclass(frozen=True)
class PrepareResult:
    out_dir: Path
    skipped: bool
    summary: dict[str, Any]


def split_inputs(raw_dir: Path, splits: list[str]) -> dict[str, dict[str, Path]]:
    """``{split: {"news": path, "behaviors": path}}``, with a clear error for a missing file."""
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
    """Validate and convert; skipped when ``out_dir`` was made from identical inputs and options."""
    inputs = split_inputs(raw_dir, splits)
    hashes = {f"{split}/{kind}": sha256_file(path) for split, files in inputs.items() for kind, path in files.items()}
    config = {"splits": list(splits), "strict": strict}
    if is_up_to_date(out_dir, "prepare", hashes, config):
        return PrepareResult(Path(out_dir), True, json.loads((Path(out_dir) / "summary.json").read_text()))
    with atomic_dir(Path(out_dir)) as work:
        summary = _convert(inputs, work, strict, show_progress)
        atomic_write_text(work / "summary.json", json.dumps(summary, indent=2))
        rows = {"news": summary["news_rows"]} | {f"behaviors/{s}": summary["behaviors_rows"][s] for s in splits}
        Manifest(stage="prepare", inputs=hashes, config=config, rows=rows).write(work)
    return PrepareResult(Path(out_dir), False, summary)


def _convert(inputs: dict[str, dict[str, Path]], work: Path, strict: bool, show_progress: bool) -> dict[str, Any]:
    files: list[FileSummary] = []
    with open(work / "rejects.jsonl", "w", encoding="utf-8") as rejects:
        sink = RejectSink(rejects, strict)
        news = _news_table(inputs, sink, files)
        pq.write_table(news, work / NEWS_FILE)
        news_ids = news["news_id"].combine_chunks()
        behaviors_rows = {}
        for split, paths in inputs.items():
            summary = FileSummary(path=str(paths["behaviors"]))
            behaviors_rows[split] = _write_behaviors(paths["behaviors"], work, split, sink, summary, news_ids,
                                                     show_progress)
            files.append(summary)
    return {
        "files": [f.as_dict() for f in files],
        "news_rows": news.num_rows,
        "behaviors_rows": behaviors_rows,
        "rows_read": sum(f.read for f in files),
        "rows_kept": sum(f.kept for f in files),
        "rows_rejected": sum(f.rejected for f in files),
    }


def _news_table(inputs: dict[str, dict[str, Path]], sink: RejectSink, files: list[FileSummary]) -> pa.Table:
    registry = NewsRegistry()
    tables = []
    for paths in inputs.values():
        table, summary = read_news(paths["news"], sink, registry)
        tables.append(table)
        files.append(summary)
    return pa.concat_tables(tables)


def _write_behaviors(
    path: Path, work: Path, split: str, sink: RejectSink, summary: FileSummary, news_ids: pa.Array,
    show_progress: bool,
) -> int:
    target = work / BEHAVIORS_DIR / f"split={split}" / "part-0.parquet"
    target.parent.mkdir(parents=True)
    rows = 0
    with pq.ParquetWriter(target, schema.BEHAVIORS_SCHEMA) as writer, \
            progress_bar(f"prepare {split} behaviors (rows)", total=None, enabled=show_progress) as advance:
        for batch in iter_behaviors(path, sink, summary, split in schema.LABELED_SPLITS, news_ids):
            writer.write_batch(batch)
            rows += batch.num_rows
            advance(batch.num_rows)
    return rows


def read_behaviors(prepared_dir: Path, split: str) -> pa.Table:
    """One split of the prepared behaviors (the partition column is dropped)."""
    path = Path(prepared_dir) / BEHAVIORS_DIR / f"split={split}"
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no prepared behaviors for split {split!r}; run `newsrec data prepare`")
    return pq.read_table(path, schema=schema.BEHAVIORS_SCHEMA)


def read_news_table(prepared_dir: Path) -> pa.Table:
    path = Path(prepared_dir) / NEWS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no prepared news; run `newsrec data prepare`")
    return pq.read_table(path)


def prepared_rows(prepared_dir: Path) -> dict[str, int]:
    manifest = read_manifest(prepared_dir)
    return dict(manifest["rows"]) if manifest else {}
