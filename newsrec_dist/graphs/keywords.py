"""The keyword stage's contract and its fast non-LLM extractor.

Contract: a Parquet table ``news_id: string, keywords: list<string>`` (distinct, lower case, most
relevant first). The TF-IDF extractor here ranks each item's title+abstract terms by TF-IDF over the
whole news table; the LLM extractor (generation stage) writes the same table.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from sklearn.feature_extraction.text import TfidfVectorizer

KEYWORDS_SCHEMA = pa.schema([("news_id", pa.string()), ("keywords", pa.list_(pa.string()))])


def tfidf_keywords(news: pa.Table, top_k: int = 5, min_df: int = 2, max_df: float = 0.5) -> pa.Table:
    """Top-``top_k`` TF-IDF terms of title+abstract per news item (ties broken by term)."""
    texts = [f"{title} {abstract}" for title, abstract in zip(news["title"].to_pylist(), news["abstract"].to_pylist())]
    vectorizer = TfidfVectorizer(stop_words="english", min_df=min(min_df, len(texts)), max_df=max_df,
                                 token_pattern=r"(?u)\b[a-zA-Z][a-zA-Z0-9]{2,}\b")
    matrix = vectorizer.fit_transform(texts).tocsr()
    terms = vectorizer.get_feature_names_out()
    keywords = []
    for row in range(matrix.shape[0]):
        start, stop = matrix.indptr[row], matrix.indptr[row + 1]
        columns, scores = matrix.indices[start:stop], matrix.data[start:stop]
        best = np.lexsort((terms[columns], -scores))[:top_k]
        keywords.append(terms[columns[best]].tolist())
    return pa.table({"news_id": news["news_id"], "keywords": pa.array(keywords, pa.list_(pa.string()))},
                    schema=KEYWORDS_SCHEMA)
