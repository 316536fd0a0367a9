"""Strict parsing of model answers: one JSON value matching the template's schema, or a reason why not.

Accepted: the JSON text itself, optionally inside one Markdown code fence (chat models add them).
Not accepted: trailing commas, comments, text around the JSON, schema violations — each is reported
with a short reason that ends up in the failures table.
"""

from __future__ import annotations

import json
import re
from typing import Any

from jsonschema import Draft202012Validator

_FENCE = re.compile(r"^```(?:json)?\s*\n(.*)\n```$", re.DOTALL)


def parse_answer(text: str, schema: dict[str, Any]) -> tuple[Any, str | None]:
    """``(value, None)`` for a valid answer, ``(None, reason)`` otherwise."""
    body = text.strip()
    fenced = _FENCE.match(body)
    if fenced:
        body = fenced.group(1).strip()
    if not body:
        return None, "empty answer"
    try:
        value = json.loads(body)
    except json.JSONDecodeError as error:
        return None, f"not JSON: {error.msg} at line {error.lineno} column {error.colno}"
    problem = next(iter(Draft202012Validator(schema).iter_errors(value)), None)
    if problem is not None:
        where = "/".join(str(part) for part in problem.absolute_path) or "(root)"
        return None, f"schema: {where}: {problem.message[:200]}"
    return value, None
