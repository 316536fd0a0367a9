"""Reading checkpoints without running code: every checkpoint the project loads (Node2Vec, Lightning, DeepSpeed)
goes through :func:`weights_only_loads` (docs/security.md, "Checkpoints")."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

FORCE_WEIGHTS_ONLY = "TORCH_FORCE_WEIGHTS_ONLY_LOAD"  # PyTorch's documented switch: every torch.load weights-only
FORCE_NO_WEIGHTS_ONLY = "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"  # its opposite, which torch refuses beside it


@contextlib.contextmanager
def weights_only_loads(allowed: Sequence[type] = ()) -> Iterator[None]:
    """Every ``torch.load`` inside unpickles tensors, plain containers and the ``allowed`` classes only, whatever
    ``weights_only`` its caller passes: for libraries that load with ``weights_only=False`` (DeepSpeed).

    This is how the project reads every checkpoint (the one building block, with :func:`load_weights`): a pickle
    that would import or call anything else (a planted ``__reduce__``) raises ``UnpicklingError`` before any of
    it runs. It sets PyTorch's documented ``TORCH_FORCE_WEIGHTS_ONLY_LOAD`` for the block (and lifts a
    ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD``, which torch refuses beside it); ``allowed`` goes through
    ``torch.serialization.safe_globals``.
    """
    saved = {name: os.environ.get(name) for name in (FORCE_WEIGHTS_ONLY, FORCE_NO_WEIGHTS_ONLY)}
    os.environ[FORCE_WEIGHTS_ONLY] = "1"
    os.environ.pop(FORCE_NO_WEIGHTS_ONLY, None)
    try:
        with torch.serialization.safe_globals(list(allowed)):
            yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def load_weights(path: Path, map_location: Any = "cpu", allowed: Sequence[type] = ()) -> Any:
    """A checkpoint read through :func:`weights_only_loads`: tensors and plain containers, never code."""
    with weights_only_loads(allowed):
        return torch.load(path, map_location=map_location, weights_only=True)
