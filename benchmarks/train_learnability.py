"""Dev AUC of every model on the planted data of the learnability tests (tests/test_train.py), same settings.

Usage:
    python benchmarks/train_learnability.py --workdir /tmp/bench-learn

Generates the planted dataset (tests/planted.py: tiny catalog, 5,000 impressions, affinity_weight 10, no
conformist impressions), trains each model of the learnability tests plus PLM-NR and LECOP (GloVe + real
Node2Vec vectors of the news co-click graph, as in the test) with the tests' settings (planted.FAST: 2 epochs),
and appends their dev metrics, with each AUC's share of the oracle's lift over random, to <out>.csv/.md. The
non-learned baselines and the generator's oracle on the same split head the section.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from newsrec_dist.measure import append_csv, append_section

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from planted import (  # noqa: E402  (the tests' data and settings)
    LEARNERS, baseline_auc, floor, lecop_overrides, make_planted, oracle_share, train,
)

COLUMNS = ("model", "dev_auc", "of_oracle_lift", "new_auc", "warm_auc", "mrr", "ndcg@10", "auc_per_epoch", "train_s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/bench-learn"))
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("train_learnability"))
    args = parser.parse_args()
    prepared = make_planted(args.workdir / "data")
    variants = [(f"{name}{' ' + ' '.join(extra) if extra else ''}", [f"model={name}", *extra]) for name, extra in LEARNERS]
    variants += [("plm_nr (last 10 clicks, 1 epoch)", ["model=plm_nr", "train.max_history=10", "train.epochs=1"]),
                 ("lecop (GloVe + Node2Vec news/w=2 vectors)", lecop_overrides(prepared, args.workdir))]
    rows = []
    for index, (label, overrides) in enumerate(variants):
        started = time.perf_counter()
        summary = train(prepared, args.workdir / f"run{index}", *overrides)
        metrics = summary["metrics"]
        rows.append({"model": label, "dev_auc": round(metrics["all"]["auc"], 4),
                     "of_oracle_lift": round(oracle_share(prepared, metrics["all"]["auc"]), 2),
                     "new_auc": round(metrics["new"]["auc"], 4), "warm_auc": round(metrics["warm"]["auc"], 4),
                     "mrr": round(metrics["all"]["mrr"], 4), "ndcg@10": round(metrics["all"]["ndcg@10"], 4),
                     "auc_per_epoch": " → ".join(f"{e['val_auc']:.3f}" for e in summary["epochs"]),
                     "train_s": round(time.perf_counter() - started)})
        print(json.dumps(rows[-1]), flush=True)
    append_csv(args.out.with_suffix(".csv"), rows)
    bounds = ", ".join(f"{name} {auc:.4f}" for name, auc in baseline_auc(prepared).items())
    append_section(args.out.with_suffix(".md"), "planted data v2, 2 epochs (planted.FAST), dim 64, batch 32, CPU",
                   f"python benchmarks/train_learnability.py --workdir {args.workdir}",
                   [f"Dev AUC of the baselines and the oracle: {bounds}; the tests' floor: {floor(prepared):.4f}.", "",
                    "| " + " | ".join(COLUMNS) + " |", "|---|" + "---:|" * (len(COLUMNS) - 2) + "---|",
                    *["| " + " | ".join(str(row[name]) for name in COLUMNS) + " |" for row in rows]])


if __name__ == "__main__":
    main()
