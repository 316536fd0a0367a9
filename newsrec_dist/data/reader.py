"""Validating reader for MIND's news.tsv and behaviors.tsv.

Every row is accounted for: it is kept, or written to a rejects file with its file, line number,
reason and text. ``strict`` turns the first bad row into a :class:`DataValidationError`.
Validation runs on Arrow arrays a block of lines at a time (regexes and parsing in Arrow's C++
kernels), so MIND-large's millions of rows are checked without a Python loop per row.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from newsrec_dist.data import schema

BLOCK_BYTES = 32 * 1024 * 1024
MAX_REJECT_TEXT = 2000


class DataValidationError(ValueError):
    """A bad input row in strict mode; the message names file, line and reason."""


@dataclass
class FileSummary:
    """Row accounting for one input file: read = kept + rejected."""

    path: str
    read: int = 0
    kept: int = 0
    rejected: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    notes: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "read": self.read, "kept": self.kept, "rejected": self.rejected,
                "reasons": dict(self.reasons), **self.notes}


class RejectSink:
    """Collects rejected rows into a JSON-lines file (or raises at the first one when strict)."""

    def __init__(self, handle: IO[str] | None, strict: bool) -> None:
        self.handle = handle
        self.strict = strict

    def reject(self, summary: FileSummary, lines: np.ndarray, reasons: list[str], texts: list[str]) -> None:
        if not len(lines):
            return
        if self.strict:
            raise DataValidationError(f"{summary.path}:{int(lines[0])}: {reasons[0]}")
        summary.rejected += len(lines)
        summary.reasons.update(reasons)
        if self.handle is None:
            return
        for line, reason, text in zip(lines.tolist(), reasons, texts):
            record = {"file": summary.path, "line": line, "reason": reason, "text": text[:MAX_REJECT_TEXT]}
            # ASCII escapes keep one record per line even for U+2028 and friends in untrusted text.
            self.handle.write(json.dumps(record, ensure_ascii=True) + "\n")


@dataclass
class LineBlock:
    """A block of lines from a file with their 1-based line numbers."""

    numbers: np.ndarray
    lines: pa.StringArray


def _decode_lines(raw_lines: list[bytes]) -> tuple[pa.StringArray, list[int]]:
    """Lines as Arrow strings, plus indices of lines that are not valid UTF-8.

    Such lines are rejected; they are kept with U+FFFD replacements so the reject shows their text.
    """
    binary = pa.array(raw_lines, type=pa.binary())
    try:
        return binary.cast(pa.string()), []
    except pa.ArrowInvalid:
        bad = []
        for index, raw in enumerate(raw_lines):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError:
                bad.append(index)
                raw_lines[index] = raw.decode("utf-8", "replace").encode("utf-8")
        return pa.array(raw_lines, type=pa.binary()).cast(pa.string()), bad


def iter_line_blocks(path: Path, block_bytes: int | None = None) -> Iterator[tuple[LineBlock, list[int]]]:
    """Blocks of lines (``\\n`` or ``\\r\\n``), each with line numbers and non-UTF-8 line indices."""
    first_line = 1
    carry = b""
    with open(path, "rb") as handle:
        while True:
            chunk = handle.read(block_bytes or BLOCK_BYTES)
            data = carry + chunk
            if not chunk:
                if data:
                    yield _block(data.split(b"\n"), first_line)
                return
            cut = data.rfind(b"\n")
            if cut < 0:
                carry = data
                continue
            carry = data[cut + 1:]
            raw_lines = data[:cut].split(b"\n")
            yield _block(raw_lines, first_line)
            first_line += len(raw_lines)


def _block(raw_lines: list[bytes], first_line: int) -> tuple[LineBlock, list[int]]:
    raw_lines = [raw[:-1] if raw.endswith(b"\r") else raw for raw in raw_lines]
    lines, bad_utf8 = _decode_lines(raw_lines)
    numbers = np.arange(first_line, first_line + len(raw_lines), dtype=np.int64)
    return LineBlock(numbers=numbers, lines=lines), bad_utf8


class RowChecker:
    """Applies named checks in order; a row's reason is the first check it fails."""

    def __init__(self, n_rows: int) -> None:
        self.reason: list[str | None] = [None] * n_rows
        self.ok = np.ones(n_rows, dtype=bool)

    def fail(self, failed: np.ndarray, reason: str) -> None:
        for index in np.flatnonzero(failed & self.ok).tolist():
            self.reason[index] = reason
        self.ok &= ~failed

    def fail_each(self, indices: list[int], reasons: list[str]) -> None:
        for index, reason in zip(indices, reasons):
            if self.ok[index]:
                self.reason[index] = reason
                self.ok[index] = False


