"""The generation tasks: which rows each asks about, and the dataset contract its answers become.

- ``keywords`` (LECOP): news → ``keywords.parquet`` in the graph stage's contract (news_id, keywords),
  with a ``source`` column; news the LLM did not cover or failed on get TF-IDF keywords (configurable).
- ``summarize`` (GENRE MIND-NS): news → ``news.parquet`` with ``title_enhanced`` (the original title
  where the LLM failed; ``title_source`` says which).
- ``item_profile`` (PFR): news → ``profiles.parquet`` (news_id, profile, source): what the item is about and who
  would like it; news the LLM did not cover or failed on get a profile made from their own category and text
  (``source`` = ``text``), so every item has one to embed.
- ``profile`` (GENRE MIND-UP): users with a history → ``profiles.parquet`` (user_id, topics, regions).
- ``news`` (GENRE MIND-NG) and ``chain`` (profile → generator): cold users → ``synthetic_news.parquet``
  and ``prepared/``, a prepared dataset whose news include the synthetic items and whose cold users'
  histories end with them, so every later stage can train on it by ``data.prepared_dir``.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from newsrec_dist.config import GenerateTasksConfig
from newsrec_dist.data import schema
from newsrec_dist.data.prepare import BEHAVIORS_DIR, NEWS_FILE, read_behaviors, read_news_table
from newsrec_dist.generate.engine import TaskRows
from newsrec_dist.generate.prompts import PromptTemplate, clean_text
from newsrec_dist.graphs.keywords import KEYWORDS_SCHEMA, tfidf_keywords

SYNTHETIC_SUBCATEGORY = "generated"


def _ok_answers(results: pa.Table) -> dict[str, dict]:
    return {row["row_id"]: json.loads(row["answer"]) for row in results.to_pylist() if row["status"] == "ok"}


def _first_news(news: pa.Table, limit: int | None, first: frozenset[str] = frozenset()
                ) -> tuple[pa.Table, dict[str, str]]:
    """The first ``limit`` news, ``first`` ones ahead, by id within each part; the rest with the reason they are
    not asked about."""
    later = pa.array([key not in first for key in news["news_id"].to_pylist()])
    ordered = news.append_column("_later", later).sort_by([("_later", "ascending"), ("news_id", "ascending")])
    ordered = ordered.drop_columns(["_later"])
    if limit is None:
        return ordered, {}
    rest = ordered.slice(limit)["news_id"].to_pylist()
    return ordered.slice(0, limit), dict.fromkeys(rest, "beyond generate.task.max_news")


def _terms(values: list[str], limit: int) -> list[str]:
    """Lower-case, single-spaced, distinct, in the model's order, at most ``limit``."""
    seen: list[str] = []
    for value in values:
        term = " ".join(value.lower().split())
        if len(term) >= 2 and term not in seen:
            seen.append(term)
    return seen[:limit]


# --- keywords --------------------------------------------------------------------------------------

def keywords_rows(news: pa.Table, template: PromptTemplate, knobs: GenerateTasksConfig,
                  first: frozenset[str] = frozenset()) -> TaskRows:
    chosen, skipped = _first_news(news, knobs.max_news, first)
    values = [{"title": clean_text(title, knobs.text_max_chars), "abstract": clean_text(abstract, knobs.text_max_chars),
               "max_keywords": str(knobs.max_keywords)}
              for title, abstract in zip(chosen["title"].to_pylist(), chosen["abstract"].to_pylist())]
    return TaskRows("keywords", template, chosen["news_id"].to_pylist(), [template.render(v) for v in values], skipped)


def keywords_outputs(results: pa.Table, news: pa.Table, knobs: GenerateTasksConfig) -> dict[str, pa.Table]:
    answers = {key: _terms(value["keywords"], knobs.max_keywords) for key, value in _ok_answers(results).items()}
    answers = {key: terms for key, terms in answers.items() if terms}
    fallback: dict[str, list[str]] = {}
    if knobs.keywords_fallback == "tfidf":
        table = tfidf_keywords(news, top_k=knobs.max_keywords)
        fallback = dict(zip(table["news_id"].to_pylist(), table["keywords"].to_pylist()))
    elif knobs.keywords_fallback != "none":
        raise ValueError(f"generate.task.keywords_fallback={knobs.keywords_fallback!r}; use tfidf or none")
    ids = [key for key in news["news_id"].to_pylist() if key in answers or key in fallback]
    table = pa.table({"news_id": ids, "keywords": [answers.get(key, fallback.get(key)) for key in ids]},
                     schema=KEYWORDS_SCHEMA)
    sources = pa.array(["llm" if key in answers else "tfidf" for key in ids], pa.string())
    return {"keywords.parquet": table.append_column("source", sources)}


# --- summarize ---------------------------------------------------------------------------------------

