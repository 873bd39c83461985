"""Drift stage: real Parquet files, both engines, the KFP wrapper with artifacts on disk."""

from __future__ import annotations

import html
import json
import re
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from kfp import dsl
from PIL import Image
from scipy import stats

from feedback_loop.dataset import write_parquet
from feedback_loop.drift import core, reading, report
from feedback_loop.drift.features import N_BINS
from feedback_loop.drift.predictions import two_proportions
from feedback_loop.drift.stattests import alibi_detectors
from feedback_loop.drift.component import detect_drift
from feedback_loop.errors import DataError

N_FEATURES, SHIFTED = 20, [f"x{i:02d}" for i in (1, 6, 9, 13, 18)]
CHROMIUM = Path("/usr/bin/chromium")


def frame(rng: np.random.Generator, rows: int, shifted: list[str] = (), shift: float = 0.0) -> pd.DataFrame:
    """`N_FEATURES` standard-normal features plus the non-feature columns of the dataset contract."""
    data = {f"x{i:02d}": rng.normal(size=rows) for i in range(N_FEATURES)}
    for name in shifted:
        data[name] += shift  # in units of the feature's std (1.0)
    return pd.DataFrame(
        {
            "id": [f"r{i}" for i in range(rows)],
            "created_at": pd.Timestamp(datetime(2025, 1, 1, tzinfo=timezone.utc)),
            "label": rng.choice(["cat", "dog"], size=rows),
            **data,
        }
    )


def write_pair(folder: Path, reference: pd.DataFrame, current: pd.DataFrame) -> tuple[Path, Path]:
    return write_parquet(reference, folder / "reference.parquet"), write_parquet(current, folder / "current.parquet")


@pytest.fixture(scope="module")
def shifted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """20,000 rows each side; five features shifted by 0.2 std in `current`."""
    folder = tmp_path_factory.mktemp("shifted")
    rng = np.random.default_rng(7)
    reference = frame(rng, 20_000)
    current = frame(rng, 20_000, SHIFTED, 0.2)
    # A serving column that moves a lot: it describes the serving, not the input, so it is never tested.
    current["confidence"] = rng.uniform(0.0, 0.2, size=len(current))
    return write_parquet(reference, folder / "reference.parquet"), write_parquet(current, folder / "current.parquet")


def test_flags_exactly_the_shifted_features(shifted: tuple[Path, Path]) -> None:
    result = core.detect(*shifted)  # alibi engine, bonferroni

    assert result.is_drift
    assert sorted(f.name for f in result.drifted) == SHIFTED
    assert len(result.features) == N_FEATURES  # id, created_at, label, confidence are not features
    assert result.threshold == pytest.approx(0.05 / N_FEATURES)
    assert result.share_drifted == pytest.approx(5 / N_FEATURES)
    assert [f.drifted for f in result.ranked()[:5]] == [True] * 5
    x01 = next(f for f in result.features if f.name == "x01")
    assert x01.kind == "numeric" and x01.test == "KS"
    assert x01.current["mean"] - x01.reference["mean"] == pytest.approx(0.2, abs=0.03)
    assert len(x01.histogram.edges) == N_BINS + 1
    assert sum(x01.histogram.reference) == x01.n_reference == 20_000


def test_fdr_flags_the_same_features_at_the_benjamini_hochberg_step(shifted: tuple[Path, Path]) -> None:
    result = core.detect(*shifted, correction="fdr", engine="scipy")

    assert sorted(f.name for f in result.drifted) == SHIFTED
    assert result.threshold == pytest.approx(0.05 * 5 / N_FEATURES)  # the 5th step of alpha * k / n


@pytest.mark.slow  # 100 repetitions through Parquet: about 20 s here
def test_no_shift_rarely_flags_anything(tmp_path: Path) -> None:
    # 100 repetitions through the real Parquet path; the SciPy engine and 2,000 rows keep
    # this around a few seconds (its p-values equal alibi's, see the engine test below).
    rng = np.random.default_rng(11)

    def features(rows: int) -> pa.Table:
        return pa.table({f"x{i:02d}": rng.normal(size=rows) for i in range(N_FEATURES)})

    alarms = 0
    for _ in range(100):
        reference = write_parquet(features(2_000), tmp_path / "reference.parquet")
        current = write_parquet(features(2_000), tmp_path / "current.parquet")
        alarms += core.detect(reference, current, engine="scipy").is_drift
    # Bonferroni bounds the family-wise false-alarm rate by alpha: about 5 expected.
    assert alarms <= 10, alarms


