"""The MIND-format generator: counts, format, determinism, planted signal, resume after kill -9."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from newsrec_dist.config import SynthConfig
from newsrec_dist.data.prepare import prepare
from newsrec_dist.data.synth import SCALES, generate, resolve_scale
from newsrec_dist.data.vocabulary import build_word_lists, word_lists
from newsrec_dist.encoder.glove import TOKEN, load_glove
from newsrec_dist.io import PROGRESS_NAME
from newsrec_dist.eval.evaluate import run_baselines

TIME_FORMAT = "%m/%d/%Y %I:%M:%S %p"


def read_behaviors_tsv(path: Path) -> pd.DataFrame:
    frame = pd.read_csv(path, sep="\t", header=None, quoting=3, keep_default_na=False, dtype=str,
                        names=["impression_id", "user_id", "time", "history", "impressions"])
    frame["time"] = pd.to_datetime(frame["time"], format=TIME_FORMAT)
    return frame


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("synth") / "tiny"
    return out, generate(SynthConfig(scale="tiny"), out, show_progress=False)


def test_counts_match_the_requested_scale(tiny: tuple[Path, dict]) -> None:
    out, stats = tiny
    spec = SCALES["tiny"]
    train = read_behaviors_tsv(out / "train" / "behaviors.tsv")
    dev = read_behaviors_tsv(out / "dev" / "behaviors.tsv")
    news = pd.read_csv(out / "train" / "news.tsv", sep="\t", header=None, quoting=3, dtype=str)
    assert len(train) + len(dev) == spec.n_impressions == stats["impressions"]
    assert pd.concat([train, dev])["user_id"].nunique() == spec.n_users
    assert news[0].nunique() == len(news) == spec.n_news
    clicks = sum(token.endswith("-1") for row in pd.concat([train, dev])["impressions"] for token in row.split())
    assert clicks == stats["clicks"]
    assert abs(clicks / spec.n_impressions - spec.clicks_per_impression) < 0.1


def test_every_impression_has_a_click_and_a_non_click(tiny: tuple[Path, dict]) -> None:
    out, _ = tiny
    for split in ("train", "dev"):
        for row in read_behaviors_tsv(out / split / "behaviors.tsv")["impressions"]:
            labels = [token[-1] for token in row.split()]
            assert "1" in labels and "0" in labels, row
            ids = [token[:-2] for token in row.split()]
            assert len(ids) == len(set(ids)), "a candidate repeats inside one impression"


def test_train_dev_split_is_by_time(tiny: tuple[Path, dict]) -> None:
    out, _ = tiny
    train = read_behaviors_tsv(out / "train" / "behaviors.tsv")
    dev = read_behaviors_tsv(out / "dev" / "behaviors.tsv")
    assert train["time"].max() < dev["time"].min()
    assert list(train["impression_id"].astype(int)) == list(range(1, len(train) + 1))


def test_histories_reference_known_news_and_cold_users_exist(tiny: tuple[Path, dict]) -> None:
    out, stats = tiny
    news_ids = set(pd.read_csv(out / "train" / "news.tsv", sep="\t", header=None, quoting=3, dtype=str)[0])
    behaviors = pd.concat([read_behaviors_tsv(out / split / "behaviors.tsv") for split in ("train", "dev")])
    per_user = behaviors.drop_duplicates("user_id")["history"].str.split()
    lengths = per_user.map(lambda h: len(h) if isinstance(h, list) else 0)
    assert all(token in news_ids for history in per_user.dropna() for token in history)
    assert all(len(history) == len(set(history)) for history in per_user.dropna())
    assert abs((lengths <= 3).mean() - SynthConfig().cold_user_share) < 0.08
    assert abs((lengths <= 3).mean() - stats["short_history_user_share"]) < 1e-9


def test_output_is_valid_mind_with_zero_rejects(tiny: tuple[Path, dict], tmp_path: Path) -> None:
    out, stats = tiny
    result = prepare(out, tmp_path / "prepared", ["train", "dev"], strict=True, show_progress=False)
    assert result.summary["rows_rejected"] == 0
    assert sum(result.summary["behaviors_rows"].values()) == stats["impressions"]
    for entry in result.summary["files"]:
        assert entry.get("unknown_history_ids", 0) == 0 and entry.get("unknown_impressions_ids", 0) == 0


def test_same_seed_same_bytes_other_seed_differs(tiny: tuple[Path, dict], tmp_path: Path) -> None:
    out, _ = tiny
    again = tmp_path / "again"
    generate(SynthConfig(scale="tiny"), again, show_progress=False)
    other = tmp_path / "other"
    generate(SynthConfig(scale="tiny", seed=8), other, show_progress=False)
    for relative in ("train/behaviors.tsv", "dev/behaviors.tsv", "train/news.tsv"):
        assert (again / relative).read_bytes() == (out / relative).read_bytes()
    assert (other / "train/behaviors.tsv").read_bytes() != (out / "train/behaviors.tsv").read_bytes()


def test_rerun_with_same_config_is_a_no_op(tiny: tuple[Path, dict]) -> None:
    out, stats = tiny
    before = (out / "train" / "behaviors.tsv").stat().st_mtime_ns
    assert generate(SynthConfig(scale="tiny"), out, show_progress=False) == stats
    assert (out / "train" / "behaviors.tsv").stat().st_mtime_ns == before


def test_invalid_scale_and_counts_are_rejected() -> None:
    with pytest.raises(ValueError, match="unknown synth scale"):
        resolve_scale(SynthConfig(scale="huge"))
    with pytest.raises(ValueError, match="n_impressions must be >= n_users"):
        resolve_scale(SynthConfig(scale="tiny", n_users=10, n_impressions=5))


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("synth") / "small"
    return out, generate(SynthConfig(scale="small"), out, show_progress=False)


def test_planted_signal_oracle_beats_content_beats_popularity_beats_random(
    small: tuple[Path, dict], tmp_path: Path
) -> None:
    """The difficulty the brief asks for (popularity ~0.55-0.65 AUC, a content profile clearly above), and the
    generator's oracle (true utilities, never seen by a model) above every baseline."""
    raw, stats = small
    prepare(raw, tmp_path / "prepared", ["train", "dev"], show_progress=False)
    payload = run_baselines(tmp_path / "prepared", tmp_path / "eval",
                            ["random", "popularity", "category_profile", "oracle"], "dev", ["train", "dev"], 3, 10, 0,
                            False, raw / "oracle")
    auc = {name: groups["all"]["auc"] for name, groups in payload["models"].items()}
    assert abs(auc["random"] - 0.5) < 0.03
    assert 0.53 <= auc["popularity"] <= 0.65
    assert auc["category_profile"] >= auc["popularity"] + 0.05
    assert auc["oracle"] >= max(auc["category_profile"], auc["popularity"]) + 0.1
    assert abs(auc["oracle"] - stats["dev_signal_auc"]["oracle"]) < 1e-6, "the eval's oracle row is the generator's"
    warm = payload["models"]["category_profile"]["warm"]["auc"]
    new = payload["models"]["category_profile"]["new"]["auc"]
    assert warm > new + 0.08, "history-based content signal must help warm users more than cold ones"


