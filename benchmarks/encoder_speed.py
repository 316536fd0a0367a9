"""Benchmark encoder fine-tuning: pairs/s and tokens/s per step, ZeRO-2 vs no ZeRO, peak memory.

Usage (prepared data from `newsrec data synth/prepare`):
    python benchmarks/encoder_speed.py --prepared runs/quickstart/prepared/synth-small --workdir /tmp/bench-enc \
        [--steps 10] [--encoders default,tiny_glm4] [--zero zero0,zero2] [--device cpu]

Each variant is one `newsrec encoder finetune` process (DeepSpeed engine, one rank) with the same
batch and chunk size; pairs/s and tokens/s are the training loop's own counters (model loading,
DeepSpeed start-up and the retrieval check excluded), peak RSS is the whole process tree's.
Appends rows to <out>.csv and a section to <out>.md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from newsrec_dist.measure import append_csv, append_section, measured


def run_variant(args: argparse.Namespace, encoder: str, zero: str) -> dict:
    work = args.workdir / f"{encoder}-{zero}"
    shutil.rmtree(work, ignore_errors=True)
    command = [sys.executable, "-m", "newsrec_dist.cli", "encoder", "finetune", "--quiet", f"encoder={encoder}",
               f"paths.work_dir={work}", f"data.prepared_dir={args.prepared}", f"encoder.device={args.device}",
               f"encoder.finetune.steps={args.steps}", f"encoder.finetune.batch_size={args.batch_size}",
               f"encoder.finetune.chunk_size={args.chunk_size}", f"encoder.finetune.deepspeed={zero}",
               f"encoder.finetune.checkpoint_every={args.steps}", "encoder.finetune.eval_max_items=200"]
    run = measured(command)
    wall, rss = run.wall_s, run.peak_rss_mib
    summary = json.loads(next((work / "encoder").glob("*/summary.json")).read_text())
    return {"encoder": encoder, "zero": zero, "steps": args.steps, "batch": args.batch_size, "chunk": args.chunk_size,
            "pairs_per_s": round(summary["pairs_per_second"], 1), "tokens_per_s": round(summary["tokens_per_second"]),
            "step_s": round(summary["train_seconds"] / args.steps, 2), "wall_s": round(wall, 1),
            "peak_rss_mib": round(rss)}


def write_results(args: argparse.Namespace, rows: list[dict]) -> None:
    append_csv(args.out.with_suffix(".csv"), rows)
    title = f"{args.device}, batch {args.batch_size}, chunk {args.chunk_size}, {args.steps} steps"
    append_section(args.out.with_suffix(".md"), title,
                   f"python benchmarks/encoder_speed.py --prepared {args.prepared} --workdir {args.workdir} "
                   f"--steps {args.steps} --batch-size {args.batch_size} --chunk-size {args.chunk_size} "
                   f"--encoders {args.encoders} --zero {args.zero} --device {args.device}",
                   ["| encoder | ZeRO | pairs/s | tokens/s | s/step | process wall (s) | peak RSS (MiB) |",
                   "|---|---|---:|---:|---:|---:|---:|",
                   *[f"| {r['encoder']} | {r['zero']} | {r['pairs_per_s']} | {r['tokens_per_s']} | {r['step_s']} | "
                   f"{r['wall_s']} | {r['peak_rss_mib']} |" for r in rows]])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prepared", type=Path, required=True)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--chunk-size", type=int, default=32)
    parser.add_argument("--encoders", default="default,tiny_glm4")
    parser.add_argument("--zero", default="zero0,zero2")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/encoder_speed"))
    args = parser.parse_args()
    rows = [run_variant(args, encoder, zero) for encoder in args.encoders.split(",") for zero in args.zero.split(",")]
    print(json.dumps(rows, indent=2))
    write_results(args, rows)


if __name__ == "__main__":
    main()
