"""Drift stage: real Parquet files, both engines, the KFP wrapper with artifacts on disk."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from kfp import dsl

from feedback_loop.dataset import write_parquet
from feedback_loop.drift import core
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
    assert len(x01.histogram.edges) == core.N_BINS + 1
    assert sum(x01.histogram.reference) == x01.n_reference == 20_000


def test_fdr_flags_the_same_features_at_the_benjamini_hochberg_step(shifted: tuple[Path, Path]) -> None:
    result = core.detect(*shifted, correction="fdr", engine="scipy")

    assert sorted(f.name for f in result.drifted) == SHIFTED
    assert result.threshold == pytest.approx(0.05 * 5 / N_FEATURES)  # the 5th step of alpha * k / n


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
    markdown = core.write_markdown(result, tmp_path / "summary.md").read_text()
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
        # alibi-detect stores p-values and statistics as float32: they agree to float32's
        # ~6e-8 relative precision, and p-values below float32's smallest normal number
        # (~1.2e-38, e.g. "large" here) become denormal or 0 there, hence the absolute floor.
        tiny = float(np.finfo(np.float32).tiny)
        assert alibi[name].p_value == pytest.approx(scipy[name].p_value, rel=1e-6, abs=tiny), name
        assert alibi[name].statistic == pytest.approx(scipy[name].statistic, rel=1e-6), name
        assert alibi[name].drifted == scipy[name].drifted, name
    assert 1e-30 < scipy["medium"].p_value < 0.05  # a p-value in float32's normal range, compared at rel 1e-6
    assert scipy["large"].drifted and not scipy["flag"].drifted and not scipy["two"].drifted


def test_alibi_import_leaves_tensorflow_importable() -> None:
    core._alibi()
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
    assert result.skipped["zone"] == "numeric (double) in reference but categorical (string) in current"
    assert re.fullmatch(r"type timestamp\[\w+\] is neither numeric nor text", result.skipped["seen"])
    page = core.write_html(result, tmp_path / "r.html").read_text()
    assert all(name in page for name in result.skipped)


def test_categorical_option_tests_integer_codes_with_chi_squared(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    reference = pd.DataFrame({"region": rng.integers(0, 4, size=2_000)})
    current = pd.DataFrame({"region": rng.integers(0, 5, size=2_000)})  # code 4 is new
    result = core.detect(*write_pair(tmp_path, reference, current), categorical=["region"])

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

    page = core.write_html(too_few, tmp_path / "report.html").read_text()
    assert "only 12 rows since the last training" in page
    assert "only 12 rows" in core.write_markdown(too_few, tmp_path / "summary.md").read_text()

    tested = core.run(current, f"file://{reference}", engine="scipy")
    assert sorted(f.name for f in tested.drifted) == SHIFTED


def test_report_is_self_contained_and_escapes_names(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    odd = '<img src=x onerror="alert(1)">&co'
    reference = pd.DataFrame({odd: rng.normal(size=400), "city": rng.choice(["Köln", "Paris"], 400)})
    current = pd.DataFrame({odd: rng.normal(1.0, 1.0, size=400), "city": rng.choice(["Köln", "Paris"], 400)})
    result = core.detect(*write_pair(tmp_path, reference, current))
    page = core.write_html(result, tmp_path / "out" / "report.html").read_text(encoding="utf-8")

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


def test_component_with_real_artifacts(tmp_path: Path, shifted: tuple[Path, Path]) -> None:
    reference, current = shifted
    report = artifact(dsl.HTML, tmp_path / "report.html")
    summary = artifact(dsl.Markdown, tmp_path / "summary.md")
    metrics = artifact(dsl.Metrics, tmp_path / "metrics.json")

    is_drift = detect_drift.python_func(
        current=artifact(dsl.Dataset, current),
        reference_uri=f"file://{reference}",
        report=report,
        summary=summary,
        metrics=metrics,
    )

    assert is_drift is True
    page = Path(report.path).read_text(encoding="utf-8")
    assert_self_contained(page)
    assert all(name in page for name in SHIFTED)
    assert page.index("x01") < page.index("x00")  # drifted features come first
    assert "Drift detected in 5 of 20 features" in Path(summary.path).read_text()
    assert metrics.metadata["share_drifted"] == pytest.approx(0.25)
    assert metrics.metadata["n_drifted"] == 5.0
    assert set(metrics.metadata) >= {f"p_value.{name}" for name in SHIFTED}


def test_component_without_production_model(tmp_path: Path, shifted: tuple[Path, Path]) -> None:
    report = artifact(dsl.HTML, tmp_path / "report.html")
    is_drift = detect_drift.python_func(
        current=artifact(dsl.Dataset, shifted[1]),
        reference_uri="",
        report=report,
        summary=artifact(dsl.Markdown, tmp_path / "summary.md"),
        metrics=artifact(dsl.Metrics, tmp_path / "metrics.json"),
    )
    assert is_drift is False
    assert "no production model yet" in Path(report.path).read_text()


def test_component_interface() -> None:
    spec = detect_drift.component_spec
    assert set(spec.outputs) == {"report", "summary", "metrics", "Output"}
    assert spec.outputs["report"].type == "system.HTML@0.0.1"
    assert spec.outputs["summary"].type == "system.Markdown@0.0.1"
    assert spec.outputs["metrics"].type == "system.Metrics@0.0.1"
    assert spec.outputs["Output"].type == "Boolean"
    assert set(spec.inputs) == {"current", "reference_uri", "p_value", "min_rows"}
    assert spec.inputs["p_value"].default == 0.05 and spec.inputs["min_rows"].default == 30
    assert re.search(r"/data:\d", spec.implementation.container.image)


@pytest.mark.skipif(not CHROMIUM.exists(), reason=f"no headless chromium at {CHROMIUM} to render the report")
def test_report_renders_in_a_browser(tmp_path: Path, shifted: tuple[Path, Path]) -> None:
    page = core.write_html(core.detect(*shifted, engine="scipy"), tmp_path / "report.html")
    png = tmp_path / "report.png"
    subprocess.run(
        [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", f"--screenshot={png}",
         "--window-size=1200,2400", page.as_uri()],
        check=True, capture_output=True, timeout=60,
    )
    assert png.stat().st_size > 10_000