def test_eval_leaves_the_oracle_out_where_the_data_has_none(small: tuple[Path, dict], tmp_path: Path) -> None:
    raw, _ = small
    prepare(raw, tmp_path / "prepared", ["train", "dev"], show_progress=False)
    payload = run_baselines(tmp_path / "prepared", tmp_path / "eval", ["random", "oracle"], "dev", ["train", "dev"],
                            3, 10, 0, False, tmp_path / "no-oracle")
    assert list(payload["models"]) == ["random"] and "no oracle" in payload["notes"]["oracle"]


def latent_news(raw: Path) -> pd.DataFrame:
    news = pd.read_csv(raw / "train" / "news.tsv", sep="\t", header=None, quoting=3, dtype=str,
                       names=["news_id", "category", "subcategory", "title", "abstract", "url", "te", "ae"])
    return news.merge(pd.read_parquet(raw / "oracle" / "news.parquet"), on="news_id", validate="1:1")


def test_text_is_real_words_glove_knows() -> None:
    """≥ 95 % of the generated tokens are in GloVe's vocabulary, and the committed word lists are what
    `python -m newsrec_dist.data.vocabulary` builds from GloVe today (one subcategory per word)."""
    assert build_word_lists() == word_lists()
    words = [word for lists in word_lists().values() for kind in ("topic", "story") for word in lists[kind]]
    assert len(words) == len(set(words))


def test_glove_covers_the_generated_text(tiny: tuple[Path, dict]) -> None:
    out, _ = tiny
    vocabulary, _ = load_glove()
    news = latent_news(out)
    tokens = [token for text in (news["title"] + " " + news["abstract"]) for token in TOKEN.findall(text.lower())]
    coverage = sum(token in vocabulary for token in tokens) / len(tokens)
    assert coverage >= 0.95, coverage


