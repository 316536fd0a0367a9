"""report.html from untrusted text (news titles, categories, LLM output, config values): raw HTML is escaped,
links keep only http(s) and relative targets, images load only the report's own figures and data:image URIs.
The produced HTML is read back with html.parser, which decodes attributes the way a browser does."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

from newsrec_dist.eval.report import markdown_to_html

HOSTILE = [
    "[x](javascript:alert(1))",
    "[x](JaVaScRiPt:alert(1))",
    "[x](  javascript:alert(1))",
    '<a href="javascript:alert(1)">x</a>',
    "<script>alert(1)</script>",
    "<img src=x onerror=alert(1)>",
    "![t](http://evil.example/p.png)",
    "![t](data:text/html;base64,PHNjcmlwdD4=)",
    "[x](vbscript:msgbox)",
    "[x](data:text/html,...)",
    # the same, hidden from a naive scheme check: entities, tabs, escapes, references, autolinks
    "[x](javascript&#58;alert(1))",
    "[x](java&#x09;script:alert(1))",
    "[x](java\tscript:alert(1))",
    "[x](&#x6A;avascript:alert(1))",
    "[x](<javascript:alert(1)>)",
    "[x][hostile]",
    "<foo@evil.example>",
    "![t](//evil.example/p.png)",
    "![t](HTTPS://evil.example/p.png)",
    "![t](figures/../../secret.png)",
    "![t](data:image/svg+xml;base64,PHN2Zz48L3N2Zz4=)",
]
DEFINITIONS = "[hostile]: javascript:alert(1)\n"
SAFE_LINK = "[ok](https://example.org)"
OWN_FIGURE = "![chart](figures/x.png)"
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 16


class Tags(HTMLParser):
    """Every start tag with its attributes, values decoded as a browser decodes them."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    handle_startendtag = handle_starttag


def tags(document: str) -> list[tuple[str, dict[str, str | None]]]:
    parser = Tags()
    parser.feed(document)
    parser.close()
    return parser.tags


def scheme(url: str) -> str:
    """The scheme a browser sees: tabs and newlines anywhere and outer controls/spaces are dropped first."""
    cleaned = "".join(c for c in url if c not in "\t\n\r").strip("".join(map(chr, range(0x21))))
    found = re.match(r"([A-Za-z][A-Za-z0-9+.-]*):", cleaned)
    return found.group(1).lower() if found else ""


def as_cell(text: str) -> str:
    return text.replace("|", "\\|")


def hostile_report(placement: str) -> str:
    strings = [*HOSTILE, SAFE_LINK, OWN_FIGURE]
    if placement == "table":
        rows = [f"| {as_cell(s)} | {as_cell(s)} |" for s in strings]
        return "\n".join(["# report", "", "| title | category |", "|---|---|", *rows, "", DEFINITIONS])
    return "\n\n".join(["# report", *(f"news: {s} (text)" for s in strings), DEFINITIONS])


@pytest.fixture
def base(tmp_path: Path) -> Path:
    (tmp_path / "figures").mkdir()
    (tmp_path / "figures" / "x.png").write_bytes(PNG)
    (tmp_path / "secret.png").write_bytes(b"not a figure")
    return tmp_path


@pytest.mark.parametrize("placement", ["table", "text"])
def test_hostile_text_renders_inert(base: Path, placement: str) -> None:
    document = markdown_to_html(hostile_report(placement), base, "t <script>alert(1)</script>")
    lowered = document.lower()
    assert "<script" not in lowered and not re.search(r"<[a-z][^<>]*\son\w+\s*=", lowered)  # no handler in a tag
    parsed = tags(document)
    assert not {tag for tag, _ in parsed} & {"script", "iframe", "object", "embed", "svg", "form", "base"}
    assert [tag for tag, _ in parsed].count("style") == 1  # the report's own, in <head>
    for tag, attrs in parsed:
        assert not [name for name in attrs if name.startswith("on")], (tag, attrs)
        if tag == "a" and attrs.get("href") is not None:
            assert scheme(attrs["href"]) in {"", "http", "https"}, attrs
        if tag == "img":
            assert attrs["src"].startswith("data:image/png;base64,"), attrs
        for name in ("href", "src"):
            assert "javascript:" not in (attrs.get(name) or "").lower().replace("\t", "")
            assert "vbscript:" not in (attrs.get(name) or "").lower()
    # what must still work: an https link and the report's own figure, inlined
    assert ("a", {"href": "https://example.org"}) in parsed
    images = [attrs for tag, attrs in parsed if tag == "img"]
    own = {"alt": "chart", "src": "data:image/png;base64,iVBORw0KGgoAAAAAAAAAAAAAAAAAAAAA"}
    assert images == [own] * (2 if placement == "table" else 1)  # a table row holds each string twice
    # the neutralised strings stay readable as text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in document
    assert "&lt;img src=x onerror=alert(1)&gt;" in document


def test_a_figure_that_is_not_there_is_not_shown(base: Path) -> None:
    document = markdown_to_html("| news | x |\n|---|---|\n| ![t](figures/missing.png) | 1 |\n", base, "t")
    assert "<img" not in document and "[image not shown: t]" in document


def test_data_image_uris_and_relative_links_survive(base: Path) -> None:
    text = "![dot](data:image/png;base64,iVBORw0KGgo=) [up](../other/report.html) [top](#metrics)"
    parsed = tags(markdown_to_html(text, base, "t"))
    assert ("img", {"alt": "dot", "src": "data:image/png;base64,iVBORw0KGgo="}) in parsed
    assert ("a", {"href": "../other/report.html"}) in parsed and ("a", {"href": "#metrics"}) in parsed


def test_title_and_code_blocks_are_escaped(base: Path) -> None:
    text = "```yaml\nname: <script>alert(1)</script>\nsrc=\"figures/x.png\"\n```\n"
    document = markdown_to_html(text, base, "</title><script>alert(1)</script>")
    assert "<script" not in document.lower()
    assert "data:image" not in document  # a figure path quoted inside code is text, not an image
