"""Validating MIND reader: hand-written bad rows, strict mode, unknown ids, block boundaries, fuzz.

Every case writes a real TSV file under ``tmp_path`` and runs the real reader; rejects go to a real
JSON-lines handle that the test parses back.
"""

from __future__ import annotations

import functools
import io
import json
import os
import tempfile
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from newsrec_dist.data import reader
from newsrec_dist.data.prepare import prepare
from newsrec_dist.data.reader import (
    DataValidationError,
    FileSummary,
    NewsRegistry,
    RejectSink,
    iter_behaviors,
    iter_line_blocks,
    read_news,
)
from newsrec_dist.data.schema import MIND_TIME_FORMAT, NEWS_COLUMNS

T = "11/15/2019 8:55:22 AM"
COLUMNS_8 = "expected 8 tab-separated columns"
COLUMNS_5 = "expected 5 tab-separated columns"
LABELED_REASON = "impressions must be space-separated N123-0/N123-1 tokens (labels required in this split)"
UNLABELED_REASON = "impressions must be space-separated news ids without labels (test split)"
TIME_REASON = "time must be a real date like 11/15/2019 8:55:22 AM"
HISTORY_REASON = "history must be space-separated news ids"


# ----------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------


def news_row(nid: str = "N1", category: str = "news", sub: str = "world", title: str = "A title",
             abstract: str = "An abstract", url: str = "https://x.invalid/N1",
             title_entities: str = "[]", abstract_entities: str = "[]") -> str:
    return "\t".join([nid, category, sub, title, abstract, url, title_entities, abstract_entities])


def beh_row(iid: str = "1", uid: str = "U1", time: str = T, history: str = "N1 N2",
            impressions: str = "N1-1 N2-0") -> str:
    return "\t".join([iid, uid, time, history, impressions])


def write(path: Path, lines: list[str] | list[bytes], trailing_newline: bool = True, eol: bytes = b"\n") -> Path:
    raw = [line if isinstance(line, bytes) else line.encode("utf-8") for line in lines]
    data = eol.join(raw) + (eol if trailing_newline and raw else b"")
    path.write_bytes(data)
    return path


@dataclass
class Result:
    table: pa.Table
    summary: FileSummary
    rejects: list[dict]


def parse_rejects(handle: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in handle.getvalue().splitlines()]


def assert_accounting(result: Result, n_lines: int) -> None:
    s = result.summary
    assert s.read == n_lines
    assert s.read == s.kept + s.rejected
    assert len(result.rejects) == s.rejected
    assert sum(s.reasons.values()) == s.rejected
    lines = [r["line"] for r in result.rejects]
    assert len(set(lines)) == len(lines)
    assert all(1 <= line <= n_lines for line in lines)
    assert all(r["file"] == s.path for r in result.rejects)


def run_news(path: Path, n_lines: int | None = None, registry: NewsRegistry | None = None) -> Result:
    handle = io.StringIO()
    table, summary = read_news(path, RejectSink(handle, strict=False), registry or NewsRegistry())
    result = Result(table, summary, parse_rejects(handle))
    if n_lines is not None:
        assert_accounting(result, n_lines)
        assert table.num_rows == summary.kept - summary.notes["merged_with_other_split"]
    return result


def run_behaviors(path: Path, n_lines: int | None = None, labeled: bool = True,
                  news_ids: tuple[str, ...] = ("N1", "N2", "N3")) -> Result:
    handle = io.StringIO()
    summary = FileSummary(path=str(path))
    batches = list(iter_behaviors(path, RejectSink(handle, strict=False), summary, labeled,
                                  pa.array(list(news_ids), pa.string())))
    table = pa.Table.from_batches(batches, schema=reader.schema.BEHAVIORS_SCHEMA)
    result = Result(table, summary, parse_rejects(handle))
    if n_lines is not None:
        assert_accounting(result, n_lines)
        assert table.num_rows == summary.kept
    return result


def only_reject(result: Result) -> dict:
    assert len(result.rejects) == 1, result.rejects
    return result.rejects[0]


@pytest.fixture
def small_blocks(monkeypatch: pytest.MonkeyPatch):
    """Make the reader read files in blocks of ``n`` bytes (the real function, smaller blocks).

    ``iter_line_blocks`` binds ``BLOCK_BYTES`` as a default argument at import time, so
    patching the constant alone would have no effect; the readers look the function up at call time.
    """
    original = reader.iter_line_blocks

    def use(n: int) -> None:
        monkeypatch.setattr(reader, "iter_line_blocks", functools.partial(original, block_bytes=n))

    return use


# ----------------------------------------------------------------------------------------------
# news.tsv hand cases
# ----------------------------------------------------------------------------------------------


def valid_news_lines(n: int) -> list[str]:
    return [news_row(nid=f"N{i}", url=f"https://x.invalid/N{i}") for i in range(1, n + 1)]


