"""``newsrec encoder embed``: every news item (or item profile) through the (adapted) encoder, a Ray Data actor pool.

Each actor loads the base model once (and the PEFT adapter, merged for speed); Ray Data streams
news batches to the pool (fractional CPUs here, ``actor_gpus: 1`` per actor on a cluster). The driver
writes the vectors it receives as Parquet parts of ``rows_per_part`` rows into the stage's partial
directory; a re-run after a kill embeds only the news ids no part holds yet. The finished artifact
is the keyed-vectors format of ``embed/vectors.py`` (L2-normalised float32), in the source table's order.

Two sources use it: the prepared news (``text_template`` over title and abstract) and PFR's LLM item profiles
(``generate/item_profile/profiles.parquet``, ``embed.profile_template``), each a :class:`TextSource`.
"""

from __future__ import annotations

import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from newsrec_dist.cluster.ray_session import blocked_dataset, ray_session
from newsrec_dist.config import EncoderConfig, EncoderModelConfig
from newsrec_dist.embed.vectors import vector_column, write_vectors
from newsrec_dist.encoder.models import model_dir, render_texts
from newsrec_dist.io import Manifest, ResumableDir, artifact_fingerprint, is_up_to_date, read_manifest, write_part
from newsrec_dist.progress import ProgressFactory, no_progress

PARTS_DIR = "parts"


class NewsEmbedder:
    """Ray Data callable class: one model per actor, batches of news in, vectors out."""

    def __init__(self, base_dir: str, adapter_dir: str | None, model_cfg: EncoderModelConfig, template: str,
                 device: str, threads: int, batch_size: int) -> None:
        import torch

        from newsrec_dist.embed.node2vec import resolve_device
        from newsrec_dist.encoder.models import TextEncoder, load_backbone

        torch.set_num_threads(max(1, threads))
        self.device = resolve_device(device)
        self.cfg, self.template, self.batch_size = model_cfg, template, batch_size
        self.tokenizer, backbone = load_backbone(Path(base_dir), model_cfg)
        if adapter_dir:
            from peft import PeftModel

            backbone = PeftModel.from_pretrained(backbone, adapter_dir).merge_and_unload()
        self.encoder = TextEncoder(backbone.to(self.device), model_cfg.pooling)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from newsrec_dist.encoder.models import encode_texts

        texts = render_texts({name: values.tolist() for name, values in batch.items() if name != "news_id"},
                             self.template)
        vectors = encode_texts(self.encoder, self.tokenizer, texts, self.cfg, self.batch_size, self.device)
        return {"news_id": batch["news_id"], "vector": vectors}


def embedding_name(cfg: EncoderConfig) -> str:
    return f"{cfg.name}-{'finetuned' if cfg.embed.use_adapter else 'base'}"


def profiles_name(cfg: EncoderConfig) -> str:
    return f"{cfg.name}-profiles"


@dataclass(frozen=True)
class TextSource:
    """A keyed text table to embed: which rows, how each becomes text, and the artifact it makes."""

    name: str  # the artifact under ``encoder.embeddings_dir``
    table: Path  # Parquet with ``news_id`` and the template's columns
    columns: list[str]
    template: str
    inputs: dict[str, str]  # fingerprints of what the table was made from
    use_adapter: bool

    @classmethod
    def news(cls, cfg: EncoderConfig, prepared_dir: Path) -> TextSource:
        return cls(embedding_name(cfg), Path(prepared_dir) / "news.parquet", ["title", "abstract"],
                   cfg.model.text_template, {"prepared": artifact_fingerprint(Path(prepared_dir))},
                   cfg.embed.use_adapter)

    @classmethod
    def profiles(cls, cfg: EncoderConfig) -> TextSource:
        table = Path(cfg.embed.profiles_path)
        if not table.is_file():
            raise FileNotFoundError(f"{table}: no item profiles; run `newsrec generate item_profile` first")
        return cls(profiles_name(cfg), table, ["profile"], cfg.embed.profile_template,
                   {"profiles": artifact_fingerprint(table.parent)}, cfg.embed.profile_adapter)


def _identity(cfg: EncoderConfig, source: TextSource) -> tuple[dict[str, str], dict[str, Any]]:
    inputs = dict(source.inputs)
    if source.use_adapter:
        inputs["adapter"] = artifact_fingerprint(Path(cfg.output_dir))
    return inputs, {"model": vars(cfg.model), "template": source.template, "adapter": source.use_adapter}


def finished(cfg: EncoderConfig, source: TextSource) -> dict[str, Any] | None:
    final = Path(cfg.embeddings_dir) / source.name
    if is_up_to_date(final, "encoder-embed", *_identity(cfg, source)):
        return dict(read_manifest(final)["extra"])
    return None