def _mask(boolean_array: pa.Array) -> np.ndarray:
    return np.asarray(boolean_array.fill_null(False).to_numpy(zero_copy_only=False), dtype=bool)


def split_columns(block: LineBlock, bad_utf8: list[int], expected: int) -> tuple[RowChecker, list[pa.Array]]:
    """Split each line on tabs; rows with the wrong column count or bad encoding are marked."""
    checker = RowChecker(len(block.lines))
    checker.fail_each(bad_utf8, ["not valid UTF-8"] * len(bad_utf8))
    fields = pc.split_pattern(block.lines, "\t")
    counts = pc.list_value_length(fields).to_numpy()
    wrong = counts != expected
    for index in np.flatnonzero(wrong & checker.ok).tolist():
        what = "empty line" if block.lines[index].as_py() == "" else f"found {counts[index]}"
        checker.fail_each([index], [f"expected {expected} tab-separated columns, {what}"])
    # Pad short rows so column extraction is uniform; they are already rejected.
    padded = pc.if_else(pa.array(wrong), pa.scalar([""] * expected, pa.list_(pa.string())), fields)
    return checker, [pc.list_element(padded, position) for position in range(expected)]


def check_pattern(checker: RowChecker, column: pa.Array, pattern: str, reason: str) -> None:
    checker.fail(~_mask(pc.match_substring_regex(column, pattern)), reason)


def check_entities(checker: RowChecker, column: pa.Array, name: str) -> None:
    """Entity columns hold a JSON list of objects (or nothing); only non-trivial cells are parsed."""
    trivial = _mask(pc.is_in(column, value_set=pa.array(["", "[]"])))
    for index in np.flatnonzero(~trivial & checker.ok).tolist():
        text = column[index].as_py()
        try:
            value = json.loads(text)
        except json.JSONDecodeError as error:
            checker.fail_each([index], [f"{name} is not valid JSON ({error.msg} at char {error.pos})"])
            continue
        except (ValueError, RecursionError):  # e.g. a >4300-digit integer, or nesting too deep
            checker.fail_each([index], [f"{name} is not valid JSON (too large or too deeply nested)"])
            continue
        if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
            checker.fail_each([index], [f"{name} must be a JSON list of entity objects"])


def reject_failed(sink: RejectSink, summary: FileSummary, block: LineBlock, checker: RowChecker) -> np.ndarray:
    failed = np.flatnonzero(~checker.ok)
    texts = block.lines.take(pa.array(failed)).to_pylist()
    sink.reject(summary, block.numbers[failed], [checker.reason[i] or "" for i in failed.tolist()],
                [text or "" for text in texts])
    summary.read += len(block.lines)
    summary.kept += int(checker.ok.sum())
    return checker.ok


# ----------------------------------------------------------------------------------------------
# news.tsv
# ----------------------------------------------------------------------------------------------


@dataclass
class NewsRegistry:
    """News kept so far across the splits' news.tsv files (MIND repeats news in every split).

    A repeat with identical content is merged (counted, kept once); a repeat whose content differs
    is rejected, naming where the kept version came from.
    """

    origin: dict[str, tuple[str, int, int]] = field(default_factory=dict)  # id -> (file, line, content hash)

    def reject_conflicts(self, checker: RowChecker, ids: list[str], contents: list[str]) -> np.ndarray:
        """Among valid rows, reject conflicting repeats; returns the mask of identical repeats."""
        merged = np.zeros(len(ids), dtype=bool)
        conflicts, reasons = [], []
        for index in np.flatnonzero(checker.ok).tolist():
            if ids[index] not in self.origin:
                continue
            path, line, digest = self.origin[ids[index]]
            if digest == hash(contents[index]):
                merged[index] = True
            else:
                conflicts.append(index)
                reasons.append(f"news_id {ids[index]} already read from {path}:{line} with different content")
        checker.fail_each(conflicts, reasons)
        return merged & checker.ok

    def add(self, path: str, ids: list[str], contents: list[str], numbers: np.ndarray, rows: np.ndarray) -> None:
        for index in rows.tolist():
            self.origin[ids[index]] = (path, int(numbers[index]), hash(contents[index]))