NEWS_CASES = [
    # (bad line text, exact reason)
    ("\t".join(["N9", "news", "world", "t", "a", "u", "[]"]), f"{COLUMNS_8}, found 7"),
    ("\t".join(["N9", "news", "world", "t", "a", "u", "[]", "[]", "extra"]), f"{COLUMNS_8}, found 9"),
    ("N9 news world t a u [] []", f"{COLUMNS_8}, found 1"),
    ("", f"{COLUMNS_8}, empty line"),
    (news_row(nid="X9"), "news_id must look like N123"),
    (news_row(nid="n9"), "news_id must look like N123"),
    (news_row(nid="N9 "), "news_id must look like N123"),
    (news_row(nid="N"), "news_id must look like N123"),
    (news_row(nid=""), "news_id must look like N123"),
    (news_row(nid="N9", category=""), "category is empty or has whitespace"),
    (news_row(nid="N9", category="news politics"), "category is empty or has whitespace"),
    (news_row(nid="N9", sub=""), "subcategory is empty or has whitespace"),
    (news_row(nid="N9", title=""), "title is empty"),
    (news_row(nid="N9", title="   "), "title is empty"),
    (news_row(nid="N9", title_entities="[{"),
     "title_entities is not valid JSON (Expecting property name enclosed in double quotes at char 2)"),
    (news_row(nid="N9", abstract_entities='[{"Label": "x"'),
     "abstract_entities is not valid JSON (Expecting ',' delimiter at char 14)"),
    (news_row(nid="N9", title_entities='{"Label": "x"}'), "title_entities must be a JSON list of entity objects"),
    (news_row(nid="N9", abstract_entities="[1, 2]"), "abstract_entities must be a JSON list of entity objects"),
    (news_row(nid="N9", abstract_entities='"text"'), "abstract_entities must be a JSON list of entity objects"),
    (news_row(nid="N9", title_entities="null"), "title_entities must be a JSON list of entity objects"),
    # Found by review: these used to crash read_news (RecursionError / int digit-limit ValueError).
    (news_row(nid="N9", title_entities="[" * 50_000),
     "title_entities is not valid JSON (too large or too deeply nested)"),
    (news_row(nid="N9", abstract_entities='[{"x": ' + "7" * 5000 + "}]"),
     "abstract_entities is not valid JSON (too large or too deeply nested)"),
]


@pytest.mark.parametrize(("bad", "reason"), NEWS_CASES, ids=[r for _, r in NEWS_CASES])
def test_news_bad_row_rejected_with_reason_and_line(tmp_path: Path, bad: str, reason: str) -> None:
    lines = valid_news_lines(3)
    lines.insert(2, bad)  # line 3 of 4
    result = run_news(write(tmp_path / "news.tsv", lines), n_lines=4)
    reject = only_reject(result)
    assert reject["line"] == 3
    assert reject["reason"] == reason
    assert reject["text"] == bad[: reader.MAX_REJECT_TEXT]
    assert result.table["news_id"].to_pylist() == ["N1", "N2", "N3"]


def test_news_valid_entities_and_values_kept_exactly(tmp_path: Path) -> None:
    entities = json.dumps([{"Label": "Ünïcode", "Type": "P", "OccurrenceOffsets": [0]}], ensure_ascii=False)
    row = news_row(nid="N42", category="sports", sub="golf", title="  Spaced  title ", abstract="",
                   url="", title_entities=entities, abstract_entities="")
    result = run_news(write(tmp_path / "news.tsv", [row]), n_lines=1)
    assert result.rejects == []
    assert result.table.to_pylist() == [dict(zip(NEWS_COLUMNS, row.split("\t")))]


def test_news_duplicate_id_names_first_line(tmp_path: Path) -> None:
    lines = [news_row(nid="N1"), news_row(nid="X"), news_row(nid="N2"), news_row(nid="N1", title="other"),
             news_row(nid="N2")]
    result = run_news(write(tmp_path / "news.tsv", lines), n_lines=5)
    by_line = {r["line"]: r["reason"] for r in result.rejects}
    assert by_line == {2: "news_id must look like N123", 4: "duplicate news_id N1 (first at line 1)",
                       5: "duplicate news_id N2 (first at line 3)"}
    assert result.table["title"].to_pylist() == ["A title", "A title"]  # the first N1 wins


def test_news_duplicate_of_rejected_row_is_kept(tmp_path: Path) -> None:
    lines = [news_row(nid="N1", title=""), news_row(nid="N1", title="second")]
    result = run_news(write(tmp_path / "news.tsv", lines), n_lines=2)
    assert [(r["line"], r["reason"]) for r in result.rejects] == [(1, "title is empty")]
    assert result.table["title"].to_pylist() == ["second"]


def test_news_duplicate_across_blocks(tmp_path: Path, small_blocks) -> None:
    lines = valid_news_lines(30) + [news_row(nid="N7")]
    small_blocks(64)  # a row is ~60 bytes: every block holds at most one line
    result = run_news(write(tmp_path / "news.tsv", lines), n_lines=31)
    assert [(r["line"], r["reason"]) for r in result.rejects] == [(31, "duplicate news_id N7 (first at line 7)")]


def test_news_known_ids_are_merged_not_rejected(tmp_path: Path) -> None:
    registry = NewsRegistry()
    lines = valid_news_lines(4)
    first = run_news(write(tmp_path / "train.tsv", [lines[1], lines[3]]), n_lines=2, registry=registry)
    assert first.table["news_id"].to_pylist() == ["N2", "N4"]
    result = run_news(write(tmp_path / "news.tsv", lines), n_lines=4, registry=registry)
    assert result.rejects == []
    assert result.summary.kept == 4
    assert result.summary.notes["merged_with_other_split"] == 2
    assert result.table["news_id"].to_pylist() == ["N1", "N3"]


def test_news_repeated_across_splits_with_other_content_is_rejected(tmp_path: Path) -> None:
    registry = NewsRegistry()
    train = tmp_path / "train.tsv"
    run_news(write(train, [news_row(nid="N5", title="Original title")]), n_lines=1, registry=registry)
    result = run_news(write(tmp_path / "dev.tsv", [news_row(nid="N6"), news_row(nid="N5", title="Edited title")]),
                      n_lines=2, registry=registry)
    assert [(r["line"], r["reason"]) for r in result.rejects] == [
        (2, f"news_id N5 already read from {train}:1 with different content")]
    assert result.table["news_id"].to_pylist() == ["N6"]