def test_new_category_is_flagged_and_reported(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    colours = ["red", "green", "blue"]
    reference = pd.DataFrame({"colour": rng.choice(colours, 5_000), "size": rng.normal(size=5_000)})
    current = pd.DataFrame(
        {"colour": rng.choice([*colours, "purple"], 5_000, p=[0.3, 0.3, 0.3, 0.1]), "size": rng.normal(size=5_000)}
    )
    result = core.detect(*write_pair(tmp_path, reference, current))

    colour = next(f for f in result.features if f.name == "colour")
    assert colour.kind == "categorical" and colour.test == "chi-squared"
    assert colour.drifted and [f.name for f in result.drifted] == ["colour"]
    assert colour.unseen == ["purple"] and colour.n_unseen == 1
    assert colour.current["purple"] == pytest.approx(0.1, abs=0.02)
    assert colour.reference["purple"] == 0.0  # shares over the categories of both sides
    assert "purple" in colour.histogram.labels
    markdown = report.write_markdown(result, tmp_path / "summary.md").read_text()
    assert "colour" in markdown and "purple" in markdown


def test_engines_agree(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    rows = 3_000
    reference = pd.DataFrame(
        {
            "small": rng.normal(size=rows),
            "medium": rng.normal(size=rows),
            "large": rng.normal(size=rows),
            "count": rng.poisson(3, size=rows),
            "flag": rng.random(rows) < 0.5,
            "two": rng.choice(["a", "b"], rows),  # a 2 x 2 table: scipy applies Yates' correction
            "many": rng.choice(list("abcdef"), rows),
        }
    )
    current = reference.sample(frac=1.0, random_state=1).reset_index(drop=True)
    current["small"] = rng.normal(0.03, 1.0, size=rows)
    current["medium"] = rng.normal(0.1, 1.0, size=rows)
    current["large"] = rng.normal(0.5, 1.0, size=rows)
    current["count"] = rng.poisson(3.2, size=rows)
    current["many"] = rng.choice(list("abcdefg"), rows)
    current.loc[::7, "small"] = np.nan  # NaN and nulls are dropped per column, the same way in both engines
    current.loc[::11, "many"] = None
    ref_path, cur_path = write_pair(tmp_path, reference, current)

    alibi = {f.name: f for f in core.detect(ref_path, cur_path, engine="alibi").features}
    scipy = {f.name: f for f in core.detect(ref_path, cur_path, engine="scipy").features}

    assert alibi.keys() == scipy.keys() == set(reference.columns)
    for name in alibi:
        # alibi-detect stores p-values and statistics in float32 arrays (KSDrift.feature_score,
        # ChiSquareDrift.feature_score), and no public API returns the float64 it computed:
        # its p-value is exactly SciPy's float64 p-value rounded to float32.
        assert np.float32(alibi[name].p_value) == np.float32(scipy[name].p_value), name
        assert np.float32(alibi[name].statistic) == np.float32(scipy[name].statistic), name
        # Hence |difference| <= half a float32 step: below 1e-9 for every p-value under 2**-6
        # (~0.0156, the range where verdicts are made: 0.05 / 7 features here), ~3e-8 above.
        step = float(np.spacing(np.float32(scipy[name].p_value)))
        assert abs(alibi[name].p_value - scipy[name].p_value) <= step / 2, name
        if scipy[name].p_value < 2**-6:
            assert abs(alibi[name].p_value - scipy[name].p_value) <= 1e-9, name
        assert alibi[name].drifted == scipy[name].drifted, name
    assert 1e-30 < scipy["medium"].p_value < 2**-6  # a p-value compared at 1e-9 above
    assert scipy["large"].drifted and not scipy["flag"].drifted and not scipy["two"].drifted
    assert scipy["flag"].kind == "categorical"  # booleans are categories


def test_scipy_engine_matches_an_independent_computation_at_1e_9(tmp_path: Path) -> None:
    """KS distance from the empirical CDFs, p-value from Smirnov's distribution; chi-squared by hand."""
    rng = np.random.default_rng(8)
    reference = pd.DataFrame({"x": rng.normal(size=4_000), "c": rng.choice(list("abcd"), 4_000), "b": rng.choice(list("ab"), 4_000)})
    current = pd.DataFrame(
        {"x": rng.normal(0.05, 1.1, size=2_500), "c": rng.choice(list("abcde"), 2_500), "b": rng.choice(list("ab"), 2_500, p=[0.55, 0.45])}
    )
    result = {f.name: f for f in core.detect(*write_pair(tmp_path, reference, current), engine="scipy").features}

    ref, cur = np.sort(reference["x"].to_numpy()), np.sort(current["x"].to_numpy())
    grid = np.concatenate([ref, cur])
    distance = np.max(np.abs(np.searchsorted(ref, grid, "right") / len(ref) - np.searchsorted(cur, grid, "right") / len(cur)))
    en = len(ref) * len(cur) / (len(ref) + len(cur))
    assert result["x"].statistic == pytest.approx(distance, abs=1e-12)
    assert abs(result["x"].p_value - stats.kstwo.sf(distance, round(en))) <= 1e-9

    for name, yates in (("c", False), ("b", True)):
        categories = sorted(set(reference[name]) | set(current[name]))
        table = np.array([[np.sum(side[name] == c) for c in categories] for side in (reference, current)], float)
        expected = table.sum(1, keepdims=True) * table.sum(0, keepdims=True) / table.sum()
        gap = np.abs(table - expected) - (0.5 if yates else 0.0)
        statistic = float(np.sum(gap**2 / expected))
        assert abs(result[name].statistic - statistic) <= 1e-9 * statistic, name
        assert abs(result[name].p_value - stats.chi2.sf(statistic, len(categories) - 1)) <= 1e-9, name
    assert result["c"].drifted and result["c"].unseen == ["e"]


def test_alibi_import_leaves_tensorflow_importable() -> None:
    alibi_detectors()
    assert sys.modules.get("tensorflow", "absent") is not None


def test_no_common_feature_names_both_sides(tmp_path: Path) -> None:
    reference = write_parquet(pd.DataFrame({"id": ["1"], "age": [3.0], "height": [1.0]}), tmp_path / "r.parquet")
    current = write_parquet(pd.DataFrame({"id": ["1"], "weight": [2.0]}), tmp_path / "c.parquet")

    with pytest.raises(DataError) as err:
        core.detect(reference, current)
    message = str(err.value)
    assert "['age', 'height']" in message and "['weight']" in message
    assert "\n" not in message


@pytest.mark.parametrize("empty", ["current", "reference"])
def test_empty_dataset_is_a_data_error(tmp_path: Path, empty: str) -> None:
    rows = {"current": 0 if empty == "current" else 5, "reference": 0 if empty == "reference" else 5}
    paths = {
        side: write_parquet(pd.DataFrame({"x": np.arange(n, dtype=float)}), tmp_path / f"{side}.parquet")
        for side, n in rows.items()
    }
    with pytest.raises(DataError, match=f"{empty} dataset .* has no rows"):
        core.detect(paths["reference"], paths["current"])


def test_untestable_features_are_skipped_and_said(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    when = pd.Timestamp("2025-01-01")
    reference = pd.DataFrame({"x": rng.normal(size=500), "gone": rng.normal(size=500), "zone": 1.0, "seen": when})
    current = pd.DataFrame({"x": rng.normal(size=500), "gone": np.nan, "zone": "eu", "seen": when})
    result = core.detect(*write_pair(tmp_path, reference, current))

    assert [f.name for f in result.features] == ["x"]
    assert result.skipped["gone"] == "no values in the current data"
    # The reference's type holds: text under a number feature is no number, so nothing is left to test.
    assert result.skipped["zone"] == "no values in the current data"
    assert result.quality.type_changes["zone"] == "double → string"
    assert re.fullmatch(r"type timestamp\[\w+\] is neither numeric nor text", result.skipped["seen"])
    page = report.write_html(result, tmp_path / "r.html").read_text()
    assert all(name in page for name in result.skipped)


def test_categorical_option_tests_integer_codes_with_chi_squared(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    reference = pd.DataFrame({"region": rng.integers(0, 4, size=2_000)})
    current = pd.DataFrame({"region": rng.integers(0, 5, size=2_000)})  # code 4 is new
    result = core.detect(*write_pair(tmp_path, reference, current), feature_types={"region": "categorical"})

    (region,) = result.features
    assert region.kind == "categorical" and region.unseen == ["4"] and region.drifted


def test_image_only_datasets_are_not_tested(tmp_path: Path) -> None:
    images = pd.DataFrame({"id": ["a", "b"], "pixels": [b"\x00" * 4, b"\x01" * 4], "label": ["cat", "dog"]})
    result = core.detect(*write_pair(tmp_path, images, images))
    assert not result.tested and not result.is_drift and "has a tabular feature column" in result.reason


def test_run_without_reference_or_with_too_few_rows_is_not_tested(tmp_path: Path, shifted: tuple[Path, Path]) -> None:
    reference, current = shifted
    no_model = core.run(current, "")
    assert not no_model.tested and not no_model.is_drift and no_model.reason == "no production model yet"

    few = write_parquet(frame(np.random.default_rng(0), 12), tmp_path / "few.parquet")
    too_few = core.run(few, f"file://{reference}", min_rows=30)
    assert too_few.reason == "only 12 rows since the last training; at least 30 needed"
    assert too_few.metrics()["tested"] == 0.0 and too_few.metrics()["share_drifted"] == 0.0

    page = report.write_html(too_few, tmp_path / "report.html").read_text()
    assert "only 12 rows since the last training" in page
    assert "only 12 rows" in report.write_markdown(too_few, tmp_path / "summary.md").read_text()

    tested = core.run(current, f"file://{reference}", engine="scipy")
    assert sorted(f.name for f in tested.drifted) == SHIFTED


def test_report_is_self_contained_and_escapes_names(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    odd = '<img src=x onerror="alert(1)">&co'
    reference = pd.DataFrame({odd: rng.normal(size=400), "city": rng.choice(["Köln", "Paris"], 400)})
    current = pd.DataFrame({odd: rng.normal(1.0, 1.0, size=400), "city": rng.choice(["Köln", "Paris"], 400)})
    result = core.detect(*write_pair(tmp_path, reference, current))
    page = report.write_html(result, tmp_path / "out" / "report.html").read_text(encoding="utf-8")

    assert odd not in page and "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;&amp;co" in page
    assert "Köln" in page
    assert_self_contained(page)
    assert page.count("<svg") == 2
    json.dumps(result.to_dict())  # the whole result is JSON-able


def assert_self_contained(page: str) -> None:
    assert page.startswith("<!doctype html>")
    for forbidden in ("<script", "<link", "http://", "https://", "@import", "url("):
        assert forbidden not in page, forbidden


def artifact(cls: type[dsl.Artifact], path: Path) -> dsl.Artifact:
    # A plain local path as the URI: kfp maps only remote schemes (gs://, s3://, ...) to mounts.
    made = cls(uri=str(path))
    assert made.path == str(path)
    return made


def outputs(folder: Path) -> dict[str, dsl.Artifact]:
    return {
        "report": artifact(dsl.HTML, folder / "report.html"),
        "summary": artifact(dsl.Markdown, folder / "summary.md"),
        "metrics": artifact(dsl.Metrics, folder / "metrics.json"),
        "verdict_json": artifact(dsl.Artifact, folder / "verdict.json"),
    }


def strict_json(path: Path | str) -> dict:
    def refuse(constant: str) -> None:
        raise AssertionError(f"{constant} is not JSON")

    return json.loads(Path(path).read_text(encoding="utf-8"), parse_constant=refuse)


def test_component_with_real_artifacts(tmp_path: Path, shifted: tuple[Path, Path]) -> None:
    reference, current = shifted
    out = outputs(tmp_path)

    is_drift = detect_drift.python_func(current=artifact(dsl.Dataset, current), reference_uri=f"file://{reference}", **out)

    assert is_drift is True
    page = Path(out["report"].path).read_text(encoding="utf-8")
    assert_self_contained(page)
    assert all(name in page for name in SHIFTED)
    assert page.index("x01") < page.index("x00")  # drifted features come first
    assert "Drift detected in 5 of 20 features" in Path(out["summary"].path).read_text()
    metrics = out["metrics"].metadata
    assert metrics["share_drifted"] == pytest.approx(0.25)
    assert metrics["n_drifted"] == 5.0
    assert set(metrics) >= {f"p_value.{name}" for name in SHIFTED}
    verdict = strict_json(out["verdict_json"].path)
    p_values = {f["name"]: f["p_value"] for f in verdict["features"]}
    assert verdict["is_drift"] is True and sorted(verdict["drifted_features"]) == SHIFTED
    assert [p_values[n] for n in verdict["drifted_features"]] == sorted(p_values[n] for n in SHIFTED)  # most significant first
    assert verdict["predictions"]["reason"].startswith("no reference_predictions.parquet")


def test_component_without_production_model(tmp_path: Path, shifted: tuple[Path, Path]) -> None:
    out = outputs(tmp_path)
    is_drift = detect_drift.python_func(current=artifact(dsl.Dataset, shifted[1]), reference_uri="", **out)
    assert is_drift is False
    assert "no production model yet" in Path(out["report"].path).read_text()
    assert strict_json(out["verdict_json"].path)["reason"] == "no production model yet"


def test_component_interface() -> None:
    spec = detect_drift.component_spec
    assert set(spec.outputs) == {"report", "summary", "metrics", "verdict_json", "Output"}
    assert spec.outputs["report"].type == "system.HTML@0.0.1"
    assert spec.outputs["summary"].type == "system.Markdown@0.0.1"
    assert spec.outputs["metrics"].type == "system.Metrics@0.0.1"
    assert spec.outputs["verdict_json"].type == "system.Artifact@0.0.1"
    assert spec.outputs["Output"].type == "Boolean"
    # Its options carry the settings' names; tests/test_parameters.py checks their defaults and help.
    assert set(spec.inputs) == {"current", "reference_uri", "log_level", *core.SETTINGS}
    assert re.search(r"/data:\d", spec.implementation.container.image)
    assert "verdict_json:" in detect_drift.python_func.__doc__.split("Returns:")[1]


# ---------------------------------------------------------------- dataset-level verdict


def test_share_threshold_sets_the_dataset_verdict(shifted: tuple[Path, Path]) -> None:
    # 5 of 20 features drift (25 %): above a 20 % share, not above 30 %.
    above = core.detect(*shifted, engine="scipy", share_threshold=0.2)
    below = core.detect(*shifted, engine="scipy", share_threshold=0.3)

    assert above.is_drift and not below.is_drift
    assert sorted(f.name for f in below.drifted) == SHIFTED  # the features are still flagged
    assert report.verdict(below).startswith("No dataset drift: 5 of 20 features drifted (25%, not share above 30%")
    assert report.verdict(above).startswith("Drift detected in 5 of 20 features (25%, share above 20%")
    assert below.metrics()["is_drift"] == 0.0 and below.metrics()["share_threshold"] == 0.3


def test_feature_types_are_inferred_or_declared(tmp_path: Path) -> None:
    rng = np.random.default_rng(12)
    n = 3_000
    reference = pd.DataFrame(
        {
            "age": rng.normal(40, 10, n),
            "vip": rng.random(n) < 0.2,
            "store": rng.integers(0, 5, n),
            "zip": rng.choice(["10115", "80331"], n),
            "noise": rng.normal(size=n),
        }
    )
    current = reference.sample(frac=1.0, random_state=3).reset_index(drop=True)
    current["noise"] = rng.normal(5.0, 1.0, n)  # would drift, but it is ignored
    declared = {"store": "categorical", "zip": "numeric", "noise": "ignore", "elsewhere": "numeric"}
    result = core.detect(*write_pair(tmp_path, reference, current), feature_types=declared, engine="scipy")

    kinds = {f.name: f.kind for f in result.features}
    assert kinds == {"age": "numeric", "vip": "categorical", "store": "categorical"}
    assert result.skipped == {"zip": "declared numeric but holds string in reference and string in current"}
    assert "noise" not in result.metrics()["n_features"].__repr__() and not result.is_drift
    assert result.feature_types == declared  # recorded in the JSON
    store = next(f for f in result.features if f.name == "store")
    assert store.test == "chi-squared" and set(store.histogram.labels) == {"0", "1", "2", "3", "4"}
    with pytest.raises(DataError, match="feature types must be one of"):
        core.detect(*write_pair(tmp_path, reference, current), feature_types={"age": "text"})


# ------------------------------------------------------------------------ data quality


def test_data_quality_is_counted_over_every_row_and_reported(tmp_path: Path) -> None:
    rng = np.random.default_rng(21)
    n = 6_000
    reference = pd.DataFrame(
        {
            "temp": rng.uniform(0, 40, n),
            "rate": rng.normal(1.0, 0.1, n),
            "level": rng.integers(0, 10, n).astype("int64"),
            "gone": rng.normal(size=n),
            "zone": rng.choice(["a", "b"], n),
        }
    )
    current = pd.DataFrame(
        {
            "temp": rng.uniform(0, 50, n),  # a fifth above the reference's top
            "rate": rng.normal(1.0, 0.1, n),
            "level": rng.integers(0, 10, n).astype(float),  # int64 -> double: same family, no issue
            "zone": rng.integers(0, 2, n),  # string -> integer: a type change, not tested
            "fresh": rng.normal(size=n),
        }
    )
    rate = current["rate"].to_numpy().copy()
    rate[:300], rate[300:307], rate[307:310] = np.nan, np.inf, -np.inf
    nulls = np.zeros(n, bool)
    nulls[310:430] = True  # 120 nulls and 300 NaN: 7 % missing
    table = pa.Table.from_pandas(current.drop(columns="rate"), preserve_index=False)
    table = table.append_column("rate", pa.array(rate, mask=nulls))  # from numpy, NaN stays NaN (pandas makes it null)
    ref_path = write_parquet(reference, tmp_path / "reference.parquet")
    cur_path = write_parquet(table, tmp_path / "current.parquet")
    # A cap below the row count: the counts still cover every row.
    result = core.detect(ref_path, cur_path, engine="scipy", max_rows=1_000)

    q = result.quality
    assert q.missing_columns == ["gone"] and q.extra_columns == ["fresh"]
    assert q.type_changes == {"zone": "string → int64"}
    assert result.skipped["zone"] == "categorical (string) in reference but numeric (int64) in current"
    rate = next(c for c in q.columns if c.name == "rate")
    assert (rate.current_nan, rate.current_inf, rate.current_rows) == (300, 10, n)
    assert rate.current_missing == pytest.approx(420 / n) and rate.reference_missing == 0.0
    temp = next(c for c in q.columns if c.name == "temp")
    assert temp.below_range == 0
    assert temp.above_range == int(np.sum(current["temp"] > reference["temp"].max()))
    assert temp.out_of_range == pytest.approx(0.2, abs=0.02)
    level = next(c for c in q.columns if c.name == "level")
    assert level.issues() == [] and (level.reference_type, level.current_type) == ("int64", "double")

    issues = q.issues()
    assert issues[:3] == [
        "gone: in the reference but missing from the current data",
        "fresh: new in the current data (not in the reference, not tested)",
        "zone: type changed string → int64",
    ]
    assert any(i.startswith("rate: missing values rose from 0.0% to 7.0%") for i in issues)
    assert any(i.startswith("rate: 300 NaN") for i in issues)
    assert any(i.startswith("rate: 10 infinite values") for i in issues)
    assert any(re.match(r"temp: (19|20|21)\.\d% of current values outside the reference range", i) for i in issues)
    # Reported everywhere, never fatal.
    metrics = result.metrics()
    assert metrics["quality.issues"] == len(issues) and metrics["quality.missing.rate"] == pytest.approx(0.07)
    assert metrics["quality.out_of_range.temp"] == pytest.approx(temp.out_of_range)
    page = report.write_html(result, tmp_path / "r.html").read_text(encoding="utf-8")
    markdown = report.write_markdown(result, tmp_path / "r.md").read_text(encoding="utf-8")
    data = strict_json(report.write_json(result, tmp_path / "r.json"))
    for issue in issues[:5]:
        assert html.escape(issue) in page and issue in markdown
    assert data["quality_issues"] == issues
    # The tests take the finite, non-null values of the sample only.
    tested = next(f for f in result.features if f.name == "rate")
    assert 1_000 - 120 < tested.n_current < 1_000 - 20 and tested.n_reference == 1_000


# ------------------------------------------------------------------------------- scale


def test_reservoir_sample_is_uniform_seeded_and_bounded(tmp_path: Path) -> None:
    rows = 150_000  # more than two batches
    path = write_parquet(pa.table({"row": np.arange(rows, dtype=np.int64), "v": np.arange(rows) % 7 * 1.0}), tmp_path / "d.parquet")

    sample = reading.read_sample(path, ["row", "v"], max_rows=9_000, seed=4, numeric={"v"})
    again = reading.read_sample(path, ["row", "v"], max_rows=9_000, seed=4, numeric={"v"})
    other = reading.read_sample(path, ["row", "v"], max_rows=9_000, seed=5, numeric={"v"})

    picked = sample.table.column("row").to_numpy()
    assert sample.capped and sample.rows == rows and len(picked) == 9_000 == len(np.unique(picked))
    assert np.all(np.diff(picked) > 0)  # rows keep the file's order
    assert np.array_equal(picked, again.table.column("row").to_numpy())
    assert not np.array_equal(picked, other.table.column("row").to_numpy())
    assert np.array_equal(sample.table.column("v").to_numpy(), picked % 7 * 1.0)  # columns stay aligned
    # Uniform: each tenth of the file holds about a tenth of the sample (binomial sd ~ 28).
    per_tenth = np.bincount(picked * 10 // rows, minlength=10)
    assert np.all(np.abs(per_tenth - 900) < 150), per_tenth
    # Counts cover every row, not the sample.
    assert sample.counts["v"].rows == rows and (sample.counts["v"].minimum, sample.counts["v"].maximum) == (0.0, 6.0)

    whole = reading.read_sample(path, ["row"], max_rows=rows, seed=4, numeric=set())
    assert not whole.capped and whole.table.num_rows == rows


def test_row_cap_is_applied_and_recorded(tmp_path: Path, shifted: tuple[Path, Path]) -> None:
    result = core.detect(*shifted, engine="scipy", max_rows=5_000, seed=3)

    assert (result.n_reference, result.n_current) == (20_000, 20_000)
    assert (result.sampled_reference, result.sampled_current) == (5_000, 5_000) and result.capped
    assert all(f.n_reference == 5_000 == f.n_current for f in result.features)
    assert core.detect(*shifted, engine="scipy", max_rows=5_000, seed=3).features == result.features
    note = "tested on a seeded uniform sample of at most 5,000 rows per side"
    assert note in report.write_html(result, tmp_path / "r.html").read_text(encoding="utf-8")
    assert note in report.write_markdown(result, tmp_path / "r.md").read_text(encoding="utf-8")
    assert strict_json(report.write_json(result, tmp_path / "r.json"))["capped"] is True
    assert result.metrics()["sampled_current"] == 5_000.0


# -------------------------------------------------------------------- prediction drift


def model_store(folder: Path, rng: np.random.Generator, *, version: str = "v7", shift: bool = True) -> tuple[str, Path]:
    """A production version with training data and validation predictions, and a current extract.

    Reference: 2,000 validation rows, 300 wrong (15 %), cats predicted half the time, confident.
    Current: 1,500 rows served by `version` (plus 500 by a canary, which must be left out),
    1,000 of them labelled by feedback with 320 wrong (32 %), cats predicted 65 % of the time.
    """
    n = 4_000
    training = pd.DataFrame(
        {
            "id": [f"t{i}" for i in range(n)],
            "label": rng.choice(["cat", "dog"], n),
            "brightness": rng.normal(0.5, 0.1, n),
            "contrast": rng.normal(0.3, 0.05, n),
            "ink": rng.normal(0.2, 0.05, n),
            "camera": rng.choice(["pixel-6", "iphone-12", "galaxy-s21"], n),
        }
    )
    version_dir = folder / "store" / "cats-vs-dogs" / version
    write_parquet(training, version_dir / "training_data.parquet")
    k = 2_000
    labels = rng.choice(["cat", "dog"], k)
    wrong = np.zeros(k, bool)
    wrong[rng.choice(k, 300, replace=False)] = True
    validation = pd.DataFrame(
        {
            "id": [f"v{i}" for i in range(k)],
            "label": labels,
            "predicted_label": np.where(wrong, np.where(labels == "cat", "dog", "cat"), labels),
            "confidence": rng.beta(8, 2, k),
        }
    )
    write_parquet(validation, version_dir / "reference_predictions.parquet")

    m, canary = 1_500, 500
    d = 0.12 if shift else 0.0
    predicted = rng.choice(["cat", "dog"], m, p=[0.65, 0.35] if shift else [0.5, 0.5])
    labelled = np.arange(m) < 1_000
    wrong_now = np.zeros(m, bool)
    wrong_now[rng.choice(1_000, 320 if shift else 150, replace=False)] = True
    current = pd.DataFrame(
        {
            "id": [f"p{i}" for i in range(m)],
            "model_version": version,
            "predicted_label": predicted,
            "confidence": rng.beta(5, 2, m) if shift else rng.beta(8, 2, m),
            "label": np.where(labelled, np.where(wrong_now, np.where(predicted == "cat", "dog", "cat"), predicted), None),
            "brightness": rng.normal(0.5 + d, 0.1, m),
            "contrast": rng.normal(0.3 - d / 3, 0.05, m),
            "ink": rng.normal(0.2, 0.05, m),
            "camera": rng.choice(["pixel-6", "iphone-12", "galaxy-s21", "cam-x200"], m, p=[0.3, 0.3, 0.2, 0.2] if shift else [0.34, 0.33, 0.33, 0.0]),
        }
    )
    canary_rows = current.iloc[:canary].assign(
        model_version="v8", predicted_label="dog", label="cat", id=[f"c{i}" for i in range(canary)]
    )
    if shift:
        current.loc[::60, "ink"] = np.nan
        current.loc[::97, "contrast"] = np.inf
    both = pd.concat([current, canary_rows], ignore_index=True)
    return f"file://{version_dir / 'training_data.parquet'}", write_parquet(both, folder / "current.parquet")


def test_prediction_and_residual_drift(tmp_path: Path) -> None:
    reference_uri, current = model_store(tmp_path, np.random.default_rng(31))
    result = core.run(current, reference_uri, engine="scipy")
    p = result.predictions

    assert p.tested and p.model_version == "v7" and p.n_current == 1_500 and p.n_reference == 2_000
    tests = {t.name: t for t in p.tests}
    assert tests["predicted_label"].test == "chi-squared" and tests["predicted_label"].drifted
    assert tests["confidence"].test == "KS" and tests["confidence"].drifted
    r = p.residual
    assert (r.reference_errors, r.reference_rows, r.current_errors, r.current_rows) == (300, 2_000, 320, 1_000)
    assert r.reference_rate == 0.15 and r.current_rate == 0.32 and r.statistic > 0 and r.drifted
    # The pooled two-proportion z-test is the uncorrected chi-squared test of the 2 x 2 table.
    chi2, p_chi2, _, _ = stats.chi2_contingency([[300, 1_700], [320, 680]], correction=False)
    assert r.statistic**2 == pytest.approx(chi2, rel=1e-12) and r.p_value == pytest.approx(p_chi2, rel=1e-9)
    assert p.threshold == pytest.approx(0.05 / 3) and p.is_drift

    metrics = result.metrics()
    assert metrics["residual.error_rate.current"] == 0.32 and metrics["prediction.is_drift"] == 1.0
    assert "p_value.confidence" not in metrics and "prediction.p_value.confidence" in metrics  # not an input feature
    line = report.write_markdown(result, tmp_path / "s.md").read_text(encoding="utf-8")
    assert "Prediction drift in predicted_label, confidence, error rate" in line and "15% → 32%" in line
    page = report.write_html(result, tmp_path / "r.html").read_text(encoding="utf-8")
    assert "served by v7" in page and "15% of 2,000 → 32% of 1,000" in page


def test_no_prediction_drift_when_the_model_behaves_alike(tmp_path: Path) -> None:
    reference_uri, current = model_store(tmp_path, np.random.default_rng(32), shift=False)
    result = core.run(current, reference_uri, engine="scipy")
    assert result.predictions.tested and not result.predictions.is_drift
    assert result.predictions.residual.current_rate == 0.15
    assert not result.is_drift and result.quality.issues() == []


def test_prediction_drift_not_tested_without_reference_predictions(tmp_path: Path) -> None:
    reference_uri, current = model_store(tmp_path, np.random.default_rng(33))
    Path(reference_uri.removeprefix("file://")).with_name("reference_predictions.parquet").unlink()
    result = core.run(current, reference_uri, engine="scipy")

    assert not result.predictions.tested and result.predictions.residual is None
    assert "no reference_predictions.parquet next to the production model's training data" in result.predictions.reason
    assert result.metrics()["prediction.tested"] == 0.0
    assert "Prediction drift not tested: no reference_predictions.parquet" in report.write_markdown(result, tmp_path / "s.md").read_text()
    assert result.is_drift  # the input features are still tested


def test_image_models_still_get_prediction_drift(tmp_path: Path) -> None:
    """Raw images have no tabular feature: the model's outputs are then the only early signal."""
    rng = np.random.default_rng(35)
    n = 800
    images = pd.DataFrame({"id": [f"i{k}" for k in range(n)], "pixels": [b"\x00" * 4] * n, "label": rng.choice(["cat", "dog"], n)})
    validation = pd.DataFrame({"id": images["id"], "label": images["label"], "predicted_label": images["label"], "confidence": rng.beta(9, 1, n)})
    current = images.assign(predicted_label=rng.choice(["cat", "dog"], n, p=[0.8, 0.2]), confidence=rng.beta(3, 2, n), label=None)
    ref = write_parquet(images, tmp_path / "training_data.parquet")
    predictions = write_parquet(validation, tmp_path / "reference_predictions.parquet")
    result = core.detect(ref, write_parquet(current, tmp_path / "current.parquet"), reference_predictions=predictions, engine="scipy")

    assert not result.tested and not result.is_drift  # input drift: nothing to test
    assert result.predictions.tested and result.predictions.is_drift
    assert result.predictions.residual is None
    assert result.predictions.residual_reason == "0 labelled current rows and 800 reference rows; at least 30 needed on each side"
    page = report.write_html(result, tmp_path / "r.html").read_text(encoding="utf-8")
    assert "Prediction drift" in page and "predicted_label" in page
    assert "Prediction drift in predicted_label, confidence" in report.write_markdown(result, tmp_path / "s.md").read_text()


def test_two_proportions_edge_cases() -> None:
    assert two_proportions(0, 100, 0, 50) == (0.0, 1.0)  # no error anywhere
    z, p = two_proportions(10, 100, 30, 100)
    assert z > 0 and p == pytest.approx(stats.chi2_contingency([[10, 90], [30, 70]], correction=False)[1], rel=1e-9)


# --------------------------------------------------------------------------- the report


def render(page: Path, png: Path, height: int = 2400) -> None:
    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        subprocess.run(
            [
                str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                f"--user-data-dir={profile}", f"--screenshot={png}", f"--window-size=1280,{height}", page.as_uri(),
            ],
            check=True, capture_output=True, timeout=90,
        )


@pytest.mark.skipif(not CHROMIUM.exists(), reason=f"no headless chromium at {CHROMIUM} to render the report")
def test_report_renders_in_a_browser(tmp_path: Path) -> None:
    reference_uri, current = model_store(tmp_path, np.random.default_rng(34))
    result = core.run(current, reference_uri, engine="scipy")
    page = report.write_html(result, tmp_path / "report.html")
    png = tmp_path / "report.png"
    render(page, png)

    image = Image.open(png).convert("RGB")
    assert image.size == (1280, 2400)
    pixels = np.asarray(image).reshape(-1, 3)
    colours = {tuple(c) for c in pixels[:: 7]}
    assert len(colours) > 200  # text, tables and charts, not a blank or error page
    # Both series of the charts are drawn (reference blue, current orange), and the drift red.
    for rgb in ((0x4C, 0x78, 0xA8), (0xF5, 0x85, 0x18), (0xC0, 0x39, 0x2B)):
        assert np.sum(np.all(pixels == rgb, axis=1)) > 500, rgb
    # The page is not blank below the fold: the lowest third has content too.
    lower = np.asarray(image)[1600:, :, :]
    assert (lower.std(axis=(0, 1)) > 10).all()
