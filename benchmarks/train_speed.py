"""Benchmark recommender training and evaluation: samples/s, impressions/s and peak memory per model.

Usage (prepared data from `newsrec data synth/prepare`, e.g. the demo's):
    python benchmarks/train_speed.py --prepared runs/quickstart/prepared/synth-small --workdir /tmp/bench-train \
        [--models nrms,naml,lstur,plm_nr,bst,din,dcn,pnn] [--steps 100] [--batch-size 64] [--threads 2] \
        [--set train.eval_batch_impressions=512 ...]

Each model is one `newsrec train` process with `train.max_steps` steps (default model sizes); samples/s is the
training loop's own counter (batches only: feature building and the dev evaluation are excluded), impressions/s
is the dev evaluation of the best checkpoint (every news encoded once, every impression scored in batches) and
eval_s its wall time, load_s the feature building (news features, the splits' arrays), peak RSS is the whole process
tree's. Appends rows to <out>.csv and a section to <out>.md.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
from pathlib import Path

from newsrec_dist.measure import append_csv, append_section, measured

COLUMNS = ("model", "steps", "batch", "train_samples_per_s", "eval_impressions", "eval_impressions_per_s",
           "dev_auc", "parameters", "wall_s", "peak_rss_mib", "load_s", "eval_s")


def run_model(args: argparse.Namespace, model: str) -> dict:
    work = args.workdir / model
    shutil.rmtree(work, ignore_errors=True)
    command = [sys.executable, "-m", "newsrec_dist.cli", "train", "--quiet", f"model={model}",
               f"data.prepared_dir={args.prepared}", f"paths.work_dir={work}", f"train.output_dir={work}",
               f"train.max_steps={args.steps}", f"train.batch_size={args.batch_size}", f"train.threads={args.threads}",
               f"train.checkpoint_every_n_steps={args.steps}", *args.set]
    run = measured(command)
    wall, rss = run.wall_s, run.peak_rss_mib
    summary = json.loads((work / model / "summary.json").read_text())
    return {"model": model, "steps": summary["steps"], "batch": args.batch_size,
            "train_samples_per_s": round(summary["epochs"][-1]["samples_per_second"], 1),
            "eval_impressions": summary["eval_rows"],
            "eval_impressions_per_s": round(summary["eval_rows_per_second"]),
            "dev_auc": round(summary["metrics"]["all"]["auc"], 4), "parameters": summary["parameters"],
            "wall_s": round(wall, 1), "peak_rss_mib": round(rss), "load_s": round(summary["load_seconds"], 1),
            "eval_s": round(summary["eval_seconds"], 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prepared", type=Path, required=True)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/bench-train"))
    parser.add_argument("--models", default="nrms,naml,lstur,plm_nr,bst,din,dcn,pnn")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--set", nargs="*", default=[], help="more overrides for every run (key=value)")
    parser.add_argument("--title", default="", help="what the section measures, before its settings")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("train_speed"))
    args = parser.parse_args()
    rows = []
    for model in args.models.split(","):
        rows.append(run_model(args, model))
        print(json.dumps(rows[-1]), flush=True)
    append_csv(args.out.with_suffix(".csv"), rows)
    settings = f"{args.steps} steps of batch {args.batch_size}, {args.threads} threads"
    command = shlex.join(["python", *sys.argv])  # as typed; the title states steps, batch and threads
    append_section(args.out.with_suffix(".md"), f"{args.title}: {settings}" if args.title else settings, command,
                   ["| " + " | ".join(COLUMNS) + " |", "|---|" + "---:|" * (len(COLUMNS) - 1),
                    *["| " + " | ".join(str(row[name]) for name in COLUMNS) + " |" for row in rows]])


if __name__ == "__main__":
    main()
