"""Report of a pipeline run (Markdown + self-contained HTML + PNG charts): data, row accounting, graphs,
encoder, generation, recommenders with training curves, ablation tables and charts, metrics, stage timings, config."""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from xml.etree.ElementTree import Element

import numpy as np
import pandas as pd
from omegaconf import DictConfig

from newsrec_dist.charts import grouped_bars, horizontal_bars, line_chart
from newsrec_dist.config import config_yaml
from newsrec_dist.eval.evaluate import ORACLE, metrics_markdown, oracle_lift_share, oracle_metrics
from newsrec_dist.eval.significance import (
    PER_IMPRESSION_FILE, PER_USER_FILE, PairedTest, paired_t_test, read_per_impression, seed_average, verdict,
)
from newsrec_dist.io import atomic_write_text

if TYPE_CHECKING:
    from markdown.treeprocessors import Treeprocessor


def _accounting_table(summary: dict[str, Any]) -> str:
    lines = ["| file | read | kept | rejected | top reasons |", "|---|---:|---:|---:|---|"]
    for entry in summary["files"]:
        reasons = ", ".join(f"{reason} ({count})" for reason, count in list(entry["reasons"].items())[:3]) or "-"
        lines.append(f"| {entry['path']} | {entry['read']} | {entry['kept']} | {entry['rejected']} | {reasons} |")
    return "\n".join(lines)


def _synth_section(stats: dict[str, Any]) -> str:
    keys = ("users", "news", "impressions", "clicks", "clicks_per_impression", "candidates_per_impression",
            "history_clicks_per_user", "short_history_user_share", "stories", "history_story_continuation_rate",
            "home_region_click_share")
    flat = {key: stats[key] for key in keys if key in stats} | stats.get("cold", {})
    flat |= {f"dev AUC of the {name} signal alone": value for name, value in stats.get("dev_signal_auc", {}).items()}
    rows = [f"| {key} | {value:.4g} |" if isinstance(value, float) else f"| {key} | {value} |"
            for key, value in flat.items()]
    return "\n".join(["| statistic | value |", "|---|---:|", *rows])