def test_news_invalid_utf8_line(tmp_path: Path) -> None:
    lines: list[bytes] = [news_row(nid="N1").encode(), b"N2\tnews\tworld\tbad \xff\xfe title\ta\tu\t[]\t[]",
                          news_row(nid="N3", title="caf\u00e9 \u2603").encode()]
    result = run_news(write(tmp_path / "news.tsv", lines), n_lines=3)
    reject = only_reject(result)
    assert (reject["line"], reject["reason"]) == (2, "not valid UTF-8")
    assert result.table["title"].to_pylist() == ["A title", "caf\u00e9 \u2603"]


def test_news_crlf_and_missing_final_newline(tmp_path: Path) -> None:
    path = write(tmp_path / "news.tsv", valid_news_lines(3), trailing_newline=False, eol=b"\r\n")
    result = run_news(path, n_lines=3)
    assert result.rejects == []
    assert result.table["abstract_entities"].to_pylist() == ["[]", "[]", "[]"]  # no "\r" left behind


def test_empty_file_reads_nothing(tmp_path: Path) -> None:
    path = tmp_path / "news.tsv"
    path.write_bytes(b"")
    result = run_news(path, n_lines=0)
    assert result.table.num_rows == 0
    assert result.table.schema.names == list(NEWS_COLUMNS)


def test_trailing_blank_line_is_a_rejected_row(tmp_path: Path) -> None:
    path = tmp_path / "news.tsv"
    path.write_bytes((news_row() + "\n\n").encode())
    reject = only_reject(run_news(path, n_lines=2))
    assert (reject["line"], reject["reason"]) == (2, f"{COLUMNS_8}, empty line")


# ----------------------------------------------------------------------------------------------
# behaviors.tsv hand cases
# ----------------------------------------------------------------------------------------------


def valid_beh_lines(n: int, labeled: bool = True) -> list[str]:
    impressions = "N1-1 N2-0" if labeled else "N1 N2"
    return [beh_row(iid=str(i), uid=f"U{i}", impressions=impressions) for i in range(1, n + 1)]


BEH_CASES = [
    # (bad line text, labeled split?, exact reason)
    ("\t".join(["9", "U9", T, "N1"]), True, f"{COLUMNS_5}, found 4"),
    ("\t".join(["9", "U9", T, "N1", "N1-1", "x"]), True, f"{COLUMNS_5}, found 6"),
    ("", True, f"{COLUMNS_5}, empty line"),
    ("   ", True, f"{COLUMNS_5}, found 1"),
    (beh_row(iid="abc"), True, "impression_id must be an integer"),
    (beh_row(iid="-9"), True, "impression_id must be an integer"),
    (beh_row(iid="9.0"), True, "impression_id must be an integer"),
    (beh_row(iid=""), True, "impression_id must be an integer"),
    (beh_row(iid=" 9"), True, "impression_id must be an integer"),
    (beh_row(iid="1" * 19), True, "impression_id must be an integer"),
    (beh_row(iid="9", uid="u9"), True, "user_id must look like U123"),
    (beh_row(iid="9", uid="U"), True, "user_id must look like U123"),
    (beh_row(iid="9", uid="U9x"), True, "user_id must look like U123"),
    (beh_row(iid="9", uid=""), True, "user_id must look like U123"),
    (beh_row(iid="9", time="13/45/2019 1:00:00 AM"), True, TIME_REASON),
    (beh_row(iid="9", time="11/15/2019 8:55:22"), True, TIME_REASON),
    (beh_row(iid="9", time="11/15/2019 13:55:22 PM"), True, TIME_REASON),
    (beh_row(iid="9", time="2019-11-15 08:55:22"), True, TIME_REASON),
    (beh_row(iid="9", time=""), True, TIME_REASON),
    (beh_row(iid="9", time="02/30/2019 1:00:00 AM"), True, TIME_REASON),  # strptime alone rolls over to 3/2
    (beh_row(iid="9", time="11/15/2019 8:55:22 am"), True, TIME_REASON),
    (beh_row(iid="9", time=" 11/15/2019 8:55:22 AM"), True, TIME_REASON),
    (beh_row(iid="9", history="N1  N2"), True, HISTORY_REASON),
    (beh_row(iid="9", history="N1,N2"), True, HISTORY_REASON),
    (beh_row(iid="9", history=" N1"), True, HISTORY_REASON),
    (beh_row(iid="9", history="N1 "), True, HISTORY_REASON),
    (beh_row(iid="9", history="N1-1"), True, HISTORY_REASON),
    (beh_row(iid="9", history="U1"), True, HISTORY_REASON),
    (beh_row(iid="9", impressions="N1-2"), True, LABELED_REASON),
    (beh_row(iid="9", impressions="N1-1 N2-2"), True, LABELED_REASON),
    (beh_row(iid="9", impressions="N1 N2"), True, LABELED_REASON),
    (beh_row(iid="9", impressions="N1-1 N2"), True, LABELED_REASON),
    (beh_row(iid="9", impressions="N1-1  N2-0"), True, LABELED_REASON),
    (beh_row(iid="9", impressions=""), True, LABELED_REASON),
    (beh_row(iid="9", impressions="N1-1 N2-0 "), True, LABELED_REASON),
    (beh_row(iid="9", impressions="N1-1"), False, UNLABELED_REASON),
    (beh_row(iid="9", impressions="N1 N2-0"), False, UNLABELED_REASON),
    (beh_row(iid="9", impressions=""), False, UNLABELED_REASON),
    (beh_row(iid="9", impressions="N1-"), False, UNLABELED_REASON),
]