def test_stories_sit_below_the_subcategory_and_name_their_words_in_some_titles(small: tuple[Path, dict]) -> None:
    raw, stats = small
    news = latent_news(raw)
    per_story = news.groupby("story")
    assert (per_story["subcategory"].nunique() == 1).all(), "a story belongs to one subcategory"
    stories_per_sub = news.groupby("subcategory")["story"].nunique()
    assert stories_per_sub.median() >= 10, "story membership is not recoverable from the subcategory"
    sizes = per_story.size()
    assert 5 <= sizes.mean() <= 12 and sizes.max() >= 20 and stats["stories"] == len(sizes)
    mentions = [(word in title.lower().split(), word in abstract.lower().split())
                for title, abstract, story_words in zip(news["title"], news["abstract"], news["story_words"])
                for word in story_words]
    title_share, abstract_share = np.mean(mentions, axis=0)
    share = SynthConfig().story_word_share
    assert abs(title_share - share) < 0.05 and abs(abstract_share - share) < 0.06  # "in some titles, not all"
    placed = news[news["place"].notna()]
    assert abs(len(placed) / len(news) - SynthConfig().place_share) < 0.1
    named = np.mean([place in title.lower().split() for place, title in zip(placed["place"], placed["title"])])
    assert abs(named - share) < 0.05
    for row in news.itertuples():
        assert_entities_are_the_named_story_words(row.title, json.loads(row.te), [*row.story_words, row.place])
        assert_entities_are_the_named_story_words(row.abstract, json.loads(row.ae), [*row.story_words, row.place])


def assert_entities_are_the_named_story_words(text: str, entities: list[dict], story_names: list) -> None:
    """MIND's entity list names exactly the story words and place the text contains, at every offset."""
    tokens = text.lower().rstrip(".").split(" ")
    starts = np.cumsum([0] + [len(token) + 1 for token in tokens[:-1]])
    expected = {name: [int(s) for s, token in zip(starts, tokens) if token == name]
                for name in story_names if isinstance(name, str) and name in tokens}
    assert {entity["Label"].lower(): entity["OccurrenceOffsets"] for entity in entities} == expected, text
    for entity in entities:
        assert entity["Type"] in ("O", "G") and entity["WikidataId"].startswith("Q")
        assert [text[o:o + len(entity["Label"])].lower() for o in entity["OccurrenceOffsets"]] == \
            [entity["Label"].lower()] * len(entity["OccurrenceOffsets"])


def history_pairs_in_one_story(raw: Path) -> float:
    story = pd.read_parquet(raw / "oracle" / "news.parquet").set_index("news_id")["story"]
    behaviors = pd.concat([read_behaviors_tsv(raw / split / "behaviors.tsv") for split in ("train", "dev")])
    same = total = 0
    for history in behaviors.drop_duplicates("user_id")["history"]:
        stories = story.reindex(history.split()).to_numpy() if history else np.zeros(0)
        same += int((stories[1:] == stories[:-1]).sum())
        total += max(len(stories) - 1, 0)
    return same / total


def home_region_click_share(raw: Path) -> float:
    region = pd.read_parquet(raw / "oracle" / "news.parquet").set_index("news_id")["region"]
    home = pd.concat([pd.read_parquet(part) for part in sorted((raw / "oracle" / "users").glob("*.parquet"))])
    home = home.set_index("user_id")["home_region"]
    behaviors = pd.concat([read_behaviors_tsv(raw / split / "behaviors.tsv") for split in ("train", "dev")])
    clicks = [(user, token[:-2]) for user, row in zip(behaviors["user_id"], behaviors["impressions"])
              for token in row.split() if token.endswith("-1")]
    users, items = zip(*clicks)
    return float(np.mean(region.reindex(items).to_numpy() == home.reindex(users).to_numpy()))


def test_histories_continue_stories_and_clicks_favour_the_home_region(small: tuple[Path, dict], tmp_path: Path) -> None:
    """Planted sessions and regions are in the files, and turning their knob off removes them."""
    raw, stats = small
    continuation = history_pairs_in_one_story(raw)
    assert abs(continuation - stats["history_story_continuation_rate"]) < 1e-9
    assert continuation >= 0.5 * SynthConfig().story_continuation  # repeats of one item are dropped
    home_share = home_region_click_share(raw)
    assert abs(home_share - stats["home_region_click_share"]) < 1e-9
    flat = tmp_path / "flat"
    off = generate(SynthConfig(scale="small", story_continuation=0.0, region_weight=0.0), flat, show_progress=False)
    assert history_pairs_in_one_story(flat) < 0.1 < continuation - 0.1
    assert home_region_click_share(flat) < home_share - 0.03
    assert off["dev_signal_auc"]["region"] < 0.51 < stats["dev_signal_auc"]["region"] - 0.01