def read_news(path: Path, sink: RejectSink, registry: NewsRegistry) -> tuple[pa.Table, FileSummary]:
    """Validated news rows of one file; ids already in ``registry`` are merged or rejected."""
    summary = FileSummary(path=str(path))
    tables = []
    first_line_of: dict[str, int] = {}
    merged_total = 0
    for block, bad_utf8 in iter_line_blocks(path):
        checker, columns = split_columns(block, bad_utf8, len(schema.NEWS_COLUMNS))
        news_id, category, subcategory, title = columns[:4]
        check_pattern(checker, news_id, schema.NEWS_ID_PATTERN, "news_id must look like N123")
        check_pattern(checker, category, schema.CATEGORY_PATTERN, "category is empty or has whitespace")
        check_pattern(checker, subcategory, schema.CATEGORY_PATTERN, "subcategory is empty or has whitespace")
        checker.fail(_mask(pc.equal(pc.utf8_trim_whitespace(title), "")), "title is empty")
        check_entities(checker, columns[6], "title_entities")
        check_entities(checker, columns[7], "abstract_entities")
        _check_duplicate_news(checker, news_id, block.numbers, first_line_of)
        ids, contents = news_id.to_pylist(), block.lines.to_pylist()
        merged = registry.reject_conflicts(checker, ids, contents)
        keep = reject_failed(sink, summary, block, checker)
        fresh = keep & ~merged
        registry.add(str(path), ids, contents, block.numbers, np.flatnonzero(fresh))
        merged_total += int(merged.sum())
        table = pa.table(dict(zip(schema.NEWS_COLUMNS, columns)), schema=schema.NEWS_SCHEMA)
        tables.append(table.filter(pa.array(fresh)))
    summary.notes["merged_with_other_split"] = merged_total
    return pa.concat_tables(tables) if tables else schema.NEWS_SCHEMA.empty_table(), summary


def _check_duplicate_news(
    checker: RowChecker, news_id: pa.Array, numbers: np.ndarray, first_line_of: dict[str, int]
) -> None:
    ids = news_id.to_pylist()
    duplicates, reasons = [], []
    for index in np.flatnonzero(checker.ok).tolist():
        first = first_line_of.setdefault(ids[index], int(numbers[index]))
        if first != numbers[index]:
            duplicates.append(index)
            reasons.append(f"duplicate news_id {ids[index]} (first at line {first})")
    checker.fail_each(duplicates, reasons)


# ----------------------------------------------------------------------------------------------
# behaviors.tsv
# ----------------------------------------------------------------------------------------------


@dataclass
class SeenImpressionIds:
    """Kept impression ids with the line each came from, as sorted runs that merge geometrically.

    Lookups cost one ``searchsorted`` per run and merges total O(n log n) over the file, so
    duplicate detection stays linear-ish at MIND-large's 15M ids instead of re-sorting every block.
    """

    runs: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)  # (sorted ids, their lines)

    def first_lines(self, ids: np.ndarray) -> np.ndarray:
        """Line where each id was kept, or -1."""
        found = np.full(len(ids), -1, dtype=np.int64)
        for run_ids, run_lines in self.runs:
            positions = np.minimum(np.searchsorted(run_ids, ids), len(run_ids) - 1)
            found = np.where(run_ids[positions] == ids, run_lines[positions], found)
        return found

    def reject_duplicates(self, checker: RowChecker, block_ids: np.ndarray, numbers: np.ndarray) -> None:
        """Among rows still valid, reject ids kept earlier in the file or earlier in this block."""
        rows = np.flatnonzero(checker.ok)
        ids = block_ids[rows]
        _, first_index, inverse = np.unique(ids, return_index=True, return_inverse=True)
        first_line = numbers[rows[first_index]][inverse]
        kept_line = self.first_lines(ids)
        first_line = np.where(kept_line >= 0, kept_line, first_line)
        duplicate = first_line != numbers[rows]
        checker.fail_each(rows[duplicate].tolist(), [
            f"duplicate impression_id {value} (first at line {line})"
            for value, line in zip(ids[duplicate].tolist(), first_line[duplicate].tolist())])

    def add(self, block_ids: np.ndarray, numbers: np.ndarray) -> None:
        if not len(block_ids):
            return
        order = np.argsort(block_ids, kind="stable")
        self.runs.append((block_ids[order], numbers[order]))
        while len(self.runs) > 1 and len(self.runs[-2][0]) <= 2 * len(self.runs[-1][0]):
            (ids_b, lines_b), (ids_a, lines_a) = self.runs.pop(), self.runs.pop()
            ids, lines = np.concatenate([ids_a, ids_b]), np.concatenate([lines_a, lines_b])
            order = np.argsort(ids, kind="stable")
            self.runs.append((ids[order], lines[order]))