@pytest.mark.parametrize(("bad", "labeled", "reason"), BEH_CASES,
                         ids=[f"{i}-{r[:30]}" for i, (_, _, r) in enumerate(BEH_CASES)])
def test_behaviors_bad_row_rejected_with_reason_and_line(tmp_path: Path, bad: str, labeled: bool,
                                                         reason: str) -> None:
    lines = valid_beh_lines(4, labeled)
    lines.insert(3, bad)  # line 4 of 5
    result = run_behaviors(write(tmp_path / "behaviors.tsv", lines), n_lines=5, labeled=labeled)
    reject = only_reject(result)
    assert reject["line"] == 4
    assert reject["reason"] == reason
    assert reject["text"] == bad
    assert result.table["impression_id"].to_pylist() == [1, 2, 3, 4]


def test_behaviors_first_failing_check_wins(tmp_path: Path) -> None:
    bad = beh_row(iid="x", uid="bad", time="bad", history="bad", impressions="bad")
    lines = valid_beh_lines(1) + [bad, beh_row(iid="2", uid="bad", time="bad")]
    result = run_behaviors(write(tmp_path / "behaviors.tsv", lines), n_lines=3)
    assert [(r["line"], r["reason"]) for r in result.rejects] == [
        (2, "impression_id must be an integer"), (3, "user_id must look like U123")]


def test_behaviors_valid_values_exact(tmp_path: Path) -> None:
    lines = [
        beh_row(iid="7", uid="U100", time="1/5/2019 1:02:03 PM", history="", impressions="N1-0 N3-1 N2-0"),
        beh_row(iid="0", uid="U0", time="12/31/2019 12:00:00 AM", history="N3", impressions="N9-1"),
        beh_row(iid="123456789012345678", uid="U5", time=T, history="N1 N2 N1", impressions="N2-1"),
    ]
    result = run_behaviors(write(tmp_path / "behaviors.tsv", lines), n_lines=3)
    assert result.rejects == []
    assert result.table.to_pylist() == [
        {"impression_id": 7, "user_id": "U100", "time": datetime(2019, 1, 5, 13, 2, 3), "history": [],
         "impressions": ["N1", "N3", "N2"], "labels": [0, 1, 0]},
        {"impression_id": 0, "user_id": "U0", "time": datetime(2019, 12, 31, 0, 0, 0), "history": ["N3"],
         "impressions": ["N9"], "labels": [1]},
        {"impression_id": 123456789012345678, "user_id": "U5", "time": datetime(2019, 11, 15, 8, 55, 22),
         "history": ["N1", "N2", "N1"], "impressions": ["N2"], "labels": [1]},
    ]


def test_behaviors_unlabeled_test_split_has_null_labels(tmp_path: Path) -> None:
    lines = valid_beh_lines(2, labeled=False) + [beh_row(iid="3", history="", impressions="N3")]
    result = run_behaviors(write(tmp_path / "behaviors.tsv", lines), n_lines=3, labeled=False)
    assert result.rejects == []
    assert result.table["labels"].to_pylist() == [None, None, None]
    assert result.table["impressions"].to_pylist() == [["N1", "N2"], ["N1", "N2"], ["N3"]]
    assert result.table["history"].to_pylist() == [["N1", "N2"], ["N1", "N2"], []]


def test_behaviors_crlf_accepted_and_stripped(tmp_path: Path) -> None:
    lines = [beh_row(iid="1", history="", impressions="N1-0 N2-1"), beh_row(iid="2", history="N3",
                                                                           impressions="N3-1")]
    path = write(tmp_path / "behaviors.tsv", lines, eol=b"\r\n")
    result = run_behaviors(path, n_lines=2)
    assert result.rejects == []
    assert result.table["impressions"].to_pylist() == [["N1", "N2"], ["N3"]]
    assert result.table["labels"].to_pylist() == [[0, 1], [1]]
    assert result.table["history"].to_pylist() == [[], ["N3"]]


def test_behaviors_invalid_utf8(tmp_path: Path) -> None:
    lines: list[bytes] = [beh_row(iid="1").encode(), b"2\tU2\t" + T.encode() + b"\t\xc3\x28\tN1-1",
                          b"\xed\xa0\x80", beh_row(iid="4").encode()]
    result = run_behaviors(write(tmp_path / "behaviors.tsv", lines), n_lines=4)
    assert [(r["line"], r["reason"]) for r in result.rejects] == [(2, "not valid UTF-8"), (3, "not valid UTF-8")]
    assert result.table["impression_id"].to_pylist() == [1, 4]


def test_behaviors_duplicate_impression_id_within_file(tmp_path: Path) -> None:
    lines = valid_beh_lines(3) + [beh_row(iid="2", uid="U77"), beh_row(iid="3"), beh_row(iid="5")]
    result = run_behaviors(write(tmp_path / "behaviors.tsv", lines), n_lines=6)
    assert [(r["line"], r["reason"]) for r in result.rejects] == [(4, "duplicate impression_id 2 (first at line 2)"),
                                                                  (5, "duplicate impression_id 3 (first at line 3)")]
    assert result.table["user_id"].to_pylist() == ["U1", "U2", "U3", "U1"]


@pytest.mark.parametrize("block_bytes", [1, 7, 50, 120, 1 << 20])
def test_behaviors_duplicate_impression_id_across_blocks(tmp_path: Path, small_blocks, block_bytes: int) -> None:
    lines = valid_beh_lines(20) + [beh_row(iid="3", uid="U99"), "bad", beh_row(iid="21"), beh_row(iid="21")]
    small_blocks(block_bytes)
    result = run_behaviors(write(tmp_path / "behaviors.tsv", lines), n_lines=24)
    assert [(r["line"], r["reason"]) for r in result.rejects] == [
        (21, "duplicate impression_id 3 (first at line 3)"), (22, f"{COLUMNS_5}, found 1"),
        (24, "duplicate impression_id 21 (first at line 23)")]
    assert result.table["impression_id"].to_pylist() == list(range(1, 22))