@pytest.mark.parametrize(("signal", "knobs"), [
    ("story", {"story_weight": 0.0, "exposure_followed_share": 0.0}),
    ("popularity", {"popularity_weight": 0.0, "conformity_share": 0.0}),
    ("interest", {"affinity_weight": 0.0, "story_weight": 0.0}),  # followed stories are of liked subcategories
])
def test_each_signal_carries_lift_that_its_knob_removes(small: tuple[Path, dict], tmp_path: Path, signal: str,
                                                         knobs: dict[str, float]) -> None:
    """Each planted signal alone beats random on dev; with its knob at 0 its lift is gone (within noise)."""
    _, stats = small
    lift = stats["dev_signal_auc"][signal] - 0.5
    off = generate(SynthConfig(scale="small", **knobs), tmp_path / "off", show_progress=False)
    assert lift >= 0.007, stats["dev_signal_auc"]
    assert abs(off["dev_signal_auc"][signal] - 0.5) < 0.3 * lift, off["dev_signal_auc"]
    assert stats["dev_signal_auc"]["oracle"] > max(value for name, value in stats["dev_signal_auc"].items()
                                                   if name != "oracle") + 0.03


def test_cold_news_and_users_are_counted(small: tuple[Path, dict]) -> None:
    raw, stats = small
    train = read_behaviors_tsv(raw / "train" / "behaviors.tsv")
    dev = read_behaviors_tsv(raw / "dev" / "behaviors.tsv")
    seen_in_train = {token[:-2] for row in train["impressions"] for token in row.split()}
    seen_in_train |= {token for row in train["history"] for token in row.split()}
    dev_candidates = [token[:-2] for row in dev["impressions"] for token in row.split()]
    never_in_train = np.mean([news not in seen_in_train for news in dev_candidates])
    cold = stats["cold"]
    assert cold["news_published_on_dev_days"] > 0
    assert 0.05 <= cold["dev_candidate_share_of_dev_day_news"] <= never_in_train
    assert cold["dev_only_users"] == len(set(dev["user_id"]) - set(train["user_id"])) > 0
    assert cold["dev_users"] == dev["user_id"].nunique()


def test_resume_after_kill_matches_an_uninterrupted_run(tmp_path: Path) -> None:
    cfg = SynthConfig(scale="small", chunk_impressions=1500)
    reference = tmp_path / "reference"
    generate(cfg, reference, show_progress=False)
    target = tmp_path / "killed"
    command = [sys.executable, "-m", "newsrec_dist.cli", "data", "synth", "--quiet", "--scale", "small",
               "--out", str(target), "data.synth.chunk_impressions=1500"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    progress_file = tmp_path / f".partial-{target.name}" / PROGRESS_NAME
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if progress_file.is_file() and json.loads(progress_file.read_text())["state"]["next_chunk"] >= 3:
            break
        time.sleep(0.005)
    assert process.poll() is None, f"finished before it could be killed: {process.stderr.read()!r}"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not target.exists() and json.loads(progress_file.read_text())["state"]["next_chunk"] >= 3
    resumed = generate(replace(cfg), target, show_progress=False)
    for relative in ("train/behaviors.tsv", "dev/behaviors.tsv", "dev/news.tsv"):
        assert (target / relative).read_bytes() == (reference / relative).read_bytes(), relative
    for kind in ("dev", "users"):  # the oracle's side files are resumed too, one file per chunk
        parts = [sorted((root / "oracle" / kind).glob("*.parquet")) for root in (target, reference)]
        assert [p.name for p in parts[0]] == [p.name for p in parts[1]]
        assert all(pd.read_parquet(a).equals(pd.read_parquet(b)) for a, b in zip(*parts))
    assert resumed == json.loads((reference / "synth_stats.json").read_text())
    assert resumed["impressions"] == SCALES["small"].n_impressions
    lines = (target / "train/behaviors.tsv").read_text().splitlines()
    assert len({line.split("\t")[0] for line in lines}) == len(lines)
    assert np.all(np.diff([int(line.split("\t")[0]) for line in lines]) == 1)
