"""PFR and LightGCN: top-k metrics against torchmetrics, the click graph's time split and accounting, item
profiles, and PFR helping cold news on planted data (real MiniLM, real torch-geometric, from the CLI)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import THREADS, run
import torch
from torchmetrics.retrieval import RetrievalHitRate, RetrievalMRR, RetrievalNormalizedDCG, RetrievalRecall

from newsrec_dist.config import GenerateTasksConfig, GraphCFConfig, ProfileAlignConfig
from newsrec_dist.data.prepare import read_news_table
from newsrec_dist.eval.topk import Csr, topk_means, topk_per_user
from newsrec_dist.generate.tasks import item_profile_outputs
from newsrec_dist.models.lightgcn import GraphRecommender
from newsrec_dist.train.graph_cf import GraphBatches, load_click_graph

LIBRARY = {"recall": RetrievalRecall, "ndcg": RetrievalNormalizedDCG, "mrr": RetrievalMRR, "hit": RetrievalHitRate}


def test_topk_metrics_match_torchmetrics_retrieval() -> None:
    rng = np.random.default_rng(3)
    n_users, n_items = 37, 25
    # positive scores: torchmetrics' recall counts only relevant items scored above 0
    scores = torch.from_numpy(rng.uniform(0.1, 1.0, size=(n_users, n_items)).astype(np.float32))
    pairs = rng.random((n_users, n_items))
    relevant, excluded = pairs < 0.15, (pairs > 0.15) & (pairs < 0.35)
    relevant[5] = False  # a user without test clicks is left out
    csr = {name: Csr.of_pairs(*np.nonzero(mask), n_users) for name, mask in (("rel", relevant), ("exc", excluded))}
    ks = [3, 10, 40]  # 40: more than the pool holds (a small group such as the cold items), all of it is ranked
    users_scored, per_user = topk_per_user(lambda start, count: scores[start:start + count].clone(), n_users,
                                           csr["rel"], csr["exc"], ks, n_items)
    ours = topk_means(users_scored, per_user)
    keep = ~excluded & relevant.any(axis=1, keepdims=True)
    users, items = np.nonzero(keep)
    for name, metric in LIBRARY.items():
        for k in ks:
            expected = metric(top_k=k)(scores[users, items], torch.from_numpy(relevant[users, items]),
                                       indexes=torch.from_numpy(users))
            assert ours[f"{name}@{k}"] == pytest.approx(float(expected), abs=1e-6), f"{name}@{k}"
    assert ours["users"] == int(relevant.any(axis=1).sum())
    assert users_scored.tolist() == np.flatnonzero(relevant.any(axis=1)).tolist()
    for user in (0, 17):  # per user, as the library computes it for that user alone
        own = keep[user]
        expected = RetrievalNormalizedDCG(top_k=10)(scores[user, own], torch.from_numpy(relevant[user, own]),
                                                    indexes=torch.zeros(int(own.sum()), dtype=torch.long))
        assert per_user["ndcg@10"][users_scored.tolist().index(user)] == pytest.approx(float(expected), abs=1e-6)


def test_click_graph_is_a_time_split_and_accounts_for_every_click(tiny: tuple[Path, Path]) -> None:
    prepared, keywords = tiny
    graph = load_click_graph(prepared, "dev", None, str(keywords))
    for source, entry in graph.accounting.items():
        if isinstance(entry, dict):
            assert entry["rows"] == entry["kept"] + sum(entry["rejected"].values()) > 0, source
    assert graph.accounting["train clicks"]["kept"] + graph.accounting["history (train)"]["kept"] \
        + graph.accounting["history (dev)"]["kept"] == graph.edges.shape[1]
    n = graph.catalog.size
    train_keys = graph.edges[0] * n + graph.edges[1]
    test_keys = graph.test_users * n + graph.test_items
    assert len(np.unique(train_keys)) == len(train_keys) and len(np.unique(test_keys)) == len(test_keys)
    assert not np.isin(test_keys, train_keys).any()
    assert graph.accounting["dev clicks"]["kept"] == len(test_keys) > 0
    assert graph.warm.sum() == len(np.unique(graph.edges[1]))
    assert graph.accounting["cold_test_edges"] == int((~graph.warm[graph.test_items]).sum()) > 0
    with pytest.raises(ValueError, match="not a time split"):
        load_click_graph(prepared, "train", None, str(keywords))  # a split cannot test on its own days


def test_item_profiles_keep_llm_answers_and_fall_back_to_the_item_text(tiny: tuple[Path, Path]) -> None:
    prepared, _ = tiny
    news = read_news_table(prepared)
    first = news["news_id"][0].as_py()
    results = pa.table({"row_id": [first, news["news_id"][1].as_py()], "status": ["ok", "failed"],
                        "answer": [json.dumps({"profile": "  Sports fans\nwho follow football. "}), None]})
    table = item_profile_outputs(results, news, GenerateTasksConfig(text_max_chars=40))["profiles.parquet"]
    assert table.num_rows == news.num_rows and table["news_id"].to_pylist() == news["news_id"].to_pylist()
    assert table["profile"][0].as_py() == "Sports fans who follow football."
    assert table["source"].to_pylist().count("llm") == 1
    fallback = table["profile"][1].as_py()
    assert fallback.startswith(f"{news['category'][1].as_py()} / ") and len(fallback) < 200


def newsrec(*args: str, cwd: Path) -> dict:
    result = run([sys.executable, "-m", "newsrec_dist.cli", *args], cwd=cwd, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


@pytest.mark.slow
def test_pfr_helps_cold_news_over_plain_lightgcn_from_the_cli(tiny: tuple[Path, Path], tmp_path: Path, ray_dir: str) -> None:
    """Planted topics live in the news text, so profile vectors can place news nobody clicked yet."""
    prepared, _ = tiny
    common = [f"paths.work_dir={tmp_path}", f"data.prepared_dir={prepared}"]
    # the real item_profile task (SmolLM2 through llama.cpp) on a few news; the others fall back to their text
    newsrec("generate", "item_profile", "--quiet", *[part for option in (
        *common, "generate.task.max_news=8", f"generate.backend.threads={THREADS}", f"generate.ray.temp_dir={ray_dir}",
        f"generate.cache_dir={tmp_path / 'llm-cache'}") for part in ("-s", option)], cwd=tmp_path)
    sources = pq.read_table(tmp_path / "generate" / "item_profile" / "profiles.parquet")["source"].to_pylist()
    assert 0 < sources.count("llm") <= 8 and len(sources) == read_news_table(prepared).num_rows
    newsrec("encoder", "embed", "--profiles", "--quiet", *common, "encoder.device=cpu", "encoder.embed.actor_cpus=1",
            f"encoder.embed.ray.temp_dir={ray_dir}", cwd=tmp_path)
    metrics = {}
    for model in ("lightgcn", "pfr"):
        newsrec("train", f"model={model}", *common, "train.batch_size=512", "train.max_steps=60", "train.lr=5e-3",
                "train.progress=false", f"train.threads={THREADS}", cwd=tmp_path)
        metrics[model] = json.loads((tmp_path / "train" / model / "metrics.json").read_text())
    assert (tmp_path / "train" / "pfr" / "recommendations.parquet").is_file()
    cold = {model: values["cold_items"]["ndcg@20"] for model, values in metrics.items()}
    assert cold["pfr"] >= cold["lightgcn"] + 0.05, cold
    assert metrics["pfr"]["all"]["ndcg@20"] > metrics["lightgcn"]["all"]["ndcg@20"], metrics


def test_graph_batches_resume_mid_epoch_with_the_same_samples(tiny: tuple[Path, Path]) -> None:
    prepared, keywords = tiny
    graph = load_click_graph(prepared, "dev", None, str(keywords))
    whole = GraphBatches(graph, batch_size=256, seed=5)
    epochs = [list(whole), list(whole)]  # two epochs draw different negatives and orders
    assert not torch.equal(epochs[0][0]["negatives"], epochs[1][0]["negatives"])
    assert graph.warm[torch.cat([batch["negatives"] for batch in epochs[0]]).numpy()].all()
    every = torch.cat([batch["negatives"] for batch in GraphBatches(graph, 256, 5, negatives="all")]).numpy()
    assert not graph.warm[every].all()  # PFR: cold news are BPR negatives too
    interrupted = GraphBatches(graph, batch_size=256, seed=5)
    stream = iter(interrupted)
    head = [next(stream) for _ in range(3)]
    resumed = GraphBatches(graph, batch_size=256, seed=5)
    resumed.load_state_dict(interrupted.state_dict())
    for expected, got in zip(epochs[0], head + list(resumed)):
        assert all(torch.equal(expected[key], got[key]) for key in ("users", "positives", "negatives"))
    ranks = [GraphBatches(graph, batch_size=128, seed=5, rank=rank, world_size=2) for rank in (0, 1)]
    first = [next(iter(batches))["positives"] for batches in ranks]
    assert len(first[0]) == len(first[1]) == 128 and not torch.equal(first[0], first[1])


def test_pfr_scores_z_plus_the_mapped_profile_and_bpr_trains_the_map_through_cold_negatives() -> None:
    torch.manual_seed(0)
    edges = torch.tensor([[0, 0, 1], [0, 1, 1]])  # users 0 and 1 clicked news 0 and 1; news 2 and 3 are cold
    warm = torch.tensor([True, True, False, False])
    profiles = torch.randn(4, 6)
    cfg = GraphCFConfig(embedding_dim=4, layers=2, reg_weight=0.0, negatives="all",
                        profile=ProfileAlignConfig(vectors="profiles", init=False, align_weight=0.0))
    model = GraphRecommender(cfg, 2, 4, edges, warm, profiles)
    users, items = model.embeddings()
    z = model.gcn.get_embedding(model.edge_index, model.edge_weight)
    assert torch.allclose(users, z[:2])
    assert model.project is not None
    mapped = model.project(profiles)
    assert torch.allclose(items[:2], z[2:4] + mapped[:2]) and torch.allclose(items[2:], mapped[2:])
    model.loss({"users": torch.tensor([0]), "positives": torch.tensor([0]), "negatives": torch.tensor([3])}).backward()
    assert model.project.weight.grad is not None and model.project.weight.grad.abs().sum() > 0
    layer0 = model.gcn.embedding.weight.grad
    assert layer0 is not None and not layer0[2 + 3].any() and layer0[2 + 0].any()  # a cold news' z is 0
    plain = GraphRecommender(GraphCFConfig(embedding_dim=4, layers=2), 2, 4, edges, warm)
    assert torch.allclose(plain.embeddings()[1], plain.gcn.get_embedding(plain.edge_index, plain.edge_weight)[2:])
