"""Dataset preparation: old data + corrected feedback, a time-aware split that cannot leak."""

from __future__ import annotations

import io
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from kfp import dsl

from feedback_loop.dataset import write_parquet
from feedback_loop.errors import DataError, SettingsError
from feedback_loop.prepare import core, windows
from feedback_loop.prepare.component import prepare_dataset

T0 = datetime(2026, 10, 1, tzinfo=timezone.utc)


def make_inputs(tmp_path: Path, n_feedback: int = 60) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    reference = pd.DataFrame(
        {
            "id": [f"train-{i}" for i in range(20)],
            "created_at": pd.to_datetime([T0 - timedelta(days=30 - i) for i in range(20)], utc=True),
            "label": rng.choice(["cat", "dog"], 20),
            "pixels": [rng.integers(0, 255, (28, 28), dtype=np.uint8).tobytes() for _ in range(20)],
            "brightness": rng.random(20),
        }
    )
    rows = []
    for i in range(n_feedback):
        image = np.full((28, 28), i, dtype=np.uint8)
        buffer = io.BytesIO()
        np.save(buffer, image)
        uri_path = tmp_path / "inputs" / f"p{i}.npy"
        uri_path.parent.mkdir(exist_ok=True)
        uri_path.write_bytes(buffer.getvalue())
        labelled = i % 4 != 3  # every fourth prediction got no answer
        rows.append(
            {
                "id": f"p{i}",
                "created_at": T0 + timedelta(hours=i),
                "predicted_label": "cat",
                "is_correct": (i % 2 == 0) if labelled else None,
                "label": ("cat" if i % 2 == 0 else "dog") if labelled else None,
                "input_uri": f"file://{uri_path}",
                "brightness": float(i),
                "confidence": 0.8,
            }
        )
    feedback = pd.DataFrame(rows)
    feedback["created_at"] = pd.to_datetime(feedback["created_at"], utc=True)
    return write_parquet(reference, tmp_path / "reference.parquet"), write_parquet(feedback, tmp_path / "feedback.parquet")


def test_holdout_is_drawn_from_the_most_recent_labelled_feedback(tmp_path: Path) -> None:
    reference, feedback = make_inputs(tmp_path)
    split = core.prepare(reference, feedback, tmp_path / "train.parquet", tmp_path / "holdout.parquet", 0.3)
    train, holdout = pd.read_parquet(tmp_path / "train.parquet"), pd.read_parquet(tmp_path / "holdout.parquet")
    assert (split.reference_rows, split.feedback_rows) == (20, 45)
    assert len(holdout) == 14 and len(train) == 20 + 31
    assert not set(train["id"]) & set(holdout["id"])
    # One in two of the newest 28 feedback rows: all of them newer than the older 17, and the
    # other newest rows train (the candidate learns from the days it is judged on).
    feedback_rows = pd.read_parquet(feedback).sort_values("created_at")
    newest = feedback_rows[feedback_rows["label"].notna() | (feedback_rows["is_correct"] == True)].tail(28)  # noqa: E712
    assert set(holdout["id"]) <= set(newest["id"]) and len(set(newest["id"]) & set(train["id"])) == 14
    assert holdout["label"].notna().all() and "confidence" not in holdout.columns
    # The image comes from the stored input, not from the database.
    first = holdout.iloc[0]
    assert np.frombuffer(first["pixels"], dtype=np.uint8)[0] == int(first["brightness"])


def test_the_holdout_is_drawn_from_where_the_decision_found_production_worse(tmp_path: Path) -> None:
    reference, feedback = make_inputs(tmp_path, n_feedback=120)
    rows = pd.read_parquet(feedback)
    rows["feedback_at"] = rows["created_at"] + timedelta(minutes=5)
    write_parquet(rows, feedback)
    labelled = rows[rows["label"].notna()]
    start = T0 + timedelta(hours=80)  # 30 labelled answers from here on; 27 rows would be held out of the newest 54
    present = set(labelled.loc[labelled["feedback_at"] >= start, "id"])
    assert len(present) == 30
    split = core.prepare(reference, feedback, tmp_path / "t.parquet", tmp_path / "h.parquet", 0.3, holdout_from=start.isoformat())
    holdout, train = pd.read_parquet(tmp_path / "h.parquet"), pd.read_parquet(tmp_path / "t.parquet")
    # One in two of those answers, newest first: every holdout row is from the worse days, the others train.
    assert set(holdout["id"]) < present and split.holdout_rows == len(holdout) == 15
    assert present - set(holdout["id"]) <= set(train["id"])
    # Too few answers from there on (under twice the smallest holdout): the usual newest rows.
    late = T0 + timedelta(hours=110)
    core.prepare(reference, feedback, tmp_path / "t2.parquet", tmp_path / "h2.parquet", 0.3, holdout_from=late.isoformat())
    assert len(pd.read_parquet(tmp_path / "h2.parquet")) == 27


