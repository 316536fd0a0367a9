"""News and user features as row-indexed tensors, built once per run from the prepared data.

News row ``code + 1`` holds catalog news ``code`` (``eval.impressions``); row 0 is padding and news missing from
the catalog. Every source is aligned by id and its coverage counted: nothing is dropped silently.
"""

from __future__ import annotations

import copy
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from torch import nn

from newsrec_dist.config import InterestConfig, ModelConfig, NewsEncoderConfig, PLMConfig
from newsrec_dist.data.prepare import read_news_table
from newsrec_dist.embed.vectors import read_vectors
from newsrec_dist.encoder.glove import TOKEN, load_glove
from newsrec_dist.eval.impressions import NewsCatalog
from newsrec_dist.models.inputs import NewsInputs, UserInputs
from newsrec_dist.progress import ProgressFactory, no_progress

PAD, UNKNOWN_WORD = 0, 1
GLOVE_UNKNOWN_STD = 0.1


@dataclass
class Features:
    news: NewsInputs
    users: UserInputs
    user_ids: dict[str, int]  # user id → row
    coverage: dict[str, Any] = field(default_factory=dict)  # per source: rows found / missing


def news_table(catalog: NewsCatalog, prepared_dir: Path, news_path: str | None, columns: list[str]) -> pa.Table:
    """The text columns in catalog order, from the prepared news or an enriched table (GENRE's summarizer)."""
    table = pq.read_table(news_path) if news_path else read_news_table(prepared_dir)
    missing = [name for name in ["news_id", *columns] if name not in table.column_names]
    if missing:
        raise ValueError(f"{news_path or prepared_dir}: no column(s) {missing} for the model's news views")
    position = pc.index_in(catalog.ids, value_set=table["news_id"])
    if position.null_count:
        raise ValueError(f"{news_path}: {position.null_count} of the {catalog.size} catalog news are missing")
    return table.select(columns).take(position)


def word_vocabulary(texts: list[list[str]], min_count: int) -> dict[str, int]:
    counts = Counter(token for tokens in texts for token in tokens)
    ranked = sorted((word for word, count in counts.items() if count >= min_count), key=lambda w: (-counts[w], w))
    return {word: index + 2 for index, word in enumerate(ranked)}  # 0 pad, 1 unknown


def token_matrix(texts: list[list[str]], vocabulary: dict[str, int], length: int) -> torch.Tensor:
    """[rows + 1, length] int32 word ids; row 0 is padding."""
    matrix = np.zeros((len(texts) + 1, length), dtype=np.int32)
    for row, tokens in enumerate(texts, start=1):
        ids = [vocabulary.get(token, UNKNOWN_WORD) for token in tokens[:length]]
        matrix[row, :len(ids)] = ids
    return torch.from_numpy(matrix)


def initial_word_vectors(vocabulary: dict[str, int], cfg: NewsEncoderConfig, seed: int) -> tuple[torch.Tensor, int]:
    """GloVe rows where the word is known, small random rows elsewhere; returns (matrix, words found)."""
    generator = np.random.default_rng(seed)
    matrix = generator.normal(0, GLOVE_UNKNOWN_STD, (len(vocabulary) + 2, cfg.word_dim)).astype(np.float32)
    matrix[PAD] = 0
    found = 0
    if cfg.glove_init:
        glove_rows, glove = load_glove()
        if glove.shape[1] != cfg.word_dim:
            raise ValueError(f"news.word_dim {cfg.word_dim} != GloVe's {glove.shape[1]} (or set news.glove_init=false)")
        pairs = [(index, glove_rows[word]) for word, index in vocabulary.items() if word in glove_rows]
        if pairs:
            ours, theirs = map(np.asarray, zip(*pairs))
            matrix[ours] = glove[np.sort(theirs)][np.argsort(np.argsort(theirs))]
        found = len(pairs)
    return torch.from_numpy(matrix), found


