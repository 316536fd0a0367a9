"""Token auth for every Ray this package starts: Ray 2.60's servers listen on every interface even for a local Ray
(it resolves 127.0.0.1 to the node's address), so a loopback address cannot keep other users out; a token can."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

DEFAULT_TOKEN_FILE = Path.home() / ".ray" / "auth_token"


def default_token_auth() -> None:
    """Token auth unless the environment chose a mode; a random token for this process (and the Ray workers and
    commands it starts, which inherit its environment; other users cannot read it) unless a token is already
    configured (``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH`` or Ray's own token file, as a cluster's nodes have).

    Must run before Ray is first imported: Ray reads the mode once, at import.
    """
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    configured = {"RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"} & os.environ.keys() or DEFAULT_TOKEN_FILE.is_file()
    if os.environ["RAY_AUTH_MODE"] == "token" and not configured:
        os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
