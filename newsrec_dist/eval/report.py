"""Markdown report of a pipeline run: data, row accounting, recommenders, metrics, stage timings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from newsrec_dist.eval.evaluate import metrics_markdown
from newsrec_dist.io import atomic_write_text


def _accounting_table(summary: dict[str, Any]) -> str:
    lines = ["| file | read | kept | rejected | top reasons |", "|---|---:|---:|---:|---|"]
    for entry in summary["files"]:
        reasons = ", ".join(f"{reason} ({count})" for reason, count in list(entry["reasons"].items())[:3]) or "-"
        lines.append(f"| {entry['path']} | {entry['read']} | {entry['kept']} | {entry['rejected']} | {reasons} |")
    return "\n".join(lines)


def _synth_section(stats: dict[str, Any]) -> str:
    keys = ("users", "news", "impressions", "clicks", "clicks_per_impression", "candidates_per_impression",
            "history_clicks_per_user", "short_history_user_share")
    rows = [f"| {key} | {stats[key]:.4g} |" if isinstance(stats[key], float) else f"| {key} | {stats[key]} |"
            for key in keys]
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
    lines = ["| graph | nodes embedded | of nodes | epochs | first → last loss | walks/s (last run) |",
             "|---|---:|---:|---:|---|---:|"]
    for name, run in summaries.items():
        lines.append(f"| {name} | {run['nodes_with_edges']} | {run['nodes']} | {run['epochs']} | "
                     f"{run['losses'][0]:.3f} → {run['losses'][-1]:.3f} | {run['walks_per_second']:.0f} |")
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


def _training_section(runs: dict[str, Any], generation: dict[str, Any] | None, diversity_k: int) -> str:
    lines = ["| model | steps | best epoch | parameters | train samples/s | eval impressions/s |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, run in runs.items():
        speed = run["epochs"][-1]["samples_per_second"] if run["epochs"] else float("nan")
        lines.append(f"| {name} | {run['steps']} | {run['best_epoch']} | {run['parameters']} | {speed:.0f} | "
                     f"{run['eval_impressions_per_second']:.0f} |")
    lines += ["", metrics_markdown({"models": {name: run["metrics"] for name, run in runs.items()}}, diversity_k)]
    if generation and {"nrms", "nrms_genre"} <= set(runs):
        gain = runs["nrms_genre"]["metrics"]["all"]["auc"] - runs["nrms"]["metrics"]["all"]["auc"]
        tasks = [task for task in GENRE_TASKS if task in generation]
        tokens = sum(generation[t]["prompt_tokens"] + generation[t]["completion_tokens"] +
                     generation[t]["cached_prompt_tokens"] + generation[t]["cached_completion_tokens"] for t in tasks)
        usd = sum(generation[task]["cost_usd"] for task in tasks)
        per_point = f"{tokens / (gain * 100):.0f} tokens, ${usd / (gain * 100):.4f}" if gain > 0 else "no gain"
        lines += ["", "GENRE cost per gain (nrms_genre vs nrms, LLM work of "
                  f"{' + '.join(tasks)}): AUC {gain:+.4f} for {tokens} tokens (${usd:.4f}); per +0.01 AUC: {per_point}."]
    return "\n".join(lines)


def write_report(cfg: DictConfig, outputs: dict[str, Any], timings: dict[str, float]) -> Path:
    """Write ``<work_dir>/report.md`` from what the stages produced; returns its path."""
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
        sections += ["## Recommenders (dev split, best checkpoint by dev AUC)", "",
                     _training_section(outputs["train"], outputs.get("generate"), cfg.eval.diversity_k), ""]
    if "eval" in outputs:
        sections += ["## Metrics (per impression, then averaged; MIND definitions)", "",
                     metrics_markdown(outputs["eval"], cfg.eval.diversity_k), "",
                     f"`new` users have at most {cfg.eval.cold_history_max} history clicks.", ""]
    sections += ["## Stage timings", "", "| stage | seconds |", "|---|---:|",
                 *[f"| {name} | {seconds:.1f} |" for name, seconds in timings.items()], ""]
    sections += ["## Configuration", "", "```yaml", OmegaConf.to_yaml(cfg).rstrip(), "```", ""]
    path = Path(cfg.paths.work_dir) / "report.md"
    atomic_write_text(path, "\n".join(sections))
    return path
