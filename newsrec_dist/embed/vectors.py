"""Keyed vector artifacts (``embeddings/<name>``): Parquet (key, vector, extra columns) + safetensors, same row order.

One format for every embedding the pipeline makes — Node2Vec per graph, LLM news vectors, GloVe
baseline — so fusion and the recommenders read them all the same way.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from safetensors.torch import save_file

EMBEDDINGS_PARQUET = "embeddings.parquet"
EMBEDDINGS_SAFETENSORS = "embeddings.safetensors"


def vector_column(matrix: np.ndarray) -> pa.FixedSizeListArray:
    matrix = np.ascontiguousarray(matrix, dtype=np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(matrix.reshape(-1)), matrix.shape[1])


def write_vectors(directory: Path, keys: list[str], matrix: np.ndarray,
                  extra: dict[str, np.ndarray] | None = None) -> None:
    """Write ``embeddings.parquet`` and ``embeddings.safetensors`` (tensor ``embeddings``) into ``directory``."""
    if len(keys) != len(matrix):
        raise ValueError(f"{len(keys)} keys for {len(matrix)} vectors")
    matrix = np.ascontiguousarray(matrix, dtype=np.float32)
    save_file({"embeddings": torch.from_numpy(matrix)}, str(Path(directory) / EMBEDDINGS_SAFETENSORS))
    columns = {"key": pa.array(keys, pa.string()), **{name: pa.array(values) for name, values in (extra or {}).items()},
               "vector": vector_column(matrix)}
    pq.write_table(pa.table(columns), Path(directory) / EMBEDDINGS_PARQUET)


def read_vectors(directory: Path) -> tuple[np.ndarray, np.ndarray]:
    """(keys, float32 matrix) of an embeddings directory."""
    table = pq.read_table(Path(directory) / EMBEDDINGS_PARQUET, columns=["key", "vector"])
    width = table.schema.field("vector").type.list_size
    matrix = table["vector"].combine_chunks().flatten().to_numpy().reshape(-1, width)
    return np.asarray(table["key"].to_pylist(), dtype=object), matrix