def summarize_rows(news: pa.Table, template: PromptTemplate, knobs: GenerateTasksConfig,
                   first: frozenset[str] = frozenset()) -> TaskRows:
    chosen, skipped = _first_news(news, knobs.max_news, first)
    messages = [template.render(values) for values in _news_values(chosen, knobs)]
    return TaskRows("summarize", template, chosen["news_id"].to_pylist(), messages, skipped)


def summarize_outputs(results: pa.Table, news: pa.Table) -> dict[str, pa.Table]:
    titles = {key: " ".join(value["title"].split()) for key, value in _ok_answers(results).items()}
    ids, originals = news["news_id"].to_pylist(), news["title"].to_pylist()
    enhanced = [titles.get(key, title) for key, title in zip(ids, originals)]
    sources = ["llm" if key in titles else "original" for key in ids]
    table = news.append_column("title_enhanced", pa.array(enhanced, pa.string()))
    return {"news.parquet": table.append_column("title_source", pa.array(sources, pa.string()))}


# --- item profiles (PFR) -------------------------------------------------------------------------------

def _news_values(news: pa.Table, knobs: GenerateTasksConfig) -> list[dict[str, str]]:
    """Each news item's text fields, cut and cleaned for a prompt (dataset text is untrusted)."""
    columns = {name: news[name].to_pylist() for name in ("title", "abstract", "category", "subcategory")}
    return [{"title": clean_text(t, knobs.text_max_chars), "abstract": clean_text(a, knobs.text_max_chars),
             "category": clean_text(c, 60), "subcategory": clean_text(s, 60)}
            for t, a, c, s in zip(*columns.values())]


def item_profile_rows(news: pa.Table, template: PromptTemplate, knobs: GenerateTasksConfig,
                      first: frozenset[str] = frozenset()) -> TaskRows:
    chosen, skipped = _first_news(news, knobs.max_news, first)
    messages = [template.render(values) for values in _news_values(chosen, knobs)]
    return TaskRows("item_profile", template, chosen["news_id"].to_pylist(), messages, skipped)


def item_profile_outputs(results: pa.Table, news: pa.Table, knobs: GenerateTasksConfig) -> dict[str, pa.Table]:
    answers = {key: " ".join(value["profile"].split()) for key, value in _ok_answers(results).items()}
    fallback = [f"{v['category']} / {v['subcategory']}: {v['title']}. {v['abstract']}".strip()
                for v in _news_values(news, knobs)]
    ids = news["news_id"].to_pylist()
    return {"profiles.parquet": pa.table({
        "news_id": pa.array(ids, pa.string()),
        "profile": pa.array([answers.get(key, text) for key, text in zip(ids, fallback)], pa.string()),
        "source": pa.array(["llm" if key in answers else "text" for key in ids], pa.string()),
    })}


# --- users: profile, news, chain -----------------------------------------------------------------------

def user_histories(prepared_dir: Path, splits: list[str]) -> dict[str, list[str]]:
    """Each user's clicked news (oldest first) from the first split the user appears in."""
    histories: dict[str, list[str]] = {}
    for split in splits:
        table = read_behaviors(prepared_dir, split).select(["user_id", "history"])
        users = np.asarray(table["user_id"].to_pylist(), dtype=object)
        _, first = np.unique(users, return_index=True)
        picked = table.take(pa.array(np.sort(first)))
        for user, history in zip(picked["user_id"].to_pylist(), picked["history"].to_pylist()):
            histories.setdefault(user, history or [])
    return dict(sorted(histories.items()))


def _history_text(history: list[str], titles: dict[str, str], knobs: GenerateTasksConfig) -> str:
    recent = list(reversed(history))[: knobs.history_titles]
    return "\n".join(f"- {clean_text(titles.get(key, ''), knobs.text_max_chars)}" for key in recent)


def profile_rows(histories: dict[str, list[str]], titles: dict[str, str], template: PromptTemplate,
                 knobs: GenerateTasksConfig, name: str = "profile") -> TaskRows:
    eligible = [user for user, history in histories.items() if history]
    asked = eligible[: knobs.max_users]
    skipped = {user: "no clicked news to profile" for user, history in histories.items() if not history}
    skipped |= dict.fromkeys(eligible[len(asked):], "beyond generate.task.max_users")
    messages = [template.render({"history": _history_text(histories[user], titles, knobs)}) for user in asked]
    return TaskRows(name, template, asked, messages, skipped)


def profile_outputs(results: pa.Table, knobs: GenerateTasksConfig) -> dict[str, pa.Table]:
    answers = _ok_answers(results)
    users = sorted(answers)
    return {"profiles.parquet": pa.table({
        "user_id": pa.array(users, pa.string()),
        "topics": pa.array([_terms(answers[u]["topics"], 5) for u in users], pa.list_(pa.string())),
        "regions": pa.array([_terms(answers[u]["regions"], 3) for u in users], pa.list_(pa.string())),
    })}