def _graphs_table(stats: dict[str, Any]) -> str:
    lines = ["| graph | nodes with edges | edges | mean degree | max degree | components | top PageRank |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for name, graph in stats.items():
        leaders = ", ".join(entry["key"] for entry in graph["pagerank_top"][:3]) or "-"
        lines.append(f"| {name} | {graph['nodes_with_edges']} | {graph['edges']} | {graph['degree']['mean']:.1f} | "
                     f"{graph['degree']['max']} | {graph['components']} | {leaders} |")
    return "\n".join(lines)


def _node2vec_table(summaries: dict[str, Any]) -> str:
    lines = ["| graph | nodes embedded | of nodes | epochs | untrained → first epoch → last epoch loss | "
             "walks/s (last run) |", "|---|---:|---:|---:|---|---:|"]
    for name, run in summaries.items():
        lines.append(f"| {name} | {run['nodes_with_edges']} | {run['nodes']} | {run['epochs']} | "
                     f"{run['untrained_loss']:.3f} → {run['losses'][0]:.3f} → {run['losses'][-1]:.3f} | "
                     f"{run['walks_per_second']:.0f} |")
    return "\n".join(lines)


def _encoder_section(outputs: dict[str, Any]) -> str:
    lines = []
    if "finetune" in outputs:
        run, retrieval = outputs["finetune"], outputs["finetune"]["retrieval"]
        lines += [f"LoRA contrastive fine-tuning: {run['steps']} steps (ZeRO stage {run['zero_stage']}, "
                  f"{run['world_size']} process(es)), loss {run['losses'][0]:.3f} → {run['losses'][-1]:.3f}, "
                  f"{run['pairs_per_second']:.1f} pairs/s.", "",
                  f"| held-out title → abstract ({retrieval['items']} news) | recall@1 | recall@10 |", "|---|---:|---:|",
                  *[f"| {name} model | {retrieval[name]['recall@1']:.3f} | {retrieval[name]['recall@10']:.3f} |"
                    for name in ("base", "adapted")], ""]
    for stage in ("embed", "glove"):
        if stage in outputs:
            lines.append(f"- `embeddings/{outputs[stage]['name']}`: {outputs[stage]['news']} news, "
                         f"{outputs[stage]['dim']}-d")
    return "\n".join(lines)


def _generation_table(costs: dict[str, Any]) -> str:
    """One row per generation task (the chain's profiler step on its own row): rows, tokens, money, speed."""
    flat = dict(costs)
    if "chain" in costs and "profiler" in costs["chain"]:
        flat["chain (profiler step)"] = costs["chain"]["profiler"]
    rows = ["| task | rows | ok | failed | skipped | new tokens (prompt+completion) | cached tokens | cost USD | "
            "completion tokens/s |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, cost in flat.items():
        speed = cost["completion_tokens_per_s"]
        rows.append(f"| {name} | {cost['rows']} | {cost['ok']} | {cost['failed']} | {cost['skipped']} | "
                    f"{cost['prompt_tokens']}+{cost['completion_tokens']} | "
                    f"{cost['cached_prompt_tokens'] + cost['cached_completion_tokens']} | {cost['cost_usd']:.4f} | "
                    f"{speed if speed is not None else '-'} |")
    model = next(iter(flat.values()))["model"] if flat else "-"
    return "\n".join([f"Model `{model}`. Skipped rows were not asked (outside the configured subset, or no "
                      "history); failed rows exhausted their retries and are listed with the parse error in each "
                      "task's `results.parquet`.", "", *rows])


GENRE_TASKS = ("summarize", "profile")  # what the GENRE variant (nrms_genre) consumes
FIGURES = "figures"  # PNGs beside report.md; report.html carries them inline


def llm_cost(generation: dict[str, Any], tasks: list[str]) -> tuple[int, float]:
    """Tokens (new and cached: the work an LLM did for them) and USD of these generation tasks."""
    tokens, usd = 0, 0.0
    for cost in [generation[task] for task in tasks if task in generation]:
        for part in [cost, *([cost["profiler"]] if "profiler" in cost else [])]:  # the chain's profiler step
            tokens += (part["prompt_tokens"] + part["completion_tokens"] + part["cached_prompt_tokens"]
                       + part["cached_completion_tokens"])
            usd += part["cost_usd"]
    return tokens, usd


def cost_per_point(gain: float, tokens: int, usd: float) -> str:
    """Cost per +0.01 AUC (GENRE's cost-conversion rate)."""
    return f"{tokens / (gain * 100):.0f} tokens, ${usd / (gain * 100):.4f}" if gain > 0 else "no gain"


def _training_section(runs: dict[str, Any], generation: dict[str, Any] | None, diversity_k: int,
                      oracle: dict[str, Any] | None) -> str:
    lines = ["| model | steps | best epoch | parameters | train samples/s | eval rows/s |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, run in runs.items():
        speed = run["epochs"][-1]["samples_per_second"] if run["epochs"] else float("nan")
        lines.append(f"| {name} | {run['steps']} | {run['best_epoch']} | {run['parameters']} | {speed:.0f} | "
                     f"{run['eval_rows_per_second']:.0f} {run['eval_unit']} |")
    lines += ["", metrics_markdown({"models": {name: run["metrics"] for name, run in runs.items()}}, diversity_k, oracle)]
    if generation and {"nrms", "nrms_genre"} <= set(runs):
        gain = runs["nrms_genre"]["metrics"]["all"]["auc"] - runs["nrms"]["metrics"]["all"]["auc"]
        tasks = [task for task in GENRE_TASKS if task in generation]
        tokens, usd = llm_cost(generation, tasks)
        lines += ["", "GENRE cost per gain (nrms_genre vs nrms, LLM work of "
                  f"{' + '.join(tasks)}): AUC {gain:+.4f} for {tokens} tokens (${usd:.4f}); per +0.01 AUC: "
                  f"{cost_per_point(gain, tokens, usd)}."]
    return "\n".join(lines)


@dataclass
class Arm:
    """One row of an ablation table: a variant (with one model) over its seeds' runs."""

    variant: str
    model: str
    runs: list[str]


def ablation_arms(arms: list[dict[str, Any]]) -> list[Arm]:
    """The pipeline's run list grouped by (variant, model), in order."""
    grouped: dict[tuple[str, str], Arm] = {}
    for arm in arms:
        key = (arm["variant"], arm["model"])
        grouped.setdefault(key, Arm(arm["variant"], arm["model"], [])).runs.append(arm["run"])
    return list(grouped.values())


def seed_values(arm: Arm, runs: dict[str, Any], group: str, key: str) -> np.ndarray:
    return np.asarray([runs[name]["metrics"][group][key] for name in arm.runs if group in runs[name]["metrics"]])


def _mean_std(values: np.ndarray) -> str:
    """``mean ± std`` over seeds (sample std), the bare value for one seed, ``-`` for none."""
    if not len(values):
        return "-"
    return f"{values.mean():.4f} ± {values.std(ddof=1):.4f}" if len(values) > 1 else f"{values[0]:.4f}"


def _per_row(arm: Arm, runs: dict[str, Any], train_dir: Path, file: str = PER_IMPRESSION_FILE) -> pd.DataFrame:
    """The arm's per-impression (graph CF: per-user) metrics averaged over its seeds (runs shared by equal arms are
    read once)."""
    directories = dict.fromkeys(train_dir / runs[name]["model"] for name in arm.runs)
    return seed_average([read_per_impression(directory, file) for directory in directories])


Frames = dict[tuple[str, str], pd.DataFrame]  # (variant, model) → the arm's seed-averaged per-impression metrics


def arm_frames(arms: list[Arm], runs: dict[str, Any], train_dir: Path) -> Frames:
    """Each arm's per-impression metrics, read once for the table and the claims."""
    return {(arm.variant, arm.model): _per_row(arm, runs, train_dir) for arm in arms}


def compare_arms(arms: list[Arm], baseline: str, frames: Frames) -> dict[tuple[str, str], PairedTest]:
    """Each arm's AUC against the baseline variant of its model (keyed by variant and model)."""
    models = {arm.model for arm in arms if arm.variant == baseline}
    return {(arm.variant, arm.model): paired_t_test(frames[(arm.variant, arm.model)]["auc"],
                                                    frames[(baseline, arm.model)]["auc"])
            for arm in arms if arm.model in models}


def _p_value(p: float) -> str:
    return f"{p:.2g}" if p >= 1e-4 else "< 1e-4"


def best_single_signal(evaluation: dict[str, Any] | None) -> tuple[str, float] | None:
    """The strongest one-signal baseline of the eval stage (not random, not the oracle): what an arm must beat."""
    models = {name: values["all"]["auc"] for name, values in (evaluation or {}).get("models", {}).items()
              if name not in ("random", ORACLE)}
    return max(models.items(), key=lambda item: item[1]) if models else None


def _ablation_rows(ablation: DictConfig, arms: list[Arm], runs: dict[str, Any], tests: dict[tuple[str, str], PairedTest],
                   generation: dict[str, Any] | None, diversity_k: int, oracle: dict[str, Any] | None,
                   floor: tuple[str, float] | None) -> list[str]:
    """A row per arm: ranking metrics (mean ± std over seeds), new vs warm users, diversity, the gain over the
    baseline with its paired test, the share of the oracle's lift, a flag under the best one-signal baseline,
    and the LLM cost per gain."""
    tasks = {variant.name: list(variant.llm_tasks) for variant in ablation.variants}
    with_cost = bool(generation) and any(tasks.values())
    header = ["variant", *(["model"] if ablation.models else []), "seeds", "AUC", "MRR", "nDCG@5", "nDCG@10",
              "AUC new", "AUC warm", f"entropy@{diversity_k}", f"coverage@{diversity_k}", f"popularity@{diversity_k}",
              *([f"Δ AUC vs {ablation.baseline} [95 % CI]", "p (paired t)"] if ablation.baseline else []),
              *(["AUC lift / oracle's"] if oracle else []),
              *([f"≤ {floor[0]} ({floor[1]:.4f})?"] if floor else []),
              *(["LLM tokens", "USD", "per +0.01 AUC"] if with_cost else [])]
    lines = ["| " + " | ".join(header) + " |", "|---|" + ("---|" if ablation.models else "") +
             "---:|" * (len(header) - 1 - bool(ablation.models))]
    for arm in arms:
        by_seed = {key: seed_values(arm, runs, "all", key) for key in ("auc", "mrr", "ndcg@5", "ndcg@10")}
        cells = [arm.variant, *([arm.model] if ablation.models else []), str(len(arm.runs)),
                 *(_mean_std(values) for values in by_seed.values()),
                 *(_mean_std(seed_values(arm, runs, group, "auc")) for group in ("new", "warm")),
                 *(_mean_std(seed_values(arm, runs, "all", key))
                   for key in (f"category_entropy@{diversity_k}", f"item_coverage@{diversity_k}",
                               f"mean_popularity@{diversity_k}"))]
        test = tests.get((arm.variant, arm.model))
        if ablation.baseline:
            cells += ([f"{test.mean_difference:+.4f} [{test.ci_low:+.4f}, {test.ci_high:+.4f}]", _p_value(test.p_value)]
                      if test and arm.variant != ablation.baseline else ["-", "-"])
        if oracle:
            cells.append(oracle_lift_share(float(by_seed["auc"].mean()), oracle["all"]["auc"]))
        if floor:
            cells.append("**below**" if by_seed["auc"].mean() <= floor[1] else "above")
        if with_cost:
            tokens, usd = llm_cost(generation, tasks[arm.variant])
            gain = test.mean_difference if test else None
            cells += [str(tokens), f"{usd:.4f}",
                      cost_per_point(gain, tokens, usd) if tokens and gain is not None else "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _cost_conversion(ablation: DictConfig, arms: list[Arm], runs: dict[str, Any],
                     tests: dict[tuple[str, str], PairedTest], generation: dict[str, Any]) -> list[str]:
    """GENRE's cost-conversion rate: each enrichment's AUC gain over the baseline per unit of LLM work, the gain
    averaged over the matching models, over the ranking models, and over all of them (the rate's numerator)."""
    tasks = {variant.name: list(variant.llm_tasks) for variant in ablation.variants}
    lines = ["| variant | LLM tokens | USD | Δ AUC, matching models | Δ AUC, ranking models | Δ AUC, all | "
             "Δ AUC per 1M tokens | Δ AUC per USD |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for variant in dict.fromkeys(arm.variant for arm in arms):
        if not tasks.get(variant):
            continue
        tokens, usd = llm_cost(generation, tasks[variant])
        gains: dict[bool, list[float]] = {False: [], True: []}  # keyed by "ranking model"
        for arm in arms:
            if arm.variant == variant and (variant, arm.model) in tests:
                gains[bool(runs[arm.runs[0]].get("ranking"))].append(tests[(variant, arm.model)].mean_difference)
        every = gains[False] + gains[True]
        mean = float(np.mean(every)) if every else float("nan")
        lines.append(f"| {variant} | {tokens} | {usd:.4f} | " + " | ".join(
            f"{np.mean(values):+.4f}" if values else "-" for values in (gains[False], gains[True], every))
            + f" | {mean / tokens * 1e6 if tokens else float('nan'):+.4f} | "
            + (f"{mean / usd:+.2f} |" if usd > 0 else "- (no charge: a local model) |"))
    return lines


def _claims(ablation: DictConfig, arms: list[Arm], runs: dict[str, Any], frames: Frames, level: float) -> list[str]:
    """Each claim of the paper read against our numbers: the seeds' spread and the paired test."""
    lines = []
    for claim in ablation.claims:
        over = claim.over or ablation.baseline
        for model in dict.fromkeys(arm.model for arm in arms):
            pair = [next((arm for arm in arms if arm.variant == name and arm.model == model), None)
                    for name in (claim.variant, over)]
            if None in pair:
                raise ValueError(f"ablation {ablation.name}: claim {claim.text!r} names {claim.variant} over {over}, "
                                 f"which are not both arms of model {model}")
            arm, base = pair
            test = paired_t_test(frames[(arm.variant, arm.model)][claim.metric],
                                 frames[(base.variant, base.model)][claim.metric])
            seeds = seed_values(arm, runs, "all", claim.metric), seed_values(base, runs, "all", claim.metric)
            lines.append(f"- {claim.text} ({claim.variant} over {over}, {model}, {claim.metric}): "
                         f"**{verdict(test, level)}** — {_mean_std(seeds[0])} vs {_mean_std(seeds[1])} over "
                         f"{len(arm.runs)} and {len(base.runs)} seed(s); paired over {test.impressions} impressions "
                         f"Δ {test.mean_difference:+.4f} [{test.ci_low:+.4f}, {test.ci_high:+.4f}], "
                         f"p {'' if test.p_value < 1e-4 else '= '}{_p_value(test.p_value)}.")
    return lines


TOPK_GROUPS = {"all": "the pool", "cold_items": "the pool's cold news (no training click)",
               "warm_items": "the pool's warm news"}


TopkTests = dict[tuple[str, str], PairedTest]  # (variant, group of news) → NDCG@max(k) against the baseline


def _topk_table(arms: list[Arm], runs: dict[str, Any], group: str, ks: list[int], tests: TopkTests) -> list[str]:
    """Recall/NDCG/MRR/Hit at each k for one group of news (mean ± std over each arm's seeds); with ``tests``,
    Δ NDCG@max(k) against the baseline, paired over the test users."""
    keys = [f"{metric}@{k}" for k in ks for metric in ("recall", "ndcg", "mrr", "hit")]
    header = ["arm", "seeds", *[key.replace("ndcg", "NDCG").replace("recall", "Recall").replace("mrr", "MRR")
                                .replace("hit", "Hit") for key in keys], "users",
              *([f"Δ NDCG@{max(ks)} [95 % CI]", "p (paired t)"] if tests else [])]
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    for arm in arms:
        cells = [arm.variant, str(len(arm.runs)), *(_mean_std(seed_values(arm, runs, group, key)) for key in keys),
                 str(runs[arm.runs[0]]["metrics"][group]["users"])]
        if tests:
            test = tests.get((arm.variant, group))
            cells += ([f"{test.mean_difference:+.4f} [{test.ci_low:+.4f}, {test.ci_high:+.4f}]", _p_value(test.p_value)]
                      if test else ["-", "-"])
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _topk_sections(arms: list[Arm], runs: dict[str, Any], ks: list[int], tests: TopkTests) -> list[str]:
    """A table per group of news (all, cold, warm) and the time split's accounting."""
    sections: list[str] = []
    for group, title in TOPK_GROUPS.items():
        sections += [f"Top-k over {title}, test users of the time split:", "",
                     *_topk_table(arms, runs, group, ks, tests), ""]
    split = runs[arms[0].runs[0]]["split"]
    rows = [f"| {source} | {entry['rows']} | {entry['kept']} | "
            f"{'; '.join(f'{reason}: {count}' for reason, count in entry['rejected'].items()) or '-'} |"
            for source, entry in split.items() if isinstance(entry, dict)]
    sections += ["Click graph (read = kept + rejected):", "", "| clicks | read | kept | rejected |",
                 "|---|---:|---:|---|", *rows, "",
                 f"{split['cold_items']} news have no training click; {split['cold_test_edges']} test clicks are on them. "
                 f"{split['shown_items']} news are shown in test impressions (the pool when `eval.topk_pool` is shown).",
                 ""]
    return sections


def _topk_tests(arms: list[Arm], baseline: str, runs: dict[str, Any], train_dir: Path, k: int) -> TopkTests:
    """Each arm's NDCG@k per group against the baseline's, over the same test users (seeds averaged per user)."""
    frames = {arm.variant: _per_row(arm, runs, train_dir, PER_USER_FILE) for arm in arms}
    return {(arm.variant, group): paired_t_test(frames[arm.variant][f"{group}/ndcg@{k}"],
                                                frames[baseline][f"{group}/ndcg@{k}"])
            for arm in arms if arm.variant != baseline for group in TOPK_GROUPS}


def _topk_chart(title: str, arms: list[Arm], runs: dict[str, Any], k: int, path: Path) -> None:
    """Recall and NDCG@k of every arm (the seeds' mean) over the pool and its cold news."""
    panels = {f"{metric}@{k}": {TOPK_GROUPS[group]: [float(seed_values(arm, runs, group, f"{key}@{k}").mean())
                                                     for arm in arms]
                                for group in ("all", "cold_items")}
              for metric, key in (("Recall", "recall"), ("NDCG", "ndcg"))}
    grouped_bars(path, title, [arm.variant for arm in arms], panels)


def _ablation_chart(ablation: DictConfig, arms: list[Arm], runs: dict[str, Any], diversity_k: int,
                    path: Path) -> None:
    """AUC and category entropy by variant (the seeds' mean), a bar per model."""
    variants = list(dict.fromkeys(arm.variant for arm in arms))
    models = list(dict.fromkeys(arm.model for arm in arms))
    by_key = {(arm.variant, arm.model): arm for arm in arms}
    panels = {label: {model: [float(seed_values(by_key[(variant, model)], runs, "all", key).mean())
                              if (variant, model) in by_key else float("nan") for variant in variants]
                      for model in models}
              for label, key in (("AUC", "auc"), (f"category entropy@{diversity_k}",
                                                    f"category_entropy@{diversity_k}"))}
    grouped_bars(path, ablation.name, variants, panels)


def training_curve(run_dir: Path) -> tuple[list[int], list[float]]:
    """Training loss by step from the run's CSV logs (a resumed run logs into a new version; later rows win)."""
    logs = sorted(run_dir.glob("logs/version_*/metrics.csv"), key=lambda path: int(path.parent.name.split("_")[1]))
    # a run shorter than Lightning's logging interval has no train_loss column
    frames = [frame for frame in map(pd.read_csv, logs) if "train_loss" in frame]
    if not frames:
        return [], []
    table = pd.concat(frames).dropna(subset=["train_loss"]).drop_duplicates("step", keep="last").sort_values("step")
    return table["step"].astype(int).tolist(), table["train_loss"].astype(float).tolist()


def _curves_chart(title: str, names: list[str], runs: dict[str, Any], train_dir: Path, path: Path) -> bool:
    """Training loss of these runs (each distinct run once); False when none logged a loss."""
    lines = {name: training_curve(train_dir / runs[name]["model"]) for name in names}
    lines = {name: points for name, points in lines.items() if points[0]}
    if lines:
        line_chart(path, title, "step", "training loss", lines)
    return bool(lines)


def _figure(title: str, path: Path, work_dir: Path) -> list[str]:
    return [f"![{title}]({path.relative_to(work_dir).as_posix()})", ""]


def _graph_ablation(ablation: DictConfig, arms: list[dict[str, str]], runs: dict[str, Any],
                    generation: dict[str, Any] | None, ks: list[int], train_dir: Path, work_dir: Path) -> list[str]:
    """PFR-style ablations: top-k tables per group of news (mean ± std over seeds, paired tests over users), LLM
    work per variant, charts."""
    figures = work_dir / FIGURES
    grouped = ablation_arms(arms)
    tests = _topk_tests(grouped, ablation.baseline, runs, train_dir, max(ks)) if ablation.baseline else {}
    sections = [f"## Ablation `{ablation.name}`: {ablation.title or ablation.name}", "",
                *_topk_sections(grouped, runs, ks, tests),
                "Metrics are the mean ± sample std over the arm's seeds (each seed's average over test users). Δ is "
                f"the arm's NDCG@{max(ks)} minus its baseline's per test user, each arm's seeds averaged per user "
                "first; p is the two-sided paired t-test over those users.", ""]
    tasks = {variant.name: list(variant.llm_tasks) for variant in ablation.variants}
    if generation and any(tasks.values()):
        costs = [f"{variant}: {tokens} tokens (${usd:.4f})" for variant in dict.fromkeys(arm["variant"] for arm in arms)
                 for tokens, usd in [llm_cost(generation, tasks[variant])] if tasks[variant]]
        sections += ["LLM work per variant: " + "; ".join(costs) + ".", ""]
    chart_path = figures / f"ablation-{ablation.name}.png"
    _topk_chart(ablation.name, grouped, runs, max(ks), chart_path)
    sections += _figure(ablation.title or ablation.name, chart_path, work_dir)
    curve = figures / f"curves-{ablation.name}.png"
    names = [arm["run"] for arm in arms]
    if _curves_chart(f"{ablation.name}: training loss", names, runs, train_dir, curve):
        sections += _figure(f"{ablation.name}: training loss", curve, work_dir)
    return sections


def _recommender_sections(cfg: DictConfig, outputs: dict[str, Any], work_dir: Path) -> list[str]:
    runs, generation, k = outputs["train"], outputs.get("generate"), cfg.eval.diversity_k
    oracle = oracle_metrics(outputs.get("eval"))
    figures, train_dir = work_dir / FIGURES, Path(cfg.train.output_dir)
    sections: list[str] = []
    named = outputs.get("model_runs", list(cfg.train.models))  # train.models' runs, one per seed
    graph_models = [name for name in named if name in runs and runs[name].get("kind") == "graph_cf"]
    models = [name for name in named if name in runs and name not in graph_models]
    if graph_models:
        sections += ["## Graph recommenders (LightGCN, PFR; best checkpoint by NDCG)", "",
                     *_topk_sections([Arm(name, name, [name]) for name in graph_models], runs, list(cfg.eval.topk),
                                     {})]
    if models:
        sections += ["## Recommenders (dev split, best checkpoint by dev AUC)", "",
                     _training_section({name: runs[name] for name in models}, generation, k, oracle), ""]
        if _curves_chart("training loss", models, runs, train_dir, figures / "curves-models.png"):
            sections += _figure("training loss", figures / "curves-models.png", work_dir)
    for ablation in cfg.ablations:
        arms = outputs.get("ablations", {}).get(ablation.name, [])
        if not arms:
            continue
        if runs[arms[0]["run"]].get("kind") == "graph_cf":
            sections += _graph_ablation(ablation, arms, runs, generation, list(cfg.eval.topk), train_dir, work_dir)
            continue
        grouped = ablation_arms(arms)
        frames = arm_frames(grouped, runs, train_dir) if ablation.baseline or ablation.claims else {}
        tests = compare_arms(grouped, ablation.baseline, frames) if ablation.baseline else {}
        floor = best_single_signal(outputs.get("eval"))
        sections += [f"## Ablation `{ablation.name}`: {ablation.title or ablation.name}", "",
                     *_ablation_rows(ablation, grouped, runs, tests, generation, k, oracle, floor), "",
                     "Metrics are the mean ± sample std over the arm's seeds (each seed's dev average). Δ is the arm "
                     "minus its baseline per dev impression, each arm's seeds averaged per impression first; p is "
                     "the two-sided paired t-test over those impressions. Runs with equal configuration are trained "
                     f"once and share their values. `new` users have at most {cfg.eval.cold_history_max} history "
                     "clicks." + (f" The last column flags an arm whose mean AUC does not beat the strongest "
                                  f"one-signal baseline ({floor[0]})." if floor else ""), ""]
        if generation and ablation.baseline and any(variant.llm_tasks for variant in ablation.variants):
            sections += ["Cost-conversion rate (GENRE): the enrichment's mean AUC gain over the baseline per unit of "
                         "LLM work (tokens the LLM processed, new and cached; USD at the configured prices).", "",
                         *_cost_conversion(ablation, grouped, runs, tests, generation), ""]
        claims = _claims(ablation, grouped, runs, frames, cfg.significance_level)
        if claims:
            sections += [f"What our numbers say of the paper's claims (paired t-test, level {cfg.significance_level}):",
                         "", *claims, ""]
        _ablation_chart(ablation, grouped, runs, k, figures / f"ablation-{ablation.name}.png")
        sections += _figure(ablation.title or ablation.name, figures / f"ablation-{ablation.name}.png", work_dir)
        curve = figures / f"curves-{ablation.name}.png"
        if _curves_chart(f"{ablation.name}: training loss", [arm["run"] for arm in arms], runs, train_dir, curve):
            sections += _figure(f"{ablation.name}: training loss", curve, work_dir)
    return sections


def _timings_section(timings: dict[str, float], ran: dict[str, bool], work_dir: Path) -> list[str]:
    rows = [f"| {name} | {seconds:.1f} | {'ran' if ran.get(name, True) else 'up to date (skipped)'} |"
            for name, seconds in timings.items()]
    sections = ["## Stage timings", "", "| stage | seconds | this run |", "|---|---:|---|", *rows, ""]
    if timings:
        horizontal_bars(work_dir / FIGURES / "timings.png", "seconds per stage", "seconds", timings)
        sections += _figure("seconds per stage", work_dir / FIGURES / "timings.png", work_dir)
    return sections


def write_report(cfg: DictConfig, outputs: dict[str, Any], timings: dict[str, float],
                 ran: dict[str, bool] | None = None) -> Path:
    """Write ``<work_dir>/report.md``, ``report.html`` (self-contained) and ``figures/*.png``; returns the .md."""
    work_dir = Path(cfg.paths.work_dir)
    sections = [f"# newsrec-dist report: {cfg.experiment_name}", ""]
    sections += [f"Data: `{cfg.data.name}` ({cfg.data.source}), evaluated on split `{cfg.eval.split}`.", ""]
    if "synth" in outputs:
        sections += ["## Generated data", "", _synth_section(outputs["synth"]), ""]
    if "prepare" in outputs:
        summary = outputs["prepare"]
        sections += ["## Row accounting (read = kept + rejected)", "",
                     f"{summary['rows_read']} rows read, {summary['rows_kept']} kept, "
                     f"{summary['rows_rejected']} rejected.", "", _accounting_table(summary), ""]
    if "graphs" in outputs:
        sections += ["## Co-occurrence graphs", "", _graphs_table(outputs["graphs"]), ""]
    if "node2vec" in outputs:
        sections += ["## Node2Vec embeddings", "", _node2vec_table(outputs["node2vec"]), ""]
    if {"finetune", "embed", "glove"} & set(outputs):
        sections += ["## News encoder", "", _encoder_section(outputs), ""]
    if outputs.get("generate"):
        sections += ["## LLM generation (GENRE, LECOP keywords)", "", _generation_table(outputs["generate"]), ""]
    if outputs.get("train"):
        sections += _recommender_sections(cfg, outputs, work_dir)
    if "eval" in outputs:
        sections += ["## Metrics (per impression, then averaged; MIND definitions)", "",
                     metrics_markdown(outputs["eval"], cfg.eval.diversity_k), "",
                     f"`new` users have at most {cfg.eval.cold_history_max} history clicks.", ""]
    sections += _timings_section(timings, ran or {}, work_dir)
    sections += ["## Configuration", "", "```yaml", config_yaml(cfg).rstrip(), "```", ""]
    text = "\n".join(sections)
    path = work_dir / "report.md"
    atomic_write_text(path, text)
    atomic_write_text(work_dir / "report.html", markdown_to_html(text, work_dir, f"newsrec-dist: {cfg.experiment_name}"))
    return path


OWN_FIGURE = re.compile(r"figures/[\w.-]+\.png")  # only our own figures: no path leaves them
DATA_IMAGE = re.compile(r"data:image/(?:png|jpeg|gif|webp)[;,]", re.IGNORECASE)
URL_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):")
STYLE = ("body{font-family:system-ui,sans-serif;max-width:72rem;margin:2rem auto;padding:0 1rem;color:#222}"
         "table{border-collapse:collapse;margin:1rem 0;font-size:.85rem}th,td{border:1px solid #ccc;"
         "padding:.25rem .5rem}th{background:#f3f3f3}td{text-align:right}td:first-child{text-align:left}"
         "img{max-width:100%}pre{background:#f6f6f6;padding:1rem;overflow-x:auto;font-size:.8rem}")


def _url_as_browser_reads(value: str) -> str | None:
    """An attribute value as a browser resolves it (character references decoded, tabs/newlines dropped, outer
    controls and spaces stripped), or None where whitespace, a control character or a Markdown placeholder is
    left in it (no well-formed URL holds one)."""
    from markdown.util import AMP_SUBSTITUTE

    url = html.unescape(value.replace(AMP_SUBSTITUTE, "&"))
    url = re.sub(r"[\t\n\r]", "", url).strip("".join(map(chr, range(0x21))))
    return None if re.search(r"[\x00-\x20\x7f]", url) else url


def _safe_link(href: str) -> bool:
    """http(s) or a relative reference (no scheme at all); javascript:, data:, mailto:, ... are not links here."""
    url = _url_as_browser_reads(href)
    if url is None:
        return False
    scheme = URL_SCHEME.match(url)
    return scheme is None or scheme.group(1).lower() in {"http", "https"}


def _image_source(src: str, base: Path) -> str | None:
    """The src an image may keep: our own figure inlined as a data URI, a data:image URI as is; None otherwise
    (a remote image would tell its server who reads the report)."""
    url = _url_as_browser_reads(src)
    if url is None:
        return None
    if OWN_FIGURE.fullmatch(url):
        figure = base / url
        if figure.is_file() and figure.resolve().parent == (base / FIGURES).resolve():
            return "data:image/png;base64," + base64.b64encode(figure.read_bytes()).decode()
        return None
    return src if DATA_IMAGE.match(url) else None


def _neutralise(element: Element, text: str) -> None:
    """The element becomes inert text in place (its tail, and a link's children, stay)."""
    element.tag = "span"
    element.attrib.clear()
    if text:
        element.text = text


def _sanitise_tree(base: Path) -> Treeprocessor:
    """A Markdown tree processor run last, over every <a> and <img> however it was written (inline, reference,
    autolink): links keep http(s) and relative targets, images only our figures (inlined) and data:image URIs."""
    from markdown.treeprocessors import Treeprocessor

    class Sanitise(Treeprocessor):
        def run(self, root: Element) -> None:
            for element in root.iter():
                if element.tag == "a" and not _safe_link(element.get("href", "")):
                    _neutralise(element, "")
                elif element.tag == "img":
                    source = _image_source(element.get("src", ""), base)
                    if source is None:
                        _neutralise(element, f"[image not shown: {element.get('alt', '')}]")
                    else:
                        element.set("src", source)

    return Sanitise()


def markdown_to_html(text: str, base: Path, title: str) -> str:
    """One HTML file: the Markdown rendered, its PNGs inlined as data URIs. Text in the report is untrusted
    (dataset strings, LLM output, config values): raw HTML is escaped, never passed through, and every link and
    image is checked where the tree is built (docs/security.md, "The HTML report")."""
    import markdown

    renderer = markdown.Markdown(extensions=["tables", "fenced_code"], output_format="html")
    renderer.preprocessors.deregister("html_block")
    renderer.inlinePatterns.deregister("html")
    renderer.treeprocessors.register(_sanitise_tree(base), "sanitise", -10)  # after "unescape" (0): values final
    body = renderer.convert(text)
    return (f"<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head>\n<body>\n{body}\n</body></html>\n")
