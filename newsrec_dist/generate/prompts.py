"""Versioned prompt templates (``conf/prompts/<name>.yaml``) and safe rendering of untrusted text.

A template holds a system message, a user message with ``$field`` placeholders (``string.Template``,
so JSON braces in the text need no escaping) and the JSON schema the answer must match. Dataset
text is untrusted: before it enters a prompt, control characters are removed, the template's
delimiter tags are stripped out of it (an article cannot close its ``<news>`` block and speak as the
instructions), and it is cut to a maximum length.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from string import Template
from typing import Any

import yaml

from newsrec_dist.config import conf_dir

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_TAG = re.compile(r"<\s*/?\s*(news|history|profile)\s*>", re.IGNORECASE)

Messages = list[dict[str, str]]


@dataclass(frozen=True)
class PromptTemplate:
    name: str
    version: int
    system: str
    user: str
    schema: dict[str, Any]
    max_tokens: int | None = None  # the answer's length cap; sampling.max_tokens caps it again

    @property
    def identity(self) -> str:
        """Name, version and a hash of text, schema and length cap: the template's part of cache keys and manifests."""
        body = json.dumps([self.system, self.user, self.schema, self.max_tokens], sort_keys=True)
        return f"{self.name}@v{self.version}:{hashlib.sha256(body.encode()).hexdigest()[:16]}"

    def with_constraints(self, path: list[str], **constraints: Any) -> PromptTemplate:
        """A copy whose schema node at ``path`` (property names, ``items`` for array items) gets ``constraints``."""
        schema = copy.deepcopy(self.schema)
        node = schema
        for key in path:
            node = node["items"] if key == "items" else node["properties"][key]
        node.update(constraints)
        return PromptTemplate(self.name, self.version, self.system, self.user, schema, self.max_tokens)

    def render(self, values: dict[str, str]) -> Messages:
        """Chat messages with ``values`` substituted; a missing placeholder is an error, not a blank."""
        return [{"role": "system", "content": self.system},
                {"role": "user", "content": Template(self.user).substitute(values)}]


def _without_tags(text: str) -> str:
    """Delimiter tags removed until none is left: one pass would turn ``</</news>news>`` into a new ``</ news>``."""
    while (stripped := _TAG.sub(" ", text)) != text:
        text = stripped
    return text


def clean_text(text: str | None, max_chars: int) -> str:
    """Untrusted dataset text made safe to place between a template's delimiters."""
    text = _without_tags(_CONTROL.sub(" ", text or ""))
    text = " ".join(text.split())
    return text if len(text) <= max_chars else text[: max_chars - 1].rstrip() + "…"


def load_template(name: str, prompts_dir: str | None = None) -> PromptTemplate:
    """Read ``<prompts_dir>/<name>.yaml`` (default: ``conf/prompts``), checking its fields."""
    path = (Path(prompts_dir) if prompts_dir else conf_dir() / "prompts") / f"{name}.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no prompt template named {name!r}")
    body = yaml.safe_load(path.read_text(encoding="utf-8"))
    missing = [key for key in ("name", "version", "system", "user", "schema") if key not in (body or {})]
    if missing:
        raise ValueError(f"{path}: prompt template lacks {missing}")
    if body["name"] != name:
        raise ValueError(f"{path}: template name {body['name']!r} does not match its file name")
    return PromptTemplate(name=name, version=int(body["version"]), system=body["system"].strip(),
                          user=body["user"], schema=body["schema"], max_tokens=body.get("max_tokens"))