@pytest.mark.parametrize("block_bytes", [1, 45, 1 << 20])
def test_rejected_row_does_not_shadow_later_valid_id(tmp_path: Path, small_blocks, block_bytes: int) -> None:
    """Regression: a rejected row's id (or the "0" placeholder of an unparsable one) used to make a
    later valid row with that id a "duplicate" -- but only when both fell in the same block."""
    lines = ["garbage", beh_row(iid="0"), beh_row(iid="5", uid="bad"), beh_row(iid="5"), beh_row(iid="5")]
    small_blocks(block_bytes)
    result = run_behaviors(write(tmp_path / "behaviors.tsv", lines), n_lines=5)
    assert [(r["line"], r["reason"]) for r in result.rejects] == [
        (1, f"{COLUMNS_5}, found 1"), (3, "user_id must look like U123"),
        (5, "duplicate impression_id 5 (first at line 4)")]
    assert result.table["impression_id"].to_pylist() == [0, 5]


@pytest.mark.parametrize("block_bytes", [1, 2, 3, 5, 8, 13, 64, 1 << 20])
@pytest.mark.parametrize("trailing_newline", [True, False])
def test_line_blocks_number_lines_across_blocks(tmp_path: Path, block_bytes: int, trailing_newline: bool) -> None:
    lines = ["a", "", "bc\r", "déf", "", "g" * 20, "h\r", "\r", "i"]
    path = tmp_path / "f.tsv"
    path.write_bytes("\n".join(lines).encode() + (b"\n" if trailing_newline else b""))
    numbers, texts, blocks = [], [], 0
    for block, bad in iter_line_blocks(path, block_bytes=block_bytes):
        assert bad == []
        numbers += block.numbers.tolist()
        texts += block.lines.to_pylist()
        blocks += 1
    assert numbers == list(range(1, len(lines) + 1))
    assert texts == [line.removesuffix("\r") for line in lines]
    if block_bytes <= 8:
        assert blocks > 3


def test_results_do_not_depend_on_block_size(tmp_path: Path, small_blocks) -> None:
    lines = [beh_row(iid=str(i % 13), uid=f"U{i}" if i % 5 else "x", history="N1" * (i % 3 == 1),
                     impressions="N2-1" if i % 7 else "N2") for i in range(40)]
    path = write(tmp_path / "behaviors.tsv", lines)
    reference = run_behaviors(path, n_lines=40)
    for block_bytes in (1, 33, 100, 333):
        small_blocks(block_bytes)
        result = run_behaviors(path, n_lines=40)
        assert result.rejects == reference.rejects
        assert result.table.equals(reference.table)


# ----------------------------------------------------------------------------------------------
# strict mode and unknown ids
# ----------------------------------------------------------------------------------------------


def test_strict_news_raises_at_first_bad_row(tmp_path: Path) -> None:
    lines = valid_news_lines(3) + [news_row(nid="N9", title=""), news_row(nid="bad")]
    path = write(tmp_path / "news.tsv", lines)
    with pytest.raises(DataValidationError) as info:
        read_news(path, RejectSink(None, strict=True), NewsRegistry())
    assert str(info.value) == f"{path}:4: title is empty"


def test_strict_behaviors_raises_at_first_bad_row_in_later_block(tmp_path: Path, small_blocks) -> None:
    lines = valid_beh_lines(10) + [beh_row(iid="11", time="11/15/2019 8:55:22"), "junk"]
    path = write(tmp_path / "behaviors.tsv", lines)
    small_blocks(100)
    summary = FileSummary(path=str(path))
    with pytest.raises(DataValidationError) as info:
        list(iter_behaviors(path, RejectSink(None, strict=True), summary, True, pa.array(["N1"])))
    assert str(info.value) == f"{path}:11: {TIME_REASON}"


def test_strict_valid_file_does_not_raise(tmp_path: Path) -> None:
    path = write(tmp_path / "behaviors.tsv", valid_beh_lines(5))
    summary = FileSummary(path=str(path))
    rows = sum(b.num_rows for b in iter_behaviors(path, RejectSink(None, strict=True), summary, True,
                                                  pa.array(["N1"])))
    assert rows == summary.kept == summary.read == 5


def test_unknown_ids_counted_and_rows_kept(tmp_path: Path) -> None:
    lines = [
        beh_row(iid="1", history="N1 N9", impressions="N2-1 N8-0 N7-0"),
        beh_row(iid="2", history="", impressions="N1-1"),
        beh_row(iid="3", history="N9 N9", impressions="N2-0 N1-1"),
        beh_row(iid="4", history="N2", impressions="N6-1"),
    ]
    result = run_behaviors(write(tmp_path / "behaviors.tsv", lines), n_lines=4, news_ids=("N1", "N2"))
    assert result.rejects == []
    assert result.table.num_rows == 4
    notes = result.summary.notes
    assert notes["unknown_history_ids"] == 3
    assert notes["rows_with_unknown_history_ids"] == 2
    assert notes["unknown_impressions_ids"] == 3
    assert notes["rows_with_unknown_impressions_ids"] == 2