def text_features(table: pa.Table, cfg: NewsEncoderConfig, inputs: NewsInputs, coverage: dict[str, Any],
                  seed: int) -> None:
    lengths = {view.column: view.length for view in cfg.views if view.kind == "text"}
    if not lengths:
        return
    tokens = {name: [TOKEN.findall((text or "").lower()) for text in table[name].to_pylist()] for name in lengths}
    vocabulary = word_vocabulary([row for rows in tokens.values() for row in rows], cfg.min_word_count)
    inputs.words = {name: token_matrix(tokens[name], vocabulary, length) for name, length in lengths.items()}
    inputs.word_vectors, found = initial_word_vectors(vocabulary, cfg, seed)
    coverage["words"] = {"vocabulary": len(vocabulary), "glove_found": found}


def category_features(catalog: NewsCatalog, table: pa.Table, cfg: NewsEncoderConfig, inputs: NewsInputs) -> None:
    for view in cfg.views:
        if view.kind == "category":
            codes = table[view.column].combine_chunks().dictionary_encode().indices.to_numpy().astype(np.int64)
            inputs.categories[view.column] = torch.from_numpy(np.concatenate([[0], codes + 1]))


def _keyword_lists(catalog: NewsCatalog, keywords_path: str) -> list[list[str]]:
    table = pq.read_table(keywords_path, columns=["news_id", "keywords"])
    position = pc.index_in(catalog.ids, value_set=table["news_id"]).to_pylist()
    keywords = table["keywords"].to_pylist()
    return [keywords[index] or [] if index is not None else [] for index in position]


def vector_source(catalog: NewsCatalog, directory: str, keywords_path: str) -> tuple[torch.Tensor, dict[str, int]]:
    """[rows + 1, dim] vectors of one embedding artifact; keyword-keyed ones are averaged per news item."""
    keys, matrix = read_vectors(Path(directory))
    out = np.zeros((catalog.size + 1, matrix.shape[1]), dtype=np.float32)
    position = pc.index_in(catalog.ids, value_set=pa.array(keys.tolist(), pa.string())).to_numpy(zero_copy_only=False)
    news_keyed = not np.isnan(position.astype(np.float64)).all()
    if news_keyed:
        found = ~np.isnan(position.astype(np.float64))
        out[1:][found] = matrix[position[found].astype(np.int64)]
    else:
        row_of = {key: row for row, key in enumerate(keys.tolist())}
        found = np.zeros(catalog.size, dtype=bool)
        for code, words in enumerate(_keyword_lists(catalog, keywords_path)):
            rows = [row_of[word] for word in words if word in row_of]
            if rows:
                out[code + 1], found[code] = matrix[rows].mean(axis=0), True
    return torch.from_numpy(out), {"keyed_by": "news" if news_keyed else "keyword",
                                   "found": int(found.sum()), "missing": int((~found).sum())}