def _done_ids(parts: Path) -> set[str]:
    return {key for file in parts.glob("*.parquet") for key in pq.read_table(file, columns=["news_id"])["news_id"].to_pylist()}


def _write_part(parts: Path, news_ids: np.ndarray, vectors: np.ndarray) -> None:
    write_part(parts, pa.table({"news_id": pa.array(news_ids.tolist(), pa.string()), "vector": vector_column(vectors)}))


def embed_news(cfg: EncoderConfig, prepared_dir: Path, progress: ProgressFactory = no_progress) -> dict[str, Any]:
    """Embed every news item into ``embeddings/<name>-{finetuned,base}``; resumable, a no-op when current."""
    return embed_texts(cfg, TextSource.news(cfg, prepared_dir), progress)


def embed_profiles(cfg: EncoderConfig, progress: ProgressFactory = no_progress) -> dict[str, Any]:
    """Embed every item profile (PFR) into ``embeddings/<name>-profiles`` (base model unless
    ``embed.profile_adapter``: the adapter was tuned for title-to-abstract retrieval, not profiles)."""
    return embed_texts(cfg, TextSource.profiles(cfg), progress)


def embed_texts(cfg: EncoderConfig, source: TextSource, progress: ProgressFactory = no_progress) -> dict[str, Any]:
    done = finished(cfg, source)
    if done is not None:
        return done
    inputs, config = _identity(cfg, source)
    final = Path(cfg.embeddings_dir) / source.name
    work = ResumableDir(final, Manifest(stage="encoder-embed", inputs=inputs, config=config).fingerprint())
    work.save({"started": True})
    parts = work.path / PARTS_DIR
    parts.mkdir(exist_ok=True)
    rows = pq.read_table(source.table, columns=["news_id", *source.columns])
    finished_ids = _done_ids(parts)
    pending = rows.filter(pa.array([key not in finished_ids for key in rows["news_id"].to_pylist()]))
    adapter = str(Path(cfg.output_dir) / "adapter") if source.use_adapter else None
    if adapter and not Path(adapter).is_dir():
        raise FileNotFoundError(f"{adapter}: no fine-tuned adapter; run `newsrec encoder finetune` first "
                                f"or set encoder.embed.use_adapter=false")
    base = str(model_dir(cfg.model, Path(cfg.cache_dir)))
    with progress(f"encoder embed ({source.name})", len(pending)) as advance:
        if len(pending):
            with ray_session(cfg.embed.ray):
                _run_pool(cfg, source.template, pending, base, adapter, parts, advance)
    return _finish(cfg, source.name, rows, parts, work, inputs, config)


def _run_pool(cfg: EncoderConfig, template: str, pending: pa.Table, base: str, adapter: str | None, parts: Path,
              advance: Any) -> None:
    import ray

    embed = cfg.embed
    dataset = blocked_dataset(pending, embed.batch_size).map_batches(
        NewsEmbedder, batch_size=embed.batch_size, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=embed.actors),
        num_cpus=embed.actor_cpus, num_gpus=embed.actor_gpus or None,
        fn_constructor_kwargs={"base_dir": base, "adapter_dir": adapter, "model_cfg": cfg.model, "template": template,
                               "device": cfg.device, "threads": max(1, math.floor(embed.actor_cpus)),
                               "batch_size": embed.batch_size})
    for batch in dataset.iter_batches(batch_size=embed.rows_per_part, batch_format="numpy"):
        _write_part(parts, batch["news_id"], np.stack(batch["vector"]))
        advance(len(batch["news_id"]))


def _finish(cfg: EncoderConfig, name: str, rows: pa.Table, parts: Path, work: ResumableDir, inputs: dict[str, str],
            config: dict[str, Any]) -> dict[str, Any]:
    table = pa.concat_tables([pq.read_table(file) for file in sorted(parts.glob("*.parquet"))])
    position = {key: index for index, key in enumerate(table["news_id"].to_pylist())}
    order = np.asarray([position[key] for key in rows["news_id"].to_pylist()], dtype=np.int64)
    width = table.schema.field("vector").type.list_size
    matrix = table["vector"].combine_chunks().flatten().to_numpy().reshape(-1, width)[order]
    write_vectors(work.path, rows["news_id"].to_pylist(), matrix)
    shutil.rmtree(parts)  # also a killed run's half-written `.part-*.tmp`, which was never data
    summary = {"name": name, "news": len(rows), "dim": int(width), "model": vars(cfg.model)["source"]}
    Manifest(stage="encoder-embed", inputs=inputs, config=config, rows={"embeddings": len(rows)}, extra=summary).write(work.path)
    work.publish()
    return summary