def test_unknown_ids_counted_across_blocks(tmp_path: Path, small_blocks) -> None:
    lines = [beh_row(iid=str(i), history="N5 N1", impressions="N5-1 N1-0") for i in range(1, 11)]
    small_blocks(120)
    result = run_behaviors(write(tmp_path / "behaviors.tsv", lines), n_lines=10, news_ids=("N1",))
    notes = result.summary.notes
    assert (notes["unknown_history_ids"], notes["rows_with_unknown_history_ids"]) == (10, 10)
    assert (notes["unknown_impressions_ids"], notes["rows_with_unknown_impressions_ids"]) == (10, 10)


# ----------------------------------------------------------------------------------------------
# Fuzz: valid rows mixed with corrupted ones, through prepare()
# ----------------------------------------------------------------------------------------------

FIELD_TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\t\n\r"),
                     max_size=12)
ANY_LINE_TEXT = st.text(alphabet=st.one_of(st.sampled_from("\t -N0123456789U/:AMP\u00a0\u3000é"),
                                           st.characters(blacklist_categories=("Cs",),
                                                         blacklist_characters="\n\r")),
                        max_size=60)
NEWS_IDS = st.integers(1, 40).map(lambda i: f"N{i}")


@dataclass(frozen=True)
class GenLine:
    raw: bytes
    valid: dict | None  # expected output row when the line is one of the generated valid rows


@st.composite
def times(draw) -> tuple[str, datetime]:
    moment = draw(st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2030, 12, 31)))
    moment = moment.replace(microsecond=0)
    hour12 = moment.hour % 12 or 12
    text = f"{moment.month}/{moment.day}/{moment.year} {hour12}:{moment.minute:02d}:{moment.second:02d} " \
           f"{'AM' if moment.hour < 12 else 'PM'}"
    assert datetime.strptime(text, MIND_TIME_FORMAT) == moment
    return text, moment


@st.composite
def behavior_fields(draw, iid: int, labeled: bool) -> tuple[list[str], dict]:
    time_text, moment = draw(times())
    history = draw(st.lists(NEWS_IDS, max_size=5))
    candidates = draw(st.lists(NEWS_IDS, min_size=1, max_size=5))
    labels = draw(st.lists(st.integers(0, 1), min_size=len(candidates), max_size=len(candidates)))
    user = f"U{draw(st.integers(0, 10**6))}"
    impressions = " ".join(f"{n}-{lab}" if labeled else n for n, lab in zip(candidates, labels))
    fields = [str(iid), user, time_text, " ".join(history), impressions]
    row = {"impression_id": iid, "user_id": user, "time": moment, "history": history,
           "impressions": candidates, "labels": labels if labeled else None}
    return fields, row


@st.composite
def news_fields(draw, nid: str) -> tuple[list[str], dict]:
    entity = st.fixed_dictionaries({"Label": FIELD_TEXT, "Confidence": st.floats(0, 1)})
    entities = st.one_of(st.just(""), st.just("[]"),
                         st.lists(entity, max_size=2).map(lambda v: json.dumps(v, ensure_ascii=False)))
    fields = [nid, draw(st.sampled_from(["news", "sports", "lifestyle"])), draw(st.sampled_from(["a", "b_c"])),
              draw(FIELD_TEXT) + "T" + draw(FIELD_TEXT), draw(FIELD_TEXT), draw(FIELD_TEXT),
              draw(entities), draw(entities)]
    return fields, dict(zip(NEWS_COLUMNS, fields))


@st.composite
def corrupt(draw, fields: list[str]) -> bytes:
    """A corrupted variant of a row (which may, by chance, still be valid)."""
    fields = list(fields)
    kind = draw(st.sampled_from(["drop", "extra", "truncate", "swap", "replace", "insert", "random", "empty",
                                 "bytes", "spaces"]))
    if kind == "drop":
        del fields[draw(st.integers(0, len(fields) - 1))]
    elif kind == "extra":
        fields.insert(draw(st.integers(0, len(fields))), draw(FIELD_TEXT))
    elif kind == "truncate":
        i = draw(st.integers(0, len(fields) - 1))
        fields[i] = fields[i][: draw(st.integers(0, max(len(fields[i]) - 1, 0)))]
    elif kind == "swap":
        i, j = draw(st.lists(st.integers(0, len(fields) - 1), min_size=2, max_size=2, unique=True))
        fields[i], fields[j] = fields[j], fields[i]
    elif kind == "replace":
        fields[draw(st.integers(0, len(fields) - 1))] = draw(ANY_LINE_TEXT)
    elif kind == "insert":
        i = draw(st.integers(0, len(fields) - 1))
        at = draw(st.integers(0, len(fields[i])))
        fields[i] = fields[i][:at] + draw(st.sampled_from(["\t", " ", "  ", "\u00a0", "\u2028", "\x00", "-"])) \
            + fields[i][at:]
    elif kind == "random":
        return draw(ANY_LINE_TEXT).encode()
    elif kind == "empty":
        return b""
    elif kind == "spaces":
        return draw(st.sampled_from([b" ", b"\t\t\t\t", b"\t" * 7, b" \t \t \t \t "]))
    elif kind == "bytes":
        raw = "\t".join(fields).encode()
        at = draw(st.integers(0, len(raw)))
        return raw[:at] + draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x80\x80", b"\xf8\x88"])) \
            + raw[at:]
    return "\t".join(fields).encode()


def _pick_id(draw, index: int, n: int, own_base: int, shared_base: int, share_one_in: int) -> int:
    """An id of the row's own, or (one time in ``share_one_in``) one shared with another row of the file."""
    if draw(st.integers(1, share_one_in)) == 1:
        return shared_base + draw(st.integers(0, n - 1))
    return own_base + index


