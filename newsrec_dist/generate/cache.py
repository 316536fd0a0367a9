"""Persistent content-addressed cache of LLM completions.

The key is the sha256 of (model id, template identity, sampling parameters, messages, constrained
schema): the same question to the same model with the same settings is answered once, across runs,
stages and machines sharing the directory. One JSON file per entry, written via temp file + rename by
the actor that made it, so a ``kill -9`` loses at most the answers in flight and readers never see a
half-written entry. No locking is needed: concurrent writers of one key write equal content.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from newsrec_dist.generate.backends import Completion, Request
from newsrec_dist.io import atomic_write_text


def cache_key(model_id: str, template_id: str, request: Request) -> str:
    payload = {"model": model_id, "template": template_id, "request": asdict(request)}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


class CompletionCache:
    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    def _path(self, key: str) -> Path:
        return self.directory / key[:2] / f"{key}.json"

    def get(self, key: str) -> Completion | None:
        path = self._path(key)
        try:
            body: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (json.JSONDecodeError, UnicodeDecodeError):
            return None  # not written by us (renames are atomic): treat as absent, it gets overwritten
        return Completion(**body)

    def put(self, key: str, completion: Completion) -> None:
        atomic_write_text(self._path(key), json.dumps(asdict(completion), ensure_ascii=False))