def cold_users(histories: dict[str, list[str]], knobs: GenerateTasksConfig) -> tuple[list[str], dict[str, str]]:
    """Users with 1..cold_history_max clicks (the first ``max_users``); the others and why they are left out."""
    cold = [u for u, h in histories.items() if 0 < len(h) <= knobs.cold_history_max][: knobs.max_users]
    chosen = set(cold)
    reasons = {u: ("no clicked news to condition on" if not h else
                   f"warm user ({len(h)} clicks > cold_history_max={knobs.cold_history_max})" if len(h) > knobs.cold_history_max
                   else "beyond generate.task.max_users")
               for u, h in histories.items() if u not in chosen}
    return cold, reasons


def news_template(template: PromptTemplate, categories: list[str], count: int) -> PromptTemplate:
    """The generator fixed to this dataset: known categories, exactly ``count`` articles, a length cap for them."""
    fixed = template.with_constraints(["news", "items", "category"], enum=sorted(categories)).with_constraints(
        ["news"], minItems=count, maxItems=count)
    return replace(fixed, max_tokens=(template.max_tokens or 192) * count)


def news_rows(histories: dict[str, list[str]], titles: dict[str, str], template: PromptTemplate, categories: list[str],
              knobs: GenerateTasksConfig, name: str, profiles: dict[str, dict[str, list[str]]] | None = None) -> TaskRows:
    users, skipped = cold_users(histories, knobs)
    if profiles is not None:
        skipped |= {user: "profile failed in the chain's profiler step" for user in users if user not in profiles}
        users = [user for user in users if user in profiles]
    messages = []
    for user in users:
        values = {"history": _history_text(histories[user], titles, knobs), "count": str(knobs.news_per_user),
                  "categories": ", ".join(sorted(categories))}
        if profiles is not None:
            values |= {"topics": ", ".join(clean_text(t, 40) for t in profiles[user]["topics"]),
                       "regions": ", ".join(clean_text(r, 40) for r in profiles[user]["regions"]) or "none"}
        messages.append(template.render(values))
    return TaskRows(name, template, users, messages, skipped)


_NEWS_NUMBER = re.compile(r"^N([0-9]+)$")


def synthetic_news(results: pa.Table, news: pa.Table) -> pa.Table:
    """Answers as news rows with fresh ids after the dataset's largest, in (user, position) order."""
    numbers = [int(match.group(1)) for key in news["news_id"].to_pylist() if (match := _NEWS_NUMBER.match(key))]
    next_number = max(numbers, default=0) + 1
    rows = []
    for user, answer in _ok_answers(results).items():
        for item in answer["news"]:
            rows.append({"news_id": f"N{next_number}", "user_id": user, "category": item["category"],
                         "subcategory": SYNTHETIC_SUBCATEGORY, "title": " ".join(item["title"].split()),
                         "abstract": " ".join(item["abstract"].split()), "url": "", "title_entities": "[]",
                         "abstract_entities": "[]"})
            next_number += 1
    return pa.Table.from_pylist(rows, schema=schema.NEWS_SCHEMA.append(pa.field("user_id", pa.string())))


def first_per_user(synthetic: pa.Table, count: int) -> pa.Table:
    """Each user's first ``count`` generated news (``synthetic`` is in (user, position) order)."""
    position, seen = np.zeros(synthetic.num_rows, np.int64), {}
    for row, user in enumerate(synthetic["user_id"].to_pylist()):
        position[row] = seen[user] = seen.get(user, 0) + 1
    return synthetic.filter(pa.array(position <= count))


def write_augmented_dataset(synthetic: pa.Table, prepared_dir: Path, splits: list[str], out_dir: Path) -> dict[str, int]:
    """``out_dir``: the prepared dataset plus the synthetic news, appended to their users' histories."""
    by_user: dict[str, list[str]] = {}
    for key, user in zip(synthetic["news_id"].to_pylist(), synthetic["user_id"].to_pylist()):
        by_user.setdefault(user, []).append(key)
    news = read_news_table(prepared_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.concat_tables([news, synthetic.drop(["user_id"]).cast(news.schema)]), out_dir / NEWS_FILE)
    rows = {"news": news.num_rows + synthetic.num_rows}
    for split in splits:
        behaviors = read_behaviors(prepared_dir, split)
        histories = [(history or []) + by_user.get(user, [])
                     for user, history in zip(behaviors["user_id"].to_pylist(), behaviors["history"].to_pylist())]
        column = behaviors.schema.get_field_index("history")
        behaviors = behaviors.set_column(column, "history", pa.array(histories, pa.list_(pa.string())))
        target = out_dir / BEHAVIORS_DIR / f"split={split}" / "part-0.parquet"
        target.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(behaviors, target)
        rows[f"behaviors_{split}"] = behaviors.num_rows
    return rows