@st.composite
def behaviors_file(draw, labeled: bool) -> list[GenLine]:
    """Valid rows have ids 9xxxxxx; corrupted rows 8xxxxxx, or sometimes a valid row's id (so a
    rejected row must not shadow it, and one valid by chance makes a later valid one a duplicate)."""
    n = draw(st.integers(0, 25))
    lines = []
    for index in range(n):
        if draw(st.booleans()):
            iid = _pick_id(draw, index, n, 9_000_000, 9_000_000, 4)
            fields, row = draw(behavior_fields(iid, labeled))
            lines.append(GenLine("\t".join(fields).encode(), row))
        else:
            iid = _pick_id(draw, index, n, 8_000_000, 9_000_000, 2)
            fields, _ = draw(behavior_fields(iid, draw(st.booleans())))
            lines.append(GenLine(draw(corrupt(fields)), None))
    return lines


@st.composite
def news_file(draw) -> list[GenLine]:
    n = draw(st.integers(0, 15))
    lines = []
    for index in range(n):
        if draw(st.booleans()):
            fields, row = draw(news_fields(f"N{_pick_id(draw, index, n, 900, 900, 4)}"))
            lines.append(GenLine("\t".join(fields).encode(), row))
        else:
            fields, _ = draw(news_fields(f"N{_pick_id(draw, index, n, 800, 900, 2)}"))
            lines.append(GenLine(draw(corrupt(fields)), None))
    return lines


def first_field(generated: GenLine) -> str:
    return generated.raw.decode("utf-8").removesuffix("\r").split("\t")[0]


def file_bytes(lines: list[GenLine], crlf: list[bool], trailing_newline: bool) -> bytes:
    raw = [g.raw + (b"\r" if c and not g.raw.endswith(b"\r") else b"") for g, c in zip(lines, crlf)]
    data = b"".join(line + b"\n" for line in raw)
    if raw and not trailing_newline and raw[-1] != b"":
        data = data[:-1]
    return data


# CI runs FUZZ_CASES seeded cases; NEWSREC_FUZZ_CASES raises the count for the long run (docs/testing.md).
FUZZ_CASES = int(os.environ.get("NEWSREC_FUZZ_CASES", "500"))
FUZZ_SEED = 20261203
FUZZ_TALLY: Counter[str] = Counter()


def test_fuzz_prepare_accounts_for_every_row() -> None:
    """Every generated file's rows are read, kept or rejected with a reason, FUZZ_CASES cases from a fixed seed."""
    FUZZ_TALLY.clear()
    check_prepare_accounts_for_every_row()
    print(f"fuzz: {FUZZ_TALLY['cases']} cases (seed {FUZZ_SEED}), {FUZZ_TALLY['rows']} rows read = "
          f"{FUZZ_TALLY['kept']} kept + {FUZZ_TALLY['rejected']} rejected, 0 crashes")
    assert FUZZ_TALLY["cases"] >= FUZZ_CASES
    assert FUZZ_TALLY["rows"] == FUZZ_TALLY["kept"] + FUZZ_TALLY["rejected"] and FUZZ_TALLY["rejected"] > 0


