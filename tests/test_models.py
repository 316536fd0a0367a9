"""Recommender building blocks and training data, checked against direct computations."""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from newsrec_dist.config import ModelConfig, SamplerConfig, load_config, as_object
from newsrec_dist.embed.vectors import write_vectors
from newsrec_dist.eval.impressions import ClickCounter, ImpressionSet, load_catalog, load_impressions
from newsrec_dist.models.inputs import NewsInputs, UserInputs
from newsrec_dist.models.recommender import Recommender
from newsrec_dist.models.scorers import CrossNetwork, PNNScorer
from newsrec_dist.models.user import DINUser
from newsrec_dist.config import ScorerConfig, UserEncoderConfig
from newsrec_dist.train.features import news_features, user_features, vector_source
from newsrec_dist.train.module import parameter_groups
from newsrec_dist.train.samples import (
    Clicks, PopularNews, SplitArrays, TrainBatches, draw_candidates, history_rows, trim_padding,
)
from newsrec_dist.train.scoring import score_split

MODELS = ["nrms", "naml", "lstur", "bst", "din", "dcn", "pnn"]


def toy_impressions() -> ImpressionSet:
    """Three impressions over news codes 0..9; impression 2's user has an empty history."""
    return ImpressionSet(
        impression_id=np.array([1, 2, 3]), user_id=pa.array(["U1", "U2", "U3"]), time=np.array([0, 7200, 9000]),
        offsets=np.array([0, 4, 7, 10]), candidates=np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 9]),
        labels=np.array([1, 0, 0, 0, 0, 1, 0, 1, 1, 0], np.int8),
        history_offsets=np.array([0, 5, 7, 7]), history=np.array([9, 8, -1, 6, 5, 1, 2]))


def test_history_rows_keep_the_most_recent_clicks_valid_first() -> None:
    rows = history_rows(toy_impressions(), np.array([0, 1, 2]), max_history=3)
    # impression 0's last three clicks are codes -1 (unknown → padding row 0), 6, 5 → rows 0, 7, 6
    assert rows.tolist() == [[0, 7, 6], [2, 3, 0], [0, 0, 0]]


def test_batches_cut_the_history_padding_after_their_longest_history() -> None:
    rows = history_rows(toy_impressions(), np.array([1, 2]), max_history=4)
    assert rows.tolist() == [[2, 3, 0, 0], [0, 0, 0, 0]]
    assert trim_padding(rows).tolist() == [[2, 3], [0, 0]]
    assert trim_padding(np.zeros((2, 4), np.int64)).shape == (2, 1)  # a batch of empty histories keeps one slot


def test_uniform_negatives_come_from_the_impression_and_the_click_comes_first() -> None:
    impressions = toy_impressions()
    clicks = Clicks.of(impressions)
    drawn = draw_candidates(impressions, clicks, 4, SamplerConfig(), None, np.random.default_rng(0))
    assert drawn[:, 0].tolist() == [0, 5, 7, 8]
    non_clicked = {0: {1, 2, 3}, 1: {4, 6}, 2: {9}}
    for owner, row in zip(clicks.owner, drawn):
        assert set(row[1:].tolist()) <= non_clicked[int(owner)]


