"""Drift that matters: significant AND large. Distance tests in the registry, effect sizes in
the verdict, the reports and the metrics."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from feedback_loop.drift import core, stattests
from feedback_loop.drift.report import write_html, write_markdown
from feedback_loop.drift.stattests.base import StatTest


def files(tmp_path: Path, reference: dict, current: dict) -> tuple[Path, Path]:
    ref, cur = tmp_path / "ref.parquet", tmp_path / "cur.parquet"
    pd.DataFrame(reference).to_parquet(ref)
    pd.DataFrame(current).to_parquet(cur)
    return ref, cur


def test_the_distances_are_registered_as_effect_sizes() -> None:
    assert stattests.effect_for("numeric").name == "wasserstein" and stattests.effect_for("categorical").name == "jensenshannon"
    assert {stattests.get(n).score for n in ("wasserstein", "jensenshannon")} == {"distance"}
    with pytest.raises(ValueError, match="cannot measure an effect size"):
        stattests.register(StatTest("ks2", "KS", ("numeric",), "p_value", 0.05, stattests.get("ks").run), effect_for=("numeric",))


def test_normalized_wasserstein_is_in_reference_stds_and_unit_free() -> None:
    rng = np.random.default_rng(0)
    ref, cur = rng.normal(0, 1, 20_000), rng.normal(0.5, 1, 20_000)
    effect = stattests.get("wasserstein").run(ref, cur, "scipy").statistic
    assert effect == pytest.approx(0.5, abs=0.03)
    assert stattests.get("wasserstein").run(ref * 1000, cur * 1000, "scipy").statistic == pytest.approx(effect)
    constant = stattests.get("wasserstein").run(np.ones(10), np.ones(10), "alibi")
    assert constant.statistic == 0.0 and math.isnan(constant.p_value)  # a distance has no p-value


def test_jensen_shannon_is_zero_for_the_same_mix_and_one_for_disjoint_ones() -> None:
    js = stattests.get("jensenshannon").run
    assert js(np.array([10, 30]), np.array([100, 300]), "scipy").statistic == pytest.approx(0.0, abs=1e-9)
    assert js(np.array([10, 0]), np.array([0, 7]), "scipy").statistic == pytest.approx(1.0)


def test_a_tiny_shift_on_many_rows_is_significant_but_does_not_count(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    n = 200_000
    ref, cur = files(
        tmp_path,
        {"x": rng.normal(0, 1, n), "c": rng.choice(["a", "b"], n, p=[0.5, 0.5])},
        {"x": rng.normal(0.03, 1, n), "c": rng.choice(["a", "b"], n, p=[0.52, 0.48])},
    )
    result = core.detect(ref, cur, engine="scipy")
    by_name = {f.name: f for f in result.features}
    assert all(f.p_value < result.threshold for f in result.features), "with this many rows both shifts are significant"
    assert by_name["x"].effect < 0.05 and by_name["c"].effect < 0.05
    assert not result.is_drift and result.drifted == []
    # The same data with the effect threshold off: the p-values alone say drift.
    assert core.detect(ref, cur, engine="scipy", effect_threshold=0.0).is_drift


def test_a_feature_drifts_just_above_the_effect_threshold_not_just_below(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    ref, cur = files(tmp_path, {"x": rng.normal(0, 1, 5000)}, {"x": rng.normal(0.4, 1, 5000)})
    effect = core.detect(ref, cur, engine="scipy").features[0].effect
    assert core.detect(ref, cur, engine="scipy", effect_threshold=effect - 1e-6).is_drift
    assert not core.detect(ref, cur, engine="scipy", effect_threshold=effect).is_drift  # "above", not "at"


def test_both_figures_reach_the_reports_and_the_metrics(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    ref, cur = files(tmp_path, {"x": rng.normal(0, 1, 3000), "c": rng.choice(["a", "b"], 3000)},
                     {"x": rng.normal(1, 1, 3000), "c": rng.choice(["a", "b"], 3000)})
    result = core.detect(ref, cur, engine="scipy", effect_threshold=0.2)
    assert [f.name for f in result.drifted] == ["x"]
    metrics = result.metrics()
    assert metrics["effect_threshold"] == 0.2 and metrics["effect.x"] > 0.8 and metrics["effect.c"] < 0.1
    assert not any(isinstance(v, float) and math.isnan(v) for v in metrics.values())
    markdown = write_markdown(result, tmp_path / "d.md").read_text()
    assert "| p-value | effect size |" in markdown and "(Wasserstein/std) |" in markdown and "effect > 0.2" in markdown
    page = write_html(result, tmp_path / "d.html").read_text()
    assert "Effect size" in page and "Jensen-Shannon" in page and "effect size &gt; 0.2" in page
