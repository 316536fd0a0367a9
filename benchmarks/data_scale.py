"""Benchmark the data stages at a given scale: synth → prepare → eval (wall time, peak RSS).

Usage: python benchmarks/data_scale.py --scale mind-large --workdir /tmp/bench-data [--stages synth,prepare,eval]
(a run without synth reuses the workdir's data from an earlier run).
Each stage runs as its own `newsrec` process under `/usr/bin/time -v`, so peak memory is per stage.
Writes <out>.csv and <out>.md (appending a row per stage and scale).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from newsrec_dist.measure import append_csv, append_section

NEWSREC = [sys.executable, "-m", "newsrec_dist.cli"]
DEFAULT_STAGES = "synth,prepare,eval"


def timed(command: list[str]) -> tuple[float, float, str]:
    """Run under GNU time; returns (wall seconds, peak RSS MiB, stdout)."""
    result = subprocess.run(["/usr/bin/time", "-v", *command], capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stdout}\n{result.stderr}")
    wall = re.search(r"Elapsed \(wall clock\) time.*: (?:(\d+):)?(\d+):([\d.]+)", result.stderr)
    assert wall, result.stderr
    hours, minutes, seconds = int(wall.group(1) or 0), int(wall.group(2)), float(wall.group(3))
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", result.stderr)
    assert rss, result.stderr
    return hours * 3600 + minutes * 60 + seconds, int(rss.group(1)) / 1024, result.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scale", default="mind-small")
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/data_scale"))
    parser.add_argument("--stages", default=DEFAULT_STAGES)
    args = parser.parse_args()
    selected = args.stages.split(",")
    if "synth" in selected:
        shutil.rmtree(args.workdir, ignore_errors=True)
    raw, prepared, evaluated = args.workdir / "raw", args.workdir / "prepared", args.workdir / "eval"
    overrides = [f"data.synth.scale={args.scale}", f"data.raw_dir={raw}", f"data.prepared_dir={prepared}",
                 f"eval.output_dir={evaluated}"]
    stages = {
        "synth": [*NEWSREC, "data", "synth", "--quiet", *overrides],
        "prepare": [*NEWSREC, "data", "prepare", "--quiet", *overrides],
        "eval": [
            *NEWSREC, "eval", "--baseline", "random", "--baseline", "popularity", "--baseline", "category_profile",
            "--baseline", "oracle", *overrides],
    }
    rows, load_before = [], os.getloadavg()[0]
    for stage, command in stages.items():
        if stage not in selected:
            continue
        wall, rss, _ = timed(command)
        rows.append({"scale": args.scale, "stage": stage, "wall_s": round(wall, 1), "peak_rss_mib": round(rss)})
        print(rows[-1], flush=True)
    stats = json.loads((raw / "synth_stats.json").read_text())
    metrics_file = evaluated / "metrics.json"  # absent when only synth (or prepare) ran
    metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {"models": {}}
    sizes = {str(path): path.stat().st_size for path in raw.glob("*/*.tsv")}
    write_results(args, rows, stats, metrics, sizes, load_before)


def write_results(args: argparse.Namespace, rows: list[dict], stats: dict, metrics: dict, sizes: dict,
                  load_before: float) -> None:
    append_csv(args.out.with_suffix(".csv"), rows)
    auc = {name: round(groups["all"]["auc"], 4) for name, groups in metrics["models"].items()}
    stages = [row["stage"] for row in rows]
    command = f"python benchmarks/data_scale.py --scale {args.scale} --workdir {args.workdir}"
    append_section(args.out.with_suffix(".md"), f"scale `{args.scale}`",
                   command + ("" if args.stages == DEFAULT_STAGES else f" --stages {args.stages}"), [
        "Stages: " + ", ".join(stages) + (" (eval = random, popularity, category_profile and the generator's "
                                          "oracle on the dev split)" if "eval" in stages else "")
        + f"; 1-minute load average before the run: {load_before:.2f} (2 cores).\n",
        "| stage | wall (s) | peak RSS (MiB) |", "|---|---:|---:|",
        *[f"| {row['stage']} | {row['wall_s']} | {row['peak_rss_mib']} |" for row in rows],
        "",
        f"Generated: {stats['users']:,} users, {stats['news']:,} news, {stats['impressions']:,} impressions, "
        f"{stats['clicks']:,} clicks ({stats['clicks_per_impression']:.3f}/impression), "
        f"{stats['candidates_per_impression']:.1f} candidates/impression; TSV bytes: "
        f"{sum(sizes.values()) / 1e9:.2f} GB." + (f" Dev AUC: {auc}." if auc else "") + " Each planted signal alone (dev AUC): "
        f"{ {name: round(value, 4) for name, value in stats['dev_signal_auc'].items()} }; {stats['stories']:,} stories, "
        f"history story continuation {stats['history_story_continuation_rate']:.3f}, home-region clicks "
        f"{stats['home_region_click_share']:.3f}, cold: {stats['cold']}.",
    ])


if __name__ == "__main__":
    main()