def test_popular_news_are_the_most_clicked_before_the_bucket() -> None:
    rng = np.random.default_rng(3)
    start = 1_573_257_600  # Unix times, as MIND's: buckets count from the first impression, not from 1970
    items, times = rng.integers(0, 40, 3000), start + rng.integers(0, 20 * 3600, 3000)
    cfg = SamplerConfig(kind="popk", popk_pool=5, popk_bucket_hours=2.0, popk_window_hours=6.0)
    popular = PopularNews(ClickCounter(items, times), 40, np.array([start, start + 20 * 3600]), cfg)
    assert len(popular.top) == 11
    assert (popular.at(np.array([start + 10])) == -1).all()  # nothing clicked before the first bucket
    for offset in (3 * 3600 + 5, 11 * 3600, 19 * 3600):
        bucket_start = start + (offset // 7200) * 7200
        recent = (times < bucket_start) & (times >= bucket_start - 6 * 3600)
        counts = np.bincount(items[recent], minlength=40)
        top = popular.at(np.array([start + offset]))[0]
        assert sorted(counts[top].tolist(), reverse=True) == sorted(counts.tolist(), reverse=True)[:5]


def _popular_toy(count: int, mode: str, clicks: tuple[int, ...] = (3, 3, 3, 5, 5, 8),
                 pool: int = 2) -> tuple[ImpressionSet, Clicks, SamplerConfig, PopularNews]:
    impressions = toy_impressions()
    counter = ClickCounter(np.array(clicks), np.zeros(len(clicks), np.int64))
    cfg = SamplerConfig(kind="popk", popk_count=count, popk_mode=mode, popk_pool=pool, popk_bucket_hours=1.0,
                        popk_window_hours=None)
    return impressions, Clicks.of(impressions), cfg, PopularNews(counter, 10, impressions.time, cfg)


def _draws(impressions: ImpressionSet, clicks: Clicks, cfg: SamplerConfig, popular: PopularNews) -> np.ndarray:
    return np.stack([draw_candidates(impressions, clicks, 4, cfg, popular, np.random.default_rng(seed))
                     for seed in range(400)])


def test_popk_replace_swaps_popular_news_into_the_first_negatives_but_never_a_clicked_one() -> None:
    impressions, clicks, cfg, popular = _popular_toy(2, "replace")
    # 3 and 5 are the popular pair after time 0; clicks: news 0 (time 0), 5 (impression negatives 4, 6), 7 and 8
    drawn = _draws(impressions, clicks, cfg, popular)
    assert drawn.shape == (400, 4, 5)
    assert set(drawn[:, 0, 1:].ravel().tolist()) <= {1, 2, 3}  # time 0: nothing is popular yet
    assert set(drawn[:, :, 3:].ravel().tolist()) <= {1, 2, 3, 4, 6, 9}  # slots past popk_count: impression only
    clicked_five = drawn[:, 1, 1:3]
    # 5 is clicked there, so 3 is the only popular draw: one slot holds it, the other its impression negative
    assert 5 not in clicked_five and ((clicked_five == 3).sum(axis=1) == 1).all()
    later = drawn[:, 2:, 1:3]
    assert (np.sort(later, axis=-1) == [3, 5]).all()  # both popular news, each once: drawn without replacement
    with pytest.raises(ValueError, match="popk_count"):
        draw_candidates(impressions, clicks, 4, SamplerConfig(kind="popk", popk_count=5, popk_mode="replace"),
                        popular, np.random.default_rng(1))


def test_popk_add_keeps_the_impression_negatives_and_adds_popular_news_the_user_never_clicked() -> None:
    # the pool after time 0: 3, 5, 8 and 1; impression 1 has 1 in its history and clicked 5, impression 2 clicked 8
    impressions, clicks, cfg, popular = _popular_toy(2, "add", clicks=(3, 3, 3, 5, 5, 8, 8, 1, 1), pool=4)
    uniform = _draws(impressions, clicks, SamplerConfig(), None)
    drawn = _draws(impressions, clicks, cfg, popular)
    assert drawn.shape == (400, 4, 7)  # 1 + 4 impression negatives + 2 popular
    assert (drawn[:, :, :5] == uniform).all()  # the impression's negatives are the uniform sampler's, untouched
    added = drawn[:, :, 5:]
    clicked_or_history = {0: {0, 9, 8, 6, 5}, 1: {5, 1, 2}, 2: {7, 8}}
    non_clicked = {0: {1, 2, 3}, 1: {4, 6}, 2: {9}}
    for sample, owner in enumerate(clicks.owner.tolist()):
        popular_now = {1, 3, 5, 8} if sample else set()
        for a, b in added[:, sample].tolist():
            assert not {a, b} & clicked_or_history[owner], (sample, a, b)
            # popular picks are distinct; a slot the pool cannot fill gets an impression negative
            assert {a, b} <= (popular_now | non_clicked[owner]) and (a != b or a in non_clicked[owner])
    assert (np.sort(added[:, 1], axis=-1) == [3, 8]).all()  # impression 1: 1 (history) and 5 (clicked) barred
    assert set(added[:, 2:].ravel().tolist()) == {1, 3, 5}  # impression 2: 8 clicked there, 1 allowed
    assert draw_candidates(impressions, clicks, 4, dataclasses.replace(cfg, popk_count=6), popular,
                           np.random.default_rng(0)).shape == (4, 11)  # add mode: more popular than negatives
    with pytest.raises(ValueError, match="popk_mode"):
        draw_candidates(impressions, clicks, 4, dataclasses.replace(cfg, popk_mode="swap"), popular,
                        np.random.default_rng(0))


def _batches(split: SplitArrays, rank: int = 0, world: int = 1) -> TrainBatches:
    return TrainBatches(split, 4, SamplerConfig(), None, 2, 3, seed=5, rank=rank, world_size=world)


def test_batches_are_deterministic_sharded_and_resume_mid_epoch(tiny: tuple[Path, Path]) -> None:
    prepared, _ = tiny
    impressions = load_impressions(prepared, "train", load_catalog(prepared))
    split = SplitArrays(impressions, np.zeros(impressions.size, np.int64))
    first, again = list(_batches(split)), list(_batches(split))
    assert all(torch.equal(a["candidates"], b["candidates"]) for a, b in zip(first, again))
    second_epoch = _batches(split)
    second_epoch.load_state_dict({"epoch": 0, "position": len(second_epoch)})
    assert not torch.equal(next(iter(second_epoch))["candidates"], first[0]["candidates"])
    resumed = _batches(split)
    resumed.load_state_dict({"epoch": 0, "position": 7})
    assert all(torch.equal(a["history"], b["history"]) for a, b in zip(first[7:], resumed))
    ranks = [list(_batches(split, rank, 2)) for rank in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == len(first) // 2
    pairs = {tuple(row.tolist()) for shard in ranks for batch in shard for row in batch["candidates"]}
    assert len(pairs) > 0.95 * 2 * len(ranks[0]) * 2


@pytest.mark.parametrize("sampler", [SamplerConfig(), SamplerConfig(kind="popk", popk_count=2, popk_pool=20)])
def test_int32_news_codes_make_the_same_int64_batches(sampler: SamplerConfig, tiny: tuple[Path, Path]) -> None:
    """The training split is held with int32 codes (MIND-large's memory): its batches, uniform and POPK (whose
    exclusion keys combine impressions and codes), equal those of int64 codes, as int64 tensors."""
    prepared, _ = tiny
    catalog = load_catalog(prepared)
    wide, narrow = (load_impressions(prepared, "train", catalog, codes=dtype) for dtype in (np.int64, np.int32))
    assert narrow.candidates.dtype == narrow.history.dtype == np.int32
    assert np.array_equal(wide.candidates, narrow.candidates) and np.array_equal(wide.history, narrow.history)
    batches = []
    for impressions in (wide, narrow):
        items, times = impressions.clicks()
        popular = PopularNews(ClickCounter(items, times), catalog.size, impressions.time, sampler)
        split = SplitArrays(impressions, np.zeros(impressions.size, np.int64))
        batches.append(list(TrainBatches(split, 4, sampler, popular, 8, 5, seed=5)))
    for a, b in zip(*batches, strict=True):
        assert all(b[key].dtype == torch.int64 and torch.equal(a[key], b[key]) for key in a)


def small_model_cfg(name: str) -> ModelConfig:
    cfg = as_object(load_config([f"model={name}", "model.news.dim=16", "model.news.heads=2", "model.user.heads=2",
                                 "model.news.attention_dim=8", "model.news.glove_init=false",
                                 "model.news.word_dim=8", "model.scorer.hidden=[16]"]).model)
    return cfg


def random_inputs(rows: int = 30) -> tuple[NewsInputs, UserInputs]:
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(1, 50, (rows, 20), generator=generator)
    tokens[0] = 0
    news = NewsInputs(rows=rows, words={"title": tokens, "abstract": tokens.flip(1)},
                      word_vectors=torch.randn(50, 8, generator=generator),
                      categories={"category": torch.arange(rows) % 4, "subcategory": torch.arange(rows) % 7})
    return news, UserInputs(rows=6, trained=torch.tensor([False, True, True, True, True, False]))


@pytest.mark.parametrize("name", MODELS)
def test_models_ignore_history_padding_and_score_per_candidate(name: str) -> None:
    news, users = random_inputs()
    model = Recommender(small_model_cfg(name), news, users, max_history=6).eval()
    history = torch.tensor([[3, 4, 5, 0, 0, 0], [7, 0, 0, 0, 0, 0]])
    candidates = torch.tensor([[10, 11, 12], [13, 14, 15]])
    user_rows = torch.tensor([1, 5])
    scores = model(history, candidates, user_rows)
    assert scores.shape == (2, 3)
    shorter = model(history[:, :4], candidates, user_rows)
    torch.testing.assert_close(scores, shorter, rtol=1e-5, atol=1e-5)
    alone = model(history[:1], candidates[:1, 1:2], user_rows[:1])  # a candidate's score ignores the others
    torch.testing.assert_close(scores[:1, 1:2], alone, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", MODELS)
def test_every_model_takes_the_interest_fusion_with_empty_profiles(name: str) -> None:
    """GENRE's arms other than UP keep UP's fusion module with empty profiles (the same network)."""
    news, _ = random_inputs()
    cfg = small_model_cfg(name)
    cfg.interest.enabled, cfg.interest.profiles_path = True, None
    users, coverage = user_features([f"U{index}" for index in range(5)], np.array([True] * 4 + [False]), cfg.interest)
    assert coverage == {"profiles": {"found": 0, "missing": 5}}
    assert users.topics is not None and users.regions is not None
    assert users.topics.shape == (6, cfg.interest.max_topics) and not users.topics.any() and not users.regions.any()
    model = Recommender(cfg, news, users, max_history=6).eval()
    assert model.interest is not None
    scores = model(torch.tensor([[3, 4, 5, 0, 0, 0], [7, 0, 0, 0, 0, 0]]), torch.tensor([[10, 11, 12], [13, 14, 15]]),
                   torch.tensor([1, 5]))
    assert scores.shape == (2, 3) and torch.isfinite(scores).all()


def test_cross_network_and_pnn_match_their_formulas() -> None:
    torch.manual_seed(0)
    cross, x0 = CrossNetwork(6, 2), torch.randn(3, 6)
    x = x0
    for w, b in zip(cross.weights, cross.biases):
        x = torch.stack([x0[i] * torch.dot(x[i], w) + b + x[i] for i in range(3)])
    torch.testing.assert_close(cross(x0), x)
    pnn = PNNScorer(4, ScorerConfig(kind="pnn", fields=2, hidden=[]), 0.0)
    user, candidate = torch.randn(1, 4), torch.randn(1, 1, 4)
    fields = torch.cat([user[0], candidate[0, 0]]).reshape(4, 2)
    products = [torch.dot(fields[a], fields[b]) for a, b in itertools.combinations(range(4), 2)]
    expected = pnn.net(torch.cat([user[0], candidate[0, 0], torch.stack(products)]))
    torch.testing.assert_close(pnn(user, candidate)[0, 0], expected[0])


def test_din_split_first_layer_equals_its_formula_over_the_concatenated_pair() -> None:
    torch.manual_seed(0)
    din = DINUser(4, UserEncoderConfig(din_hidden=[5, 3]))
    history, candidates, mask = torch.randn(2, 3, 4), torch.randn(2, 2, 4), torch.tensor([[1, 1, 0], [1, 0, 0]]) > 0
    h = history.unsqueeze(1).expand(-1, 2, -1, -1)
    c = candidates.unsqueeze(2).expand_as(h)
    weights = din.activation(torch.cat([h, c, h - c, h * c], dim=-1)).squeeze(-1) * mask.unsqueeze(1)
    torch.testing.assert_close(din(history, mask, candidates, None), (weights.unsqueeze(-1) * h).sum(2))


@pytest.mark.parametrize("name", ["nrms", "lstur", "din", "bst"])
def test_fast_scoring_equals_the_training_forward(name: str, tiny: tuple[Path, Path]) -> None:
    """Scoring in batches of similar impressions with histories cut to the batch's longest gives every impression
    what the training forward gives it: all impressions in one batch, stored order, full history width."""
    prepared, _ = tiny
    catalog = load_catalog(prepared)
    impressions = load_impressions(prepared, "dev", catalog)
    cfg = small_model_cfg(name)
    news, _ = news_features(catalog, prepared, cfg, seed=0)
    users = UserInputs(rows=2, trained=torch.tensor([False, True]))
    model = Recommender(cfg, news, users, max_history=10).eval()
    split = SplitArrays(impressions, np.ones(impressions.size, np.int64))
    scores = score_split(model, split, news.rows, 10, batch_impressions=7, device=torch.device("cpu"))
    assert scores.shape == impressions.candidates.shape
    everything = np.arange(impressions.size)
    lengths = np.diff(impressions.offsets)
    slots = np.arange(lengths.max())
    valid = slots < lengths[:, None]
    candidates = np.where(valid, impressions.candidates[np.where(valid, impressions.offsets[:-1, None] + slots, 0)], -1)
    history = torch.from_numpy(history_rows(impressions, everything, 10))
    with torch.no_grad():
        direct = model(history, torch.from_numpy(candidates + 1), torch.ones(impressions.size, dtype=torch.long))
    np.testing.assert_allclose(scores, direct.numpy()[valid], rtol=1e-4, atol=1e-5)


def test_keyword_vectors_average_each_news_items_keywords(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    prepared, keywords = tiny
    catalog = load_catalog(prepared)
    import pyarrow.parquet as pq

    table = pq.read_table(keywords)
    words = sorted({word for row in table["keywords"].to_pylist() for word in row})
    matrix = np.random.default_rng(0).normal(size=(len(words), 3)).astype(np.float32)
    write_vectors(tmp_path, words, matrix)
    vectors, coverage = vector_source(catalog, str(tmp_path), str(keywords))
    assert coverage["keyed_by"] == "keyword" and coverage["found"] + coverage["missing"] == catalog.size
    first = table.slice(0, 1).to_pylist()[0]
    code = catalog.ids.to_pylist().index(first["news_id"])
    expected = matrix[[words.index(word) for word in first["keywords"]]].mean(axis=0)
    np.testing.assert_allclose(vectors[code + 1].numpy(), expected, rtol=1e-6)
    news_keyed = tmp_path / "news"
    news_keyed.mkdir()
    write_vectors(news_keyed, catalog.ids.to_pylist()[:10], np.ones((10, 2)))
    vectors, coverage = vector_source(catalog, str(news_keyed), str(keywords))
    assert coverage == {"keyed_by": "news", "found": 10, "missing": catalog.size - 10}
    assert vectors[1:11].sum() == 20 and vectors[11:].sum() == 0


@pytest.mark.parametrize("fusion", ["add", "concat", "attention"])
def test_vector_fusion_normalises_each_source_and_learns_an_unseen_vector(fusion: str) -> None:
    """Sources of very different scales weigh alike after their layer norm; a news a source has no vector for (an
    all-zero row) gets that source's learned unseen vector, shared by every such news and trained by the loss."""
    from newsrec_dist.models.news import VectorsView

    torch.manual_seed(0)
    llm, graph = torch.randn(6, 8) * 1000.0, torch.randn(6, 4) * 0.001  # rows 0..5; row 0 is padding
    graph[[3, 4]] = 0.0  # news 3 and 4 never read before the graphs' cut
    cfg = as_object(load_config(["model=lecop"]).model).news
    cfg.dim = 16
    view = VectorsView([llm, graph], fusion, cfg)
    per_source = view.source_vectors(torch.arange(1, 6))
    norms = per_source[[0, 1, 4], :, :].norm(dim=-1)  # found in both sources: same norm (sqrt(dim)) despite scale
    torch.testing.assert_close(norms, torch.full_like(norms, 16 ** 0.5), rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(per_source[2, 1], per_source[3, 1])  # news 3 and 4: the graph's unseen vector
    torch.testing.assert_close(per_source[2, 1], view.unseen[1].detach())
    assert not torch.equal(per_source[2, 0], per_source[3, 0])  # their LLM vectors still differ
    view(torch.tensor([3, 4])).sum().backward()
    assert view.unseen.grad[1].abs().sum() > 0 and view.unseen.grad[0].abs().sum() == 0
    out = view(torch.tensor([[1, 2], [3, 5]]))
    assert out.shape == (2, 2, 16)
    if fusion == "add":
        torch.testing.assert_close(out[0, 0], per_source[0].sum(0))
    with pytest.raises(ValueError, match="fusion must be add, concat or attention"):
        VectorsView([llm], "sum", cfg)


def test_plm_top_layers_on_cached_states_equal_the_full_model(tiny: tuple[Path, Path]) -> None:
    from transformers import AutoModel, AutoTokenizer

    from newsrec_dist.encoder.models import minilm_path

    prepared, _ = tiny
    catalog = load_catalog(prepared)
    cfg = as_object(load_config(["model=plm_nr", "model.news.plm.trainable_layers=2"]).model)
    news, _ = news_features(catalog, prepared, cfg, seed=0)
    states, mask = news.plm_hidden["title"]
    assert states.shape[0] == catalog.size + 1 and not mask[0].any()
    tokenizer, full = AutoTokenizer.from_pretrained(str(minilm_path())), AutoModel.from_pretrained(str(minilm_path()))
    import pyarrow.parquet as pq

    titles = pq.read_table(prepared / "news.parquet", columns=["title"])["title"].to_pylist()[:4]
    batch = tokenizer(titles, truncation=True, max_length=24, padding="max_length", return_tensors="pt")
    with torch.no_grad():
        expected = full(**batch).last_hidden_state
        ours = news.plm_top.eval()(states[1:5], mask[1:5])
    keep = batch["attention_mask"].bool()
    torch.testing.assert_close(ours[keep], expected[keep], rtol=1e-4, atol=1e-4)


def test_plm_lora_trains_only_the_adapters(tiny: tuple[Path, Path]) -> None:
    prepared, _ = tiny
    catalog = load_catalog(prepared)
    cfg = as_object(load_config(["model=plm_nr", "model.news.plm.lora_r=4"]).model)
    news, _ = news_features(catalog, prepared, cfg, seed=0)
    trainable = [name for name, p in news.plm_top.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in name for name in trainable)
    model = Recommender(cfg, news, UserInputs(rows=2, trained=torch.tensor([False, True])), max_history=5)
    logits = model(torch.tensor([[1, 2, 0, 0, 0]]), torch.tensor([[3, 4]]), torch.tensor([1]))
    logits.sum().backward()
    grads = {name: p.grad for name, p in news.plm_top.named_parameters()}
    assert all((grads[name] is not None) == ("lora_" in name) for name in grads)


def test_plm_top_layers_train_at_their_own_rate(tiny: tuple[Path, Path]) -> None:
    """Adam's groups: the pretrained top layer at model.news.plm.lr, every new layer at train.lr, each parameter once."""
    prepared, _ = tiny
    catalog = load_catalog(prepared)
    cfg = as_object(load_config(["model=plm_nr", "model.news.plm.lr=2e-5"]).model)
    news, _ = news_features(catalog, prepared, cfg, seed=0)
    model = Recommender(cfg, news, UserInputs(rows=2, trained=torch.tensor([False, True])), max_history=5)
    groups = parameter_groups(model, lr=1e-3)
    top = {id(p) for p in news.plm_top.parameters()}
    assert [group["lr"] for group in groups] == [1e-3, 2e-5]
    assert {id(p) for p in groups[1]["params"]} == top and not top & {id(p) for p in groups[0]["params"]}
    assert sum(len(group["params"]) for group in groups) == len(list(model.parameters()))
    before = [p.detach().clone() for p in groups[1]["params"]]
    optimizer = torch.optim.Adam(groups)
    model(torch.tensor([[1, 2, 0, 0, 0]]), torch.tensor([[3, 4]]), torch.tensor([1])).sum().backward()
    optimizer.step()
    steps = [float((p.detach() - b).abs().max()) for p, b in zip(groups[1]["params"], before)]
    assert max(steps) <= 2e-5 * 1.01 and max(steps) > 1e-6  # Adam's first step moves a weight by at most its rate
