"""The ablation tables' statistics: per-impression files, seed averages, the paired t-test against a case computed
by hand (t from its formula, p from Student's t CDF for 3 degrees of freedom in closed form), and the verdicts."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from omegaconf import OmegaConf

from newsrec_dist.eval.report import Arm, _cost_conversion
from newsrec_dist.eval.significance import (
    PairedTest, paired_t_test, read_per_impression, seed_average, verdict, write_per_impression,
)


def student_t3_two_sided(t: float) -> float:
    """P(|T| > t) for Student's t with 3 degrees of freedom: F(t) = 1/2 + (x/(1+x²) + atan x)/π with x = t/√3."""
    x = t / math.sqrt(3.0)
    cdf = 0.5 + (x / (1.0 + x * x) + math.atan(x)) / math.pi
    return 2.0 * (1.0 - cdf)


def test_paired_t_test_equals_the_hand_computed_case() -> None:
    # differences 0.1, 0.2, 0.3, 0.4: mean 0.25, sample sd sqrt(0.05/3), t = 0.25 / (sd / 2) = 3.873, df 3
    baseline = pd.Series([0.50, 0.60, 0.40, 0.55], index=[11, 12, 13, 14])
    arm = pd.Series([0.60, 0.80, 0.70, 0.95], index=[11, 12, 13, 14])
    sd = math.sqrt(sum((d - 0.25) ** 2 for d in (0.1, 0.2, 0.3, 0.4)) / 3)
    t = 0.25 / (sd / 2)
    test = paired_t_test(arm, baseline)
    assert test.impressions == 4
    assert test.mean_difference == pytest.approx(0.25)
    assert test.t == pytest.approx(t) and t == pytest.approx(3.8730, abs=1e-4)
    assert test.p_value == pytest.approx(student_t3_two_sided(t), rel=1e-9)
    assert test.p_value == pytest.approx(0.0305, abs=1e-4)
    half_width = 3.182446305 * sd / 2  # t_{0.975, 3} × standard error
    assert (test.ci_low, test.ci_high) == pytest.approx((0.25 - half_width, 0.25 + half_width), rel=1e-6)
    assert verdict(test, 0.05) == "supported" and verdict(test, 0.01) == "not shown"
    assert verdict(paired_t_test(baseline, arm), 0.05) == "contradicted"


def test_pairs_by_impression_id_and_drops_undefined_impressions() -> None:
    baseline = pd.Series([0.50, 0.60, 0.40, 0.55, 0.3], index=[11, 12, 13, 14, 15])
    # shuffled order, an impression the baseline lacks (99), one AUC undefined in the arm (15)
    arm = pd.Series([0.95, 0.70, 0.60, 0.80, np.nan, 0.1], index=[14, 13, 11, 12, 15, 99])
    test = paired_t_test(arm, baseline)
    assert test.impressions == 4 and test.mean_difference == pytest.approx(0.25)
    assert test.p_value == pytest.approx(student_t3_two_sided(test.t))
    same = paired_t_test(baseline, baseline)  # equal arms (one shared run): nothing to test
    assert (same.mean_difference, same.p_value) == (0.0, 1.0)
    with pytest.raises(ValueError, match="at least 2 impressions"):
        paired_t_test(arm.loc[[99]], baseline)


def test_seed_average_is_per_impression_and_needs_the_same_impressions(tmp_path: Path) -> None:
    ids = np.array([7, 3, 5])
    for seed, values in enumerate(([0.5, np.nan, 1.0], [0.7, 0.2, 0.0])):
        (tmp_path / f"s{seed}").mkdir()
        write_per_impression(tmp_path / f"s{seed}", ids, {"auc": np.array(values), "mrr": np.array(values) / 2})
    frames = [read_per_impression(tmp_path / f"s{seed}") for seed in (0, 1)]
    mean = seed_average(frames)
    assert mean.index.tolist() == [7, 3, 5]
    np.testing.assert_allclose(mean["auc"].to_numpy(), [0.6, 0.2, 0.5])  # NaN-aware: impression 3 from one seed
    np.testing.assert_allclose(mean["mrr"].to_numpy(), [0.3, 0.1, 0.25])
    with pytest.raises(ValueError, match="different impressions"):
        seed_average([frames[0], frames[1].iloc[:2]])
    with pytest.raises(FileNotFoundError, match="per-impression"):
        read_per_impression(tmp_path / "missing")


def test_genre_cost_conversion_averages_the_gains_of_matching_and_ranking_models() -> None:
    """Δ AUC per unit of LLM work, by hand: ns gains +0.02 (nrms) and +0.04 (dcn, ranking), 2M tokens for $0.50."""
    ablation = OmegaConf.create({"variants": [{"name": "base", "llm_tasks": []},
                                              {"name": "ns", "llm_tasks": ["summarize"]}]})
    arms = [Arm(variant, model, [f"{variant}.{model}"]) for variant in ("base", "ns") for model in ("nrms", "dcn")]
    runs = {f"{variant}.{model}": {"ranking": model == "dcn"} for variant in ("base", "ns") for model in ("nrms", "dcn")}
    tests = {("ns", model): PairedTest(100, gain, 0.0, 0.0, 1.0, 0.01) for model, gain in (("nrms", 0.02), ("dcn", 0.04))}
    generation = {"summarize": {"prompt_tokens": 1_500_000, "completion_tokens": 400_000, "cached_prompt_tokens": 100_000,
                                "cached_completion_tokens": 0, "cost_usd": 0.5}}
    header, _, row = _cost_conversion(ablation, arms, runs, tests, generation)
    assert "Δ AUC per USD" in header
    assert row == "| ns | 2000000 | 0.5000 | +0.0200 | +0.0400 | +0.0300 | +0.0150 | +0.06 |"