class PLMTop(nn.Module):
    """The trainable top layers of a BERT-class encoder, applied to cached hidden states."""

    def __init__(self, layers: nn.ModuleList) -> None:
        super().__init__()
        self.layers = layers

    def forward(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        additive = (1.0 - mask[:, None, None, :].to(states.dtype)) * torch.finfo(states.dtype).min
        for layer in self.layers:
            out = layer(states, attention_mask=additive)
            states = out[0] if isinstance(out, tuple) else out
        return states


def with_lora(top: PLMTop, cfg: PLMConfig) -> PLMTop:
    """LoRA adapters (PEFT) on the top layers' linear maps; only the adapters train."""
    if cfg.lora_r <= 0:
        return top
    from peft import LoraConfig as PeftLoraConfig
    from peft import inject_adapter_in_model

    adapted = inject_adapter_in_model(PeftLoraConfig(r=cfg.lora_r, lora_alpha=2 * cfg.lora_r,
                                                     target_modules=list(cfg.lora_targets)), top)
    for name, parameter in adapted.named_parameters():
        parameter.requires_grad = "lora_" in name
    return adapted


def plm_features(table: pa.Table, cfg: NewsEncoderConfig, inputs: NewsInputs, progress: ProgressFactory,
                 batch_size: int = 256) -> None:
    """Run the frozen bottom layers once over every news text; keep their states and a copy of the top layers."""
    views = [view for view in cfg.views if view.kind == "plm"]
    if not views:
        return
    from transformers import AutoModel, AutoTokenizer

    from newsrec_dist.encoder.models import minilm_path

    directory = minilm_path() if cfg.plm.source == "minilm" else Path(str(cfg.plm.path))
    tokenizer, model = AutoTokenizer.from_pretrained(str(directory)), AutoModel.from_pretrained(str(directory)).eval()
    layers = model.encoder.layer
    frozen = len(layers) - cfg.plm.trainable_layers
    if not 0 <= frozen <= len(layers):
        raise ValueError(f"news.plm.trainable_layers must be 0..{len(layers)}, got {cfg.plm.trainable_layers}")
    inputs.plm_top = with_lora(PLMTop(copy.deepcopy(layers[frozen:])), cfg.plm)
    for view in views:
        texts = [text or "" for text in table[view.column].to_pylist()]
        states, masks = [torch.zeros(1, view.length, model.config.hidden_size)], [torch.zeros(1, view.length, dtype=torch.bool)]
        with progress(f"PLM states ({view.column})", len(texts)) as advance, torch.no_grad():
            for start in range(0, len(texts), batch_size):
                batch = tokenizer(texts[start:start + batch_size], truncation=True, max_length=view.length,
                                  padding="max_length", return_tensors="pt")
                out = model(**batch, output_hidden_states=True)
                states.append(out.hidden_states[frozen])
                masks.append(batch["attention_mask"].bool())
                advance(len(batch["input_ids"]))
        inputs.plm_hidden[view.column] = (torch.cat(states), torch.cat(masks))


def news_features(catalog: NewsCatalog, prepared_dir: Path, cfg: ModelConfig, seed: int,
                  progress: ProgressFactory = no_progress) -> tuple[NewsInputs, dict[str, Any]]:
    views = cfg.news.views
    columns = sorted({view.column for view in views if view.kind in ("text", "plm", "category")})
    table = news_table(catalog, prepared_dir, cfg.news.table, columns)
    inputs, coverage = NewsInputs(rows=catalog.size + 1), {}
    text_features(table, cfg.news, inputs, coverage, seed)
    category_features(catalog, table, cfg.news, inputs)
    plm_features(table, cfg.news, inputs, progress)
    for source in sorted({source for view in views if view.kind == "vectors" for source in view.sources}):
        inputs.vectors[source], coverage[source] = vector_source(catalog, source, cfg.news.keywords_path)
    return inputs, coverage


def _term_ids(lists: list[list[str] | None], width: int) -> np.ndarray:
    """[len(lists), width] ids of lower-cased terms (0 pads; ids in order of first appearance)."""
    vocabulary: dict[str, int] = {}
    out = np.zeros((len(lists), width), dtype=np.int64)
    for row, terms in enumerate(lists):
        ids = [vocabulary.setdefault(term.strip().lower(), len(vocabulary) + 1) for term in (terms or [])][:width]
        out[row, :len(ids)] = ids
    return out


def user_features(user_ids: list[str], trained: np.ndarray, cfg: InterestConfig) -> tuple[UserInputs, dict[str, Any]]:
    """Rows for ``user_ids`` (row = position + 1); GENRE profiles' topics and regions where enabled."""
    users = UserInputs(rows=len(user_ids) + 1, trained=torch.from_numpy(np.concatenate([[False], trained])))
    if not cfg.enabled:
        return users, {}
    if cfg.profiles_path is None:  # the fusion module with empty profiles: GENRE's base arm, same architecture
        users.topics = torch.zeros((users.rows, cfg.max_topics), dtype=torch.int64)
        users.regions = torch.zeros((users.rows, cfg.max_regions), dtype=torch.int64)
        return users, {"profiles": {"found": 0, "missing": len(user_ids)}}
    profiles = pq.read_table(cfg.profiles_path, columns=["user_id", "topics", "regions"])
    position = pc.index_in(pa.array(user_ids, pa.string()), value_set=profiles["user_id"]).to_pylist()

    def per_row(column: str) -> list[list[str] | None]:
        values = profiles[column].to_pylist()
        return [None] + [values[index] if index is not None else None for index in position]

    users.topics = torch.from_numpy(_term_ids(per_row("topics"), cfg.max_topics))
    users.regions = torch.from_numpy(_term_ids(per_row("regions"), cfg.max_regions))
    found = sum(index is not None for index in position)
    return users, {"profiles": {"found": found, "missing": len(user_ids) - found}}