def test_too_little_feedback_for_a_holdout_is_a_clear_error(tmp_path: Path) -> None:
    reference, feedback = make_inputs(tmp_path, n_feedback=8)
    with pytest.raises(DataError, match="labelled feedback rows: at least"):
        core.prepare(reference, feedback, tmp_path / "t.parquet", tmp_path / "h.parquet", 0.3)


def test_the_leak_check_refuses_a_split_that_shares_rows() -> None:
    train = pd.DataFrame({"id": ["a", "b", "c"]})
    with pytest.raises(DataError, match="1 rows are in both train and holdout"):
        core.assert_disjoint(train, pd.DataFrame({"id": ["c", "d"]}))


def test_wrapper_with_artifacts_on_disk(tmp_path: Path) -> None:
    reference, feedback = make_inputs(tmp_path)
    train, holdout, test = (dsl.Dataset(uri=str(tmp_path / n)) for n in ("train", "holdout", "test"))
    stats = dsl.Metrics(uri=str(tmp_path / "stats"))
    prepare_dataset.python_func(
        feedback=dsl.Dataset(uri=str(feedback)), train=train, holdout=holdout, test=test, stats=stats,
        reference_data_uri=f"file://{reference}", production_model_uri=f"file://{tmp_path / 'no-such-version'}",
    )
    assert pq.read_table(test.path).num_rows == 14 and stats.metadata["test_carried"] == 0.0
    assert pq.read_table(train.path).num_rows == 51 and pq.read_table(holdout.path).num_rows == 14
    assert stats.metadata["holdout_rows"] == 14.0


def test_the_test_set_is_carried_forward_and_never_trains(tmp_path: Path) -> None:
    reference, feedback = make_inputs(tmp_path)
    first = core.prepare(reference, feedback, tmp_path / "t1.parquet", tmp_path / "h1.parquet", 0.3, test_out=tmp_path / "test1.parquet")
    assert not first.test_carried and pq.read_table(tmp_path / "test1.parquet").num_rows == first.holdout_rows
    # The next version: the stored test set holds rows that came back in this feedback.
    original = pd.read_parquet(feedback).iloc[:8].assign(label="cat")
    original_path = write_parquet(original, tmp_path / "original.parquet")
    split = core.prepare(
        reference, feedback, tmp_path / "t2.parquet", tmp_path / "h2.parquet", 0.3,
        test_out=tmp_path / "test2.parquet", original_test=original_path,
    )
    train, test = pd.read_parquet(tmp_path / "t2.parquet"), pd.read_parquet(tmp_path / "test2.parquet")
    assert split.test_carried and list(test["id"]) == list(original["id"])
    assert not set(train["id"]) & set(test["id"]) and split.train_rows < 51


def test_the_leak_check_also_guards_the_test_set() -> None:
    with pytest.raises(DataError, match="1 rows are in both train and test"):
        core.assert_disjoint(pd.DataFrame({"id": ["a", "b"]}), pd.DataFrame({"id": ["b"]}), "test")


def test_sliding_window_keeps_the_last_days_and_weights_decay_by_half_life(tmp_path: Path) -> None:
    reference, feedback = make_inputs(tmp_path)
    split = core.prepare(reference, feedback, tmp_path / "t.parquet", tmp_path / "h.parquet", 0.3, window="sliding", window_days=5)
    train = pd.read_parquet(tmp_path / "t.parquet")
    holdout_start = pd.read_parquet(tmp_path / "h.parquet")["created_at"].min()
    assert split.dropped_by_window == 20 and (train["created_at"] > holdout_start - pd.Timedelta(days=5)).all()

    times = pd.Series(pd.to_datetime(["2026-01-01", "2026-01-11", "2026-01-21"], utc=True))
    weights = windows.decay_weights(times, half_life_days=10)
    np.testing.assert_allclose(weights / weights[-1], [0.25, 0.5, 1.0], rtol=1e-6)
    assert weights.mean() == pytest.approx(1.0)
    with pytest.raises(SettingsError, match="unknown window 'rolling'"):
        windows.check("rolling", 1, 1)


def test_time_series_split_holds_out_the_newest_rows_of_all_data(tmp_path: Path) -> None:
    reference, feedback = make_inputs(tmp_path)
    split = core.prepare(reference, feedback, tmp_path / "t.parquet", tmp_path / "h.parquet", 0.2, split="time_series")
    train, holdout = pd.read_parquet(tmp_path / "t.parquet"), pd.read_parquet(tmp_path / "h.parquet")
    assert split.holdout_rows == round(65 * 0.2) and len(train) + len(holdout) == 65
    assert train["created_at"].max() < holdout["created_at"].min()
    with pytest.raises(DataError, match="the split looks ahead"):
        core.assert_time_ordered(holdout, train)