def check_time(checker: RowChecker, time_text: pa.Array) -> pa.Array:
    """Parse MIND times; the day is compared with the text because strptime rolls 2/30 over to 3/2."""
    times = pc.strptime(time_text, format=schema.MIND_TIME_FORMAT, unit="s", error_is_null=True)
    shaped = _mask(pc.match_substring_regex(time_text, schema.MIND_TIME_PATTERN))
    day_text = pc.cast(pc.if_else(pa.array(shaped), pc.extract_regex(time_text, r"^\d+/(?P<day>\d+)/").field("day"),
                                  "0"), pa.int64())
    real_day = _mask(pc.equal(pc.day(times), day_text))
    checker.fail(~(shaped & real_day), "time must be a real date like 11/15/2019 8:55:22 AM")
    return times


def iter_behaviors(
    path: Path, sink: RejectSink, summary: FileSummary, labeled: bool, news_ids: pa.Array,
) -> Iterator[pa.RecordBatch]:
    """Validated behaviors as Arrow batches in the prepared schema; counts unknown news ids."""
    seen = SeenImpressionIds()
    for column in ("history", "impressions"):  # reported even when the file has no rows
        summary.notes.setdefault(f"unknown_{column}_ids", 0)
        summary.notes.setdefault(f"rows_with_unknown_{column}_ids", 0)
    pattern = schema.LABELED_IMPRESSIONS_PATTERN if labeled else schema.UNLABELED_IMPRESSIONS_PATTERN
    for block, bad_utf8 in iter_line_blocks(path):
        checker, (impression_id, user_id, time_text, history, impressions) = split_columns(
            block, bad_utf8, len(schema.BEHAVIORS_COLUMNS))
        check_pattern(checker, impression_id, schema.IMPRESSION_ID_PATTERN, "impression_id must be an integer")
        ids = pc.cast(pc.if_else(pa.array(checker.ok), impression_id, "0"), pa.int64()).to_numpy()
        check_pattern(checker, user_id, schema.USER_ID_PATTERN, "user_id must look like U123")
        times = check_time(checker, time_text)
        check_pattern(checker, history, schema.HISTORY_PATTERN, "history must be space-separated news ids")
        check_pattern(checker, impressions, pattern, _impressions_reason(labeled))
        # Last, among otherwise valid rows only: a rejected row's id (or the "0" placeholder of an
        # unparsable one) must not shadow a valid row, whatever the block boundaries.
        seen.reject_duplicates(checker, ids, block.numbers)
        keep = reject_failed(sink, summary, block, checker)
        seen.add(ids[keep], block.numbers[keep])
        batch = _behaviors_batch(keep, ids, user_id, times, history, impressions, labeled)
        _count_unknown(summary, batch, news_ids)
        yield batch


def _impressions_reason(labeled: bool) -> str:
    if labeled:
        return "impressions must be space-separated N123-0/N123-1 tokens (labels required in this split)"
    return "impressions must be space-separated news ids without labels (test split)"


def _split_tokens(column: pa.Array) -> pa.ListArray:
    nulled = pc.if_else(pc.equal(column, ""), pa.scalar(None, pa.string()), column)
    return pc.split_pattern(nulled, " ").fill_null(pa.scalar([], type=pa.list_(pa.string())))


def _behaviors_batch(
    keep: np.ndarray, ids: np.ndarray, user_id: pa.Array, times: pa.Array, history: pa.Array,
    impressions: pa.Array, labeled: bool,
) -> pa.RecordBatch:
    mask = pa.array(keep)
    tokens = _split_tokens(impressions.filter(mask))
    flat = tokens.flatten()
    if labeled:
        news = pc.utf8_slice_codeunits(flat, 0, -2)
        labels = pa.ListArray.from_arrays(tokens.offsets, pc.cast(pc.ends_with(flat, "-1"), pa.int8()))
        candidates = pa.ListArray.from_arrays(tokens.offsets, news)
    else:
        labels = pa.nulls(len(tokens), pa.list_(pa.int8()))
        candidates = tokens
    return pa.RecordBatch.from_arrays([
        pa.array(ids[keep], pa.int64()), user_id.filter(mask), times.filter(mask),
        _split_tokens(history.filter(mask)), candidates, labels,
    ], schema=schema.BEHAVIORS_SCHEMA)


def _count_unknown(summary: FileSummary, batch: pa.RecordBatch, news_ids: pa.Array) -> None:
    """History/impression ids absent from news.tsv are kept but counted and reported."""
    for column in ("history", "impressions"):
        lists = batch.column(column)
        unknown = ~_mask(pc.is_in(lists.flatten(), value_set=news_ids))
        rows = np.unique(pc.list_parent_indices(lists).to_numpy()[unknown])
        notes = summary.notes
        notes[f"unknown_{column}_ids"] = notes.get(f"unknown_{column}_ids", 0) + int(unknown.sum())
        notes[f"rows_with_unknown_{column}_ids"] = notes.get(f"rows_with_unknown_{column}_ids", 0) + len(rows)