@seed(FUZZ_SEED)
@given(
    news=news_file(),
    labeled=st.booleans(),
    data=st.data(),
    block_bytes=st.sampled_from([1, 150, 1 << 20, 1 << 20]),  # one line a block .. one block
)
@settings(max_examples=FUZZ_CASES, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
def check_prepare_accounts_for_every_row(news: list[GenLine], labeled: bool, data: st.DataObject,
                                         block_bytes: int) -> None:
    behaviors = data.draw(behaviors_file(labeled))
    news_crlf = data.draw(st.lists(st.booleans(), min_size=len(news), max_size=len(news)))
    beh_crlf = data.draw(st.lists(st.booleans(), min_size=len(behaviors), max_size=len(behaviors)))
    trailing = data.draw(st.booleans())
    split = "train" if labeled else "test"
    with tempfile.TemporaryDirectory() as tmp, pytest.MonkeyPatch.context() as patch:
        patch.setattr(reader, "iter_line_blocks", functools.partial(iter_line_blocks, block_bytes=block_bytes))
        raw_dir, out_dir = Path(tmp) / "raw", Path(tmp) / "prepared"
        (raw_dir / split).mkdir(parents=True)
        news_path, beh_path = raw_dir / split / "news.tsv", raw_dir / split / "behaviors.tsv"
        news_path.write_bytes(file_bytes(news, news_crlf, trailing))
        beh_path.write_bytes(file_bytes(behaviors, beh_crlf, trailing))

        result = prepare(raw_dir, out_dir, [split], strict=False, show_progress=False)

        assert not result.skipped
        summary = json.loads((out_dir / "summary.json").read_text())
        assert summary == result.summary
        files = {f["path"]: f for f in summary["files"]}
        assert set(files) == {str(news_path), str(beh_path)}
        # JSON lines split on "\n" only: texts may hold U+2028 and friends, which str.splitlines splits on.
        with open(out_dir / "rejects.jsonl", encoding="utf-8", newline="") as handle:
            rejects = [json.loads(line) for line in handle]
        assert len(rejects) == summary["rows_rejected"]
        for path, lines in ((news_path, news), (beh_path, behaviors)):
            f = files[str(path)]
            assert f["read"] == len(lines)
            assert f["read"] == f["kept"] + f["rejected"]
            assert sum(f["reasons"].values()) == f["rejected"]
            mine = [r for r in rejects if r["file"] == str(path)]
            assert len(mine) == f["rejected"]
            numbers = [r["line"] for r in mine]
            assert len(set(numbers)) == len(numbers)
            assert all(1 <= n <= len(lines) for n in numbers)
            for r in mine:
                try:
                    expected_text = lines[r["line"] - 1].raw.decode("utf-8")
                except UnicodeDecodeError:
                    assert r["reason"] == "not valid UTF-8"
                else:
                    assert r["text"] == expected_text[: reader.MAX_REJECT_TEXT]
        assert summary["rows_read"] == len(news) + len(behaviors)
        assert summary["rows_kept"] + summary["rows_rejected"] == summary["rows_read"]
        FUZZ_TALLY.update(cases=1, rows=summary["rows_read"], kept=summary["rows_kept"],
                          rejected=summary["rows_rejected"])

        news_table = pq.read_table(out_dir / "news.parquet")
        assert news_table.num_rows == files[str(news_path)]["kept"] == summary["news_rows"]
        kept_news = {row["news_id"]: row for row in news_table.to_pylist()}
        assert len(kept_news) == news_table.num_rows
        rejected_news = {r["line"]: r["reason"] for r in rejects if r["file"] == str(news_path)}
        first_kept_line: dict[str, int] = {}
        for number, generated in enumerate(news, start=1):
            if number not in rejected_news:
                nid = first_field(generated)
                assert nid not in first_kept_line, f"line {number}: duplicate news id {nid} kept"
                first_kept_line[nid] = number
            if generated.valid is None:
                continue
            nid = generated.valid["news_id"]
            if number in rejected_news:  # a valid row is rejected only as a duplicate of a kept one
                assert rejected_news[number] == f"duplicate news_id {nid} (first at line {first_kept_line[nid]})"
            else:
                assert kept_news[nid] == generated.valid
        assert set(kept_news) == set(first_kept_line)

        table = pq.read_table(out_dir / "behaviors" / f"split={split}" / "part-0.parquet")
        assert table.num_rows == files[str(beh_path)]["kept"] == summary["behaviors_rows"][split]
        kept = {row["impression_id"]: row for row in table.to_pylist()}
        assert len(kept) == table.num_rows  # impression ids are unique in the output
        rejected_beh = {r["line"]: r["reason"] for r in rejects if r["file"] == str(beh_path)}
        kept_ids: set[int] = set()
        for number, generated in enumerate(behaviors, start=1):
            if number not in rejected_beh:
                iid = int(first_field(generated))
                assert iid not in kept_ids, f"line {number}: duplicate impression id {iid} kept"
                kept_ids.add(iid)
                if generated.valid is not None:
                    assert kept[iid] == generated.valid
            elif generated.valid is not None:  # rejected only as a duplicate of an earlier kept row
                iid = generated.valid["impression_id"]
                assert iid in kept_ids
                assert rejected_beh[number].startswith(f"duplicate impression_id {iid} (first at line ")
        assert set(kept) == kept_ids
        for row in kept.values():
            assert row["impressions"], "a kept impression has at least one candidate"
            if labeled:
                assert len(row["labels"]) == len(row["impressions"])
                assert set(row["labels"]) <= {0, 1}
            else:
                assert row["labels"] is None

        known = set(kept_news)
        f = files[str(beh_path)]
        for column in ("history", "impressions"):
            unknown_per_row = [sum(n not in known for n in row[column]) for row in kept.values()]
            # An empty file yields no block, and then the counters are absent from the summary.
            assert f.get(f"unknown_{column}_ids", 0) == sum(unknown_per_row)
            assert f.get(f"rows_with_unknown_{column}_ids", 0) == sum(1 for u in unknown_per_row if u)


def test_reject_keeps_text_of_invalid_utf8_and_escapes_line_separators(tmp_path: Path) -> None:
    lines: list[bytes] = [beh_row(iid="1").encode(), b"2\tU2\t" + T.encode() + b"\tN1 \xff\tN1-1",
                          beh_row(iid="3", uid="U\u2028x").encode()]
    path = write(tmp_path / "behaviors.tsv", lines)
    handle = io.StringIO()
    list(iter_behaviors(path, RejectSink(handle, strict=False), FileSummary(path=str(path)), True,
                        pa.array(["N1"], pa.string())))
    raw_records = handle.getvalue().split("\n")[:-1]
    assert len(raw_records) == 2 and all(record.isascii() for record in raw_records)
    records = [json.loads(record) for record in raw_records]
    assert records[0]["text"] == "2\tU2\t" + T + "\tN1 \ufffd\tN1-1"
    assert records[1]["line"] == 3 and "\u2028" in records[1]["text"]


def test_empty_behaviors_file_still_reports_unknown_counters(tmp_path: Path) -> None:
    result = run_behaviors(write(tmp_path / "behaviors.tsv", []), n_lines=0)
    assert result.summary.notes == {"unknown_history_ids": 0, "rows_with_unknown_history_ids": 0,
                                    "unknown_impressions_ids": 0, "rows_with_unknown_impressions_ids": 0}


def test_seen_impression_ids_runs_match_a_dict_reference() -> None:
    """The merged sorted runs answer like a plain dict of first lines, over many blocks."""
    rng = np.random.default_rng(3)
    seen, reference = reader.SeenImpressionIds(), {}
    line = 1
    for _ in range(40):
        ids = rng.integers(0, 500, size=int(rng.integers(1, 30)))
        numbers = np.arange(line, line + len(ids))
        line += len(ids)
        expected = np.array([reference.get(int(i), -1) for i in ids])
        assert np.array_equal(seen.first_lines(ids), expected)
        fresh = [index for index, value in enumerate(ids.tolist()) if value not in reference
                 and value not in ids[:index].tolist()]
        for index in fresh:
            reference[int(ids[index])] = int(numbers[index])
        seen.add(ids[fresh], numbers[fresh])
    assert len(seen.runs) <= 8
