"""``newsrec``: one verb per stage, Hydra-style ``key=value`` overrides after the options.

Options are shorthands for overrides (``--scale tiny`` is ``data.synth.scale=tiny``), so anything a
config holds can be set from the command line. ``newsrec config ...`` prints what a command would run with;
``newsrec --show-config <verb> ...`` prints it for one verb's options too, and runs nothing.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, NoReturn, Optional

import typer
from omegaconf import DictConfig
from rich.console import Console
from rich.markup import escape

from newsrec_dist.config import ConfigError, as_object, config_yaml, load_config
from newsrec_dist.quiet import quiet_libraries

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)
data_app = typer.Typer(no_args_is_help=True, help="MIND data: synthesize, download, prepare.")
app.add_typer(data_app, name="data")
graphs_app = typer.Typer(no_args_is_help=True, help="LECOP co-occurrence graphs on Spark.")
app.add_typer(graphs_app, name="graphs")
node2vec_app = typer.Typer(no_args_is_help=True, help="Node2Vec graph embeddings (torch-geometric, Ray tasks).")
app.add_typer(node2vec_app, name="node2vec")
encoder_app = typer.Typer(no_args_is_help=True, help="LLM news encoder: LoRA contrastive fine-tuning, embedding, GloVe.")
app.add_typer(encoder_app, name="encoder")
console = Console()

Overrides = Annotated[Optional[list[str]], typer.Argument(help="config overrides, key=value")]
SHOW_CONFIG = {"enabled": False}  # set by --show-config: every verb prints its composed config and stops


@app.callback()
def options(
    show_config: bool = typer.Option(False, "--show-config", envvar="NEWSREC_SHOW_CONFIG",
                                     help="print the verb's composed config (YAML) and exit; also for jobs/*.py"),
    verbose: bool = typer.Option(False, "--verbose", help="show the libraries' info lines, tips and warnings"),
) -> None:
    """Distributed training for LLM-powered news recommendation (LECOP, GENRE, POPK, PFR)."""
    SHOW_CONFIG["enabled"] = show_config
    if not verbose:
        quiet_libraries()


def _compose(overrides: list[str] | None, **shorthands: object) -> DictConfig:
    """The command's config, or exit with our message. Commands import their stage after this call, so
    ``--show-config`` and a bad override answer in a second, without loading torch."""
    extra = [f"{key}={value}" for key, value in shorthands.items() if value is not None]
    try:
        cfg = load_config(extra + list(overrides or []))
    except ConfigError as error:
        _fail(error)
    if SHOW_CONFIG["enabled"]:
        print(config_yaml(cfg), end="")
        raise typer.Exit(code=0)
    return cfg


@app.command("config")
def config(overrides: Overrides = None) -> None:
    """Print the composed configuration as YAML (secrets masked): what `newsrec <verb>` with these overrides
    runs with. Example: ``newsrec config encoder=glm4_9b`` shows encoder.finetune.steps 2000."""
    print(config_yaml(_compose(overrides)), end="")


def _fail(error: Exception) -> NoReturn:
    # Brackets in messages are text, not markup; soft wrap keeps a message greppable on one line.
    console.print(f"[bold red]error:[/] {escape(str(error))}", soft_wrap=True)
    raise typer.Exit(code=2)


@data_app.command("synth")
def data_synth(
    overrides: Overrides = None,
    scale: Annotated[Optional[str], typer.Option(help="micro | tiny | small | mind-small | mind-large (data.synth.scale)")] = None,
    out: Annotated[Optional[Path], typer.Option(help="output directory (data.raw_dir)")] = None,
    seed: Annotated[Optional[int], typer.Option(help="generator seed")] = None,
    quiet: bool = typer.Option(False, help="no progress bar"),
) -> None:
    """Generate MIND-format news.tsv/behaviors.tsv with planted signal."""
    from newsrec_dist.data.synth import generate

    cfg = _compose(overrides, **{"data.synth.scale": scale, "data.raw_dir": out, "data.synth.seed": seed})
    try:
        stats = generate(as_object(cfg.data.synth), Path(cfg.data.raw_dir), show_progress=not quiet)
    except ValueError as error:
        _fail(error)
    console.print_json(json.dumps(stats))
    console.print(f"wrote {cfg.data.raw_dir}")
    given = [f"{key}={value}" for key, value in {"data.synth.scale": scale, "data.raw_dir": out}.items() if value]
    console.print(f"next: newsrec data prepare {' '.join([*given, *(overrides or [])])}".rstrip(), markup=False)


@data_app.command("prepare")
def data_prepare(
    overrides: Overrides = None,
    scale: Annotated[Optional[str], typer.Option(help="the synthetic data's scale, as given to `data synth`")] = None,
    raw: Annotated[Optional[Path], typer.Option(help="MIND-layout input directory (data.raw_dir)")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Parquet output directory (data.prepared_dir)")] = None,
    strict: Annotated[Optional[bool], typer.Option("--strict/--lenient", help="fail on the first bad row")] = None,
    quiet: bool = typer.Option(False, help="no progress bar"),
) -> None:
    """Validate MIND TSV files and write the Parquet dataset (rejects with file, line, reason)."""
    from newsrec_dist.data.prepare import prepare
    from newsrec_dist.data.reader import DataValidationError

    cfg = _compose(overrides, **{"data.synth.scale": scale, "data.raw_dir": raw, "data.prepared_dir": out,
                                 "data.strict": strict})
    try:
        result = prepare(Path(cfg.data.raw_dir), Path(cfg.data.prepared_dir), list(cfg.data.splits),
                         strict=cfg.data.strict, show_progress=not quiet)
    except (DataValidationError, FileNotFoundError) as error:
        _fail(error)
    summary = result.summary
    for entry in summary["files"]:
        console.print(f"{entry['path']}: read {entry['read']} = kept {entry['kept']} + rejected {entry['rejected']}")
        for note, count in entry.items():
            if note.startswith("unknown_") and count:
                console.print(f"  [yellow]{count} {note.replace('_', ' ')} (kept, reported)[/]")
    console.print(f"rows read {summary['rows_read']} = kept {summary['rows_kept']} + rejected {summary['rows_rejected']}"
                  + (" (unchanged, skipped)" if result.skipped else ""))
    if summary["rows_rejected"]:
        console.print(f"rejected rows with reasons: {result.out_dir / 'rejects.jsonl'}")


@data_app.command("download")
def data_download(
    overrides: Overrides = None,
    dataset: Annotated[str, typer.Option(help="mind-demo | mind-small | mind-large")] = "mind-small",
    split: Annotated[Optional[list[str]], typer.Option(help="split(s) to fetch; default: data.splits")] = None,
    quiet: bool = typer.Option(False, help="no progress bar"),
) -> None:
    """Fetch official MIND zips (size and checksum verified, partial downloads resumed) and unzip."""
    from newsrec_dist.data.download import DownloadError, download_mind

    cfg = _compose(["data=mind", f"data.name={dataset}", *(overrides or [])])
    splits = list(split or cfg.data.splits)
    try:
        paths = download_mind(dataset, splits, cfg.data.download.files, cfg.data.download.base_url,
                              Path(cfg.data.download.cache_dir), Path(cfg.data.raw_dir), progress=not quiet)
    except (DownloadError, ValueError) as error:
        _fail(error)
    for name, path in paths.items():
        console.print(f"{name}: {path}")


@graphs_app.command("build")
def graphs_build(
    overrides: Overrides = None,
    window: Annotated[Optional[list[int]], typer.Option(help="window size(s) 2..5: w consecutive clicks (graphs.windows)")] = None,
) -> None:
    """Keywords (TF-IDF) then the news-ID, item-item keyword and intra-item keyword graphs."""
    extra = [f"graphs.windows=[{','.join(map(str, window))}]"] if window else []
    cfg = _compose(extra + list(overrides or []))
    from newsrec_dist.pipeline import RunState, stage_graphs, stage_keywords

    state = RunState(cfg=cfg)
    try:
        stage_keywords(state)
        stage_graphs(state)
    except (ValueError, FileNotFoundError) as error:
        _fail(error)
    for name, stats in state.outputs["graphs"].items():
        console.print(f"{name}: {stats['edges']} edges, {stats['nodes_with_edges']} nodes with edges, "
                      f"{stats['components']} components")
    console.print(f"wrote {state.cfg.graphs.output_dir}")


@node2vec_app.command("train")
def node2vec_train(
    overrides: Overrides = None,
    graph: Annotated[Optional[list[str]], typer.Option(help="graph(s) to embed, e.g. news/w=2 (node2vec.graphs)")] = None,
    device: Annotated[Optional[str], typer.Option(help="cpu | cuda | auto (node2vec.device)")] = None,
    quiet: bool = typer.Option(False, help="no progress bars"),
) -> None:
    """Node2Vec on each graph of the graphs artifact, one Ray task per graph; resumes after a kill."""
    extra = [f"node2vec.graphs=[{','.join(repr(name) for name in graph)}]"] if graph else []  # quoted: names hold '='
    cfg = _compose(extra + list(overrides or []), **{"node2vec.device": device})
    from newsrec_dist.embed.node2vec_stage import embed_graphs
    try:
        summaries = embed_graphs(as_object(cfg.node2vec), show_progress=not quiet)
    except (ValueError, FileNotFoundError, RuntimeError) as error:
        _fail(error)
    for name, summary in summaries.items():
        console.print(f"{name}: {summary['nodes_with_edges']} of {summary['nodes']} nodes embedded, "
                      f"{summary['epochs']} epochs, final loss {summary['losses'][-1]:.4f}")
    console.print(f"wrote {cfg.node2vec.output_dir}")


def _progress(quiet: bool):  # noqa: ANN202 - a ProgressFactory
    from functools import partial

    from newsrec_dist.progress import progress_bar

    return partial(progress_bar, enabled=not quiet)


@encoder_app.command("finetune")
def encoder_finetune(
    overrides: Overrides = None,
    steps: Annotated[Optional[int], typer.Option(help="optimiser steps (encoder.finetune.steps)")] = None,
    device: Annotated[Optional[str], typer.Option(help="cpu | cuda | auto (encoder.device)")] = None,
    quiet: bool = typer.Option(False, help="no progress bar"),
) -> None:
    """Contrastive LoRA fine-tuning (title → abstract InfoNCE) with DeepSpeed; resumes after a kill.

    One process here; ``deepspeed``/``torchrun``/``srun`` launch ``jobs/finetune_encoder.py`` on GPUs.
    """
    cfg = _compose(overrides, **{"encoder.finetune.steps": steps, "encoder.device": device})
    from newsrec_dist.encoder.finetune import finetune
    try:
        summary = finetune(as_object(cfg.encoder), Path(cfg.data.prepared_dir), _progress(quiet))
    except (ValueError, FileNotFoundError, RuntimeError) as error:
        _fail(error)
    if os.environ.get("RANK", "0") != "0":  # under a launcher, rank 0 reports
        return
    retrieval = summary["retrieval"]
    console.print(f"{summary['steps']} steps, final loss {summary['losses'][-1]:.4f}; held-out title→abstract "
                  f"recall@1 {retrieval['base']['recall@1']:.3f} → {retrieval['adapted']['recall@1']:.3f}, "
                  f"recall@10 {retrieval['base']['recall@10']:.3f} → {retrieval['adapted']['recall@10']:.3f}")
    console.print(f"wrote {cfg.encoder.output_dir}")


@encoder_app.command("embed")
def encoder_embed(
    overrides: Overrides = None,
    base: bool = typer.Option(False, help="embed with the base model, no adapter (encoder.embed.use_adapter=false)"),
    profiles: bool = typer.Option(False, help="embed the LLM item profiles (PFR) instead of the news text"),
    quiet: bool = typer.Option(False, help="no progress bar"),
) -> None:
    """Embed every news item (title + abstract) or item profile with a Ray Data actor pool; resumes after a kill."""
    cfg = _compose(overrides, **{"encoder.embed.use_adapter": "false" if base else None})
    from newsrec_dist.encoder.embed import embed_news, embed_profiles
    encoder = as_object(cfg.encoder)
    try:
        summary = (embed_profiles(encoder, _progress(quiet)) if profiles
                   else embed_news(encoder, Path(cfg.data.prepared_dir), _progress(quiet)))
    except (ValueError, FileNotFoundError, RuntimeError) as error:
        _fail(error)
    console.print(f"{summary['news']} news embedded ({summary['dim']}-d) → {cfg.encoder.embeddings_dir}/{summary['name']}")


@encoder_app.command("glove")
def encoder_glove(overrides: Overrides = None, quiet: bool = typer.Option(False, help="no progress bar")) -> None:
    """GloVe 6B 50d mean-of-words news vectors, the LECOP ablation baseline."""
    cfg = _compose(overrides)
    from newsrec_dist.encoder.glove import glove_embeddings
    try:
        summary = glove_embeddings(Path(cfg.data.prepared_dir), Path(cfg.encoder.embeddings_dir), _progress(quiet))
    except (ValueError, FileNotFoundError) as error:
        _fail(error)
    console.print(f"{summary['news']} news, {summary['tokens_found']} tokens in GloVe, {summary['tokens_missed']} not; "
                  f"{summary['news_without_known_words']} news without a known word")


@app.command("generate")
def generate(
    task: Annotated[list[str], typer.Argument(help="keywords | summarize | item_profile | profile | news | chain (one or more), "
                                                   "then key=value overrides")],
    overrides: Annotated[Optional[list[str]], typer.Option("--set", "-s", help="config override key=value")] = None,
    quiet: bool = typer.Option(False, help="no progress bar"),
) -> None:
    """LLM data generation on a Ray Data actor pool (GENRE, LECOP keywords); cached, resumable, costed.

    Example: ``newsrec generate summarize profile generate.task.max_news=100`` (or ``-s key=value``).
    """
    tasks = [name for name in task if "=" not in name]
    given = [name for name in task if "=" in name] + list(overrides or [])
    cfg = _compose(given + [f"generate.tasks=[{','.join(tasks)}]"])
    from newsrec_dist.generate.engine import BudgetExhausted
    from newsrec_dist.generate.stage import run_generation
    try:
        costs = run_generation(as_object(cfg.generate), Path(cfg.data.prepared_dir), list(cfg.data.splits),
                               _progress(quiet))
    except BudgetExhausted as error:
        console.print(f"[bold yellow]stopped:[/] {error}")
        raise typer.Exit(code=3) from error
    except (ValueError, FileNotFoundError, RuntimeError) as error:
        _fail(error)
    for name, cost in costs.items():
        console.print(f"{name}: {cost['ok']} ok, {cost['failed']} failed, {cost['skipped']} skipped of {cost['rows']} rows; "
                      f"{cost['prompt_tokens']}+{cost['completion_tokens']} new tokens "
                      f"({cost['cached_prompt_tokens']}+{cost['cached_completion_tokens']} cached), ${cost['cost_usd']}")
    console.print(f"wrote {cfg.generate.output_dir}")


@app.command("eval")
def evaluate(
    overrides: Overrides = None,
    baseline: Annotated[Optional[list[str]], typer.Option(help="random | popularity | category_profile | oracle")] = None,
    split: Annotated[Optional[str], typer.Option(help="split to score (eval.split)")] = None,
) -> None:
    """Score a prepared split with baselines; print the metrics table, write JSON and prediction files."""
    extra = [f"eval.baselines=[{','.join(baseline)}]"] if baseline else []
    cfg = _compose(extra + list(overrides or []), **{"eval.split": split})
    from newsrec_dist.eval.evaluate import metrics_markdown, run_baselines
    labeled = [name for name in cfg.data.splits if name != "test"]
    try:
        payload = run_baselines(Path(cfg.data.prepared_dir), Path(cfg.eval.output_dir), list(cfg.eval.baselines),
                                cfg.eval.split, labeled, cfg.eval.cold_history_max, cfg.eval.diversity_k,
                                cfg.seed, cfg.eval.write_prediction_file, Path(cfg.eval.oracle_dir))
    except (ValueError, FileNotFoundError) as error:
        _fail(error)
    console.print(metrics_markdown(payload, cfg.eval.diversity_k))
    for name, note in payload.get("notes", {}).items():
        console.print(f"{name}: left out, {note}")
    console.print(f"wrote {Path(cfg.eval.output_dir) / 'metrics.json'}")


@app.command("train")
def train(
    overrides: Overrides = None,
    model: Annotated[Optional[str], typer.Option(help="conf/model/<name>.yaml, e.g. nrms, naml, lecop, din")] = None,
    quiet: bool = typer.Option(False, help="no progress bars"),
) -> None:
    """Train a recommender (checkpoints, resume after kill, best dev AUC or NDCG), evaluate it, export safetensors.

    Example: ``newsrec train model=naml train.epochs=5 train.sampler.kind=popk``; ``newsrec train model=pfr``
    (graph CF: top-k on the train → dev time split).
    """
    cfg = _compose(overrides, model=model, **{"train.progress": False if quiet else None})
    from newsrec_dist.train.stage import train_model
    try:
        summary = train_model(cfg, _progress(quiet))
    except (ValueError, FileNotFoundError) as error:
        _fail(error)
    if summary:
        values = summary["metrics"]["all"]
        shown = (("auc", "AUC"), ("mrr", "MRR"), ("ndcg@5", "nDCG@5"), ("ndcg@10", "nDCG@10")) \
            if summary["kind"] == "impressions" else \
            tuple((f"{m}@{k}", f"{m}@{k}") for k in cfg.eval.topk for m in ("recall", "ndcg"))
        cold = f"; cold news NDCG@{max(cfg.eval.topk)} {summary['metrics']['cold_items'][f'ndcg@{max(cfg.eval.topk)}']:.4f}" \
            if summary["kind"] == "graph_cf" else ""
        console.print(f"{summary['model']}: dev " + ", ".join(f"{label} {values[key]:.4f}" for key, label in shown)
                      + f"{cold} (best epoch {summary['best_epoch']}, {summary['steps']} steps)")
        console.print(f"wrote {Path(cfg.train.output_dir) / summary['model']}")


@app.command("run")
def run(overrides: Overrides = None,
        from_stage: Annotated[Optional[str], typer.Option("--from", help="re-run this stage and every later one")] = None,
        ) -> None:
    """Run the whole pipeline of an experiment, e.g. ``newsrec run experiment=quickstart``; current stages are
    skipped, a killed run resumes."""
    cfg = _compose(overrides)
    from newsrec_dist.io import RunLockedError
    from newsrec_dist.pipeline import run_pipeline
    if not cfg.stages:
        _fail(ConfigError("no stages to run: name an experiment (experiment=quickstart, lecop, popk, pfr, genre) or "
                          "list them (stages=[synth,prepare,eval,report])"))
    try:
        state = run_pipeline(cfg, from_stage)
    except (ValueError, FileNotFoundError, RunLockedError) as error:
        _fail(error)
    if "report" in state.outputs:
        console.print(f"report: {state.outputs['report']}")


Arguments = Annotated[Optional[list[str]], typer.Argument(help="the stage's arguments: key=value overrides, tasks")]
JobId = Annotated[str, typer.Argument(help="job id printed by `newsrec submit`")]


@app.command("submit")
def submit(
    stage: Annotated[str, typer.Argument(help="synth | prepare | graphs | node2vec | finetune | embed | glove | "
                                               "generate | train | eval | pipeline")],
    arguments: Arguments = None,
    cluster: Annotated[Optional[str], typer.Option(help="local | slurm | ray (the cluster config group)")] = None,
    wait: bool = typer.Option(False, help="wait for the job's end, print its log, exit non-zero unless it succeeded"),
    timeout: Annotated[Optional[float], typer.Option(help="with --wait: give up after this many seconds")] = None,
) -> None:
    """Submit a stage (or the whole pipeline) to this machine, Slurm or Ray; cluster.* settings shape the job."""
    from newsrec_dist.cluster.slurm import SlurmError
    from newsrec_dist.cluster.submit import config_overrides, job_logs, settings_that_matter, submit_stage, wait_for

    arguments = list(arguments or [])
    chosen = [f"cluster={cluster}"] if cluster else []
    cfg = _compose(chosen + config_overrides(arguments))
    try:
        for key, value in settings_that_matter(cfg, stage).items():
            console.print(f"  {key} = {value}", markup=False, highlight=False)
        record = submit_stage(cfg, stage, chosen + arguments)
    except (ConfigError, SlurmError, RuntimeError) as error:
        _fail(error)
    console.print(f"submitted {record.id} ({record.cluster} {record.native_id})")
    if wait:
        state = wait_for(record, timeout)
        console.print(job_logs(record)[-6000:], markup=False, highlight=False)
        console.print(f"{record.id}: {state}")
        if state != "SUCCEEDED":
            raise typer.Exit(code=1)


def _job(job_id: str, overrides: list[str] | None):  # noqa: ANN202 - a JobRecord
    from newsrec_dist.cluster.jobs import JobNotFound
    from newsrec_dist.cluster.submit import find_job

    try:
        return find_job(_compose(overrides), job_id)
    except JobNotFound as error:
        _fail(error)


@app.command("status")
def status(job_id: Annotated[Optional[str], typer.Argument(help="a job id; none: every job")] = None,
           overrides: Overrides = None) -> None:
    """State of one submitted job, or of all of them (PENDING, RUNNING, SUCCEEDED, FAILED, CANCELLED)."""
    from newsrec_dist.cluster.jobs import list_records
    from newsrec_dist.cluster.submit import job_status, jobs_dir

    records = [_job(job_id, overrides)] if job_id else list_records(jobs_dir(_compose(overrides)))
    for record in records:
        console.print(f"{record.id}\t{record.cluster}\t{record.native_id}\t{job_status(record)}", markup=False)


@app.command("logs")
def logs(job_id: JobId, overrides: Overrides = None,
         tail: Annotated[int, typer.Option(help="last N characters; 0: all")] = 0) -> None:
    """A submitted job's log (the log file, or the Ray cluster's job log)."""
    from newsrec_dist.cluster.submit import job_logs

    text = job_logs(_job(job_id, overrides))
    console.print(text[-tail:] if tail else text, markup=False, highlight=False, end="")


@app.command("cancel")
def cancel(job_id: JobId, overrides: Overrides = None) -> None:
    """Cancel a submitted job (scancel, Ray stop_job, or SIGTERM to the local process group)."""
    from newsrec_dist.cluster.submit import cancel_job

    cancel_job(_job(job_id, overrides))
    console.print(f"cancelled {job_id}")


@app.command("bench")
def bench(
    stage: Annotated[str, typer.Argument(help="train | node2vec | generate | pipeline (N trials in parallel)")],
    overrides: Overrides = None,
    workers: Annotated[str, typer.Option(help="comma-separated worker counts, e.g. 1,2,4")] = "1,2",
    out: Annotated[Path, typer.Option(help="report path, no suffix (.csv, .png, .md)")] = Path("benchmarks/scaling"),
    work_root: Annotated[Optional[Path], typer.Option(help="where the runs write (default: <out>-runs)")] = None,
) -> None:
    """Run a stage at several worker counts; throughput, memory, GPU use, scaling efficiency → CSV, PNG, Markdown."""
    from newsrec_dist.cluster.bench import bench as run_bench

    _compose(overrides)  # a bad override fails before any run (and --show-config shows the runs' config)
    try:
        counts = [int(count) for count in workers.split(",")]
        rows = run_bench(stage, counts, list(overrides or []), out, work_root or out.with_name(out.name + "-runs"),
                         progress=lambda line: console.print(line, markup=False, highlight=False))
    except (ValueError, RuntimeError) as error:
        _fail(error)
    console.print(f"efficiency at {rows[-1]['workers']} workers: {rows[-1]['efficiency']:.2f}; "
                  f"wrote {out.with_suffix('.md')}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
