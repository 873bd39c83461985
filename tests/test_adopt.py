"""`feedback-loop adopt`: a model trained outside the project (plain Keras, integer labels)
becomes the loop's production version, on the local target and on KServe.

KServe runs on kmock's Kubernetes API emulator (no API server can run here: the one fake),
with the real InferenceService CRD schema and a small controller that routes traffic as
KServe does.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from kserve_emulator import GROUP, PLURAL, VERSION, emulated_inference_service

from feedback_loop import adopt as adopting
from feedback_loop.cli import main
from feedback_loop.deploy import adopt as deployment
from feedback_loop.deploy import core, isvc
from feedback_loop.deploy.targets.kserve import ROLLOUT_ANNOTATION, KServeTarget
from feedback_loop.errors import DeploymentError, ModelNotFound
from feedback_loop.lineage import validate
from feedback_loop.train.core import load_model, new_version

NAME, NS = "iris-like", "ml"
T0 = datetime(2026, 11, 1, tzinfo=timezone.utc)


def rows(n: int, seed: int, start: datetime = T0) -> pd.DataFrame:
    """Three numbers per row; the class (0, 1, 2) is which of two sums is largest."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3))
    y = np.argmax(np.stack([x[:, 0] + x[:, 1], x[:, 1] - x[:, 2], 0.3 * np.ones(n)], axis=1), axis=1)
    return pd.DataFrame({"when": [start + timedelta(minutes=i) for i in range(n)], "a": x[:, 0], "b": x[:, 1], "c": x[:, 2], "species": y})


@pytest.fixture(scope="module")
def outside(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """What a user brings: a plain Keras model, its training data as CSV (integer labels), a test set."""
    root = tmp_path_factory.mktemp("outside")
    train, test = rows(600, 1), rows(200, 2, T0 + timedelta(days=1))
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(3, activation="softmax")])
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(train[["a", "b", "c"]].to_numpy(np.float32), train["species"].to_numpy(), epochs=20, verbose=0)
    model.save(root / "model.keras")
    train = train.rename(columns={"when": "created_at"})
    train.loc[3, "species"] = None  # one row without a label, one with a missing number: left out, counted
    train.loc[4, "b"] = None
    train.to_csv(root / "train.csv", index=False)
    test.rename(columns={"when": "created_at"}).to_parquet(root / "test.parquet")
    wide = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="softmax")])
    wide.save(root / "wide.keras")
    (root / "broken.keras").write_bytes(b"not a model")
    return {"root": root, "model": root / "model.keras", "data": root / "train.csv", "test": root / "test.parquet",
            "wide": root / "wide.keras", "broken": root / "broken.keras"}


def cli(*args: str, store: Path) -> Any:
    env = {"RETRAIN_MODEL_STORE_URI": f"file://{store}", "RETRAIN_MODEL_NAME": NAME, "DATABASE_URL": ""}
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


def test_adopt_on_the_local_target(outside: dict[str, Path], tmp_path: Path) -> None:
    store = tmp_path / "store"
    result = cli("adopt", "--model", str(outside["model"]), "--data", str(outside["data"]), "--label", "species",
                 "--test", str(outside["test"]), "--target", "local", "--version", "v1", store=store)
    assert result.exit_code == 0, result.output
    assert "left out 1 no_label, 1 missing_feature" in result.output
    version_dir = store / NAME / "v1"
    assert (version_dir / "_COMPLETE").exists() and (version_dir / "saved_model" / "_COMPLETE").exists()
    lineage = validate(json.loads((version_dir / "lineage.json").read_text()), "adopted")
    assert lineage["family"] == "tabular_classifier" and lineage["task"] == "classification"
    assert lineage["classes"] == ["0", "1", "2"] and lineage["target"] == "species"  # integer labels are output indices
    assert lineage["feature_columns"] == ["a", "b", "c"] and lineage["rows"] == 598
    assert lineage["validation"]["metric"] == "error_rate" and lineage["validation"]["rows"] == 200
    assert lineage["validation"]["held_out"] is True and 0 <= lineage["validation"]["value"] < 0.3
    training = pd.read_parquet(version_dir / "training_data.parquet")
    assert {"id", "created_at", "label", "a", "b", "c"} <= set(training.columns) and len(training) == 598
    state = json.loads((store / NAME / "rollout.json").read_text())
    assert state["stable"]["version"] == "v1" and state["canary"] is None
    assert state["history"][-1]["action"] == "deployed" and state["history"][-1]["traffic"] == 100

    # The adopted version loads like a trained one, and answers as the original model does.
    loaded = load_model(version_dir)
    original = keras.models.load_model(outside["model"])
    test = pd.read_parquet(outside["test"])
    expected = original.predict(test[["a", "b", "c"]].to_numpy(np.float32), verbose=0)
    from feedback_loop.train.core import predict_proba

    np.testing.assert_allclose(predict_proba(loaded, test), expected, rtol=1e-5)

    again = cli("adopt", "--model", str(outside["model"]), "--data", str(outside["data"]), "--label", "species", "--target", "local", store=store)
    assert again.exit_code == 2 and "already has rollout state" in again.output


@pytest.mark.parametrize(
    ("model", "data", "label", "message"),
    [
        ("model", "data", "kind", "has no label column 'kind'"),
        ("model", "empty", "species", "has no usable rows (3 no_label)"),
        ("wide", "data", "species", "takes 4 values per row, the data has 3 feature columns"),
        ("broken", "data", "species", "cannot be loaded by Keras"),
        ("missing", "data", "species", "not found"),
    ],
)
def test_bad_input_is_one_line(outside: dict[str, Path], tmp_path: Path, model: str, data: str, label: str, message: str) -> None:
    empty = tmp_path / "empty.csv"
    pd.DataFrame({"created_at": [T0] * 3, "a": [1.0] * 3, "b": [1.0] * 3, "c": [1.0] * 3, "species": [None] * 3}).to_csv(empty, index=False)
    paths = {**outside, "empty": empty, "missing": tmp_path / "nowhere.keras"}
    result = cli("adopt", "--model", str(paths[model]), "--data", str(paths[data]), "--label", label, "--target", "local", store=tmp_path / "store")
    assert result.exit_code == 2
    errors = [line for line in result.output.splitlines() if line.startswith("error: ")]  # log lines may precede it
    assert len(errors) == 1 and message in errors[0] and "Traceback" not in result.output, result.output
    assert not (tmp_path / "store" / NAME).exists()  # nothing half-written


def test_lineage_errors_name_the_missing_field() -> None:
    with pytest.raises(ModelNotFound, match=r"missing field 'data_hash'"):
        validate({"model_name": "m", "version": "v1", "family": "tabular_classifier", "task": "classification", "spec": {},
                  "classes": [], "feature_columns": [], "validation": {"metric": "mse", "value": 1.0, "rows": 3},
                  "package_version": "0", "dependencies": {}}, "lineage.json of v1")
    with pytest.raises(ModelNotFound, match=r"missing field 'validation.rows'"):
        validate(
            {"model_name": "m", "version": "v1", "family": "f", "task": "regression", "spec": {}, "classes": [], "feature_columns": [],
             "data_hash": "0" * 64, "validation": {"metric": "mse", "value": 1.0}, "package_version": "0", "dependencies": {}}, "x")


def test_version_names_never_collide() -> None:
    now = datetime(2026, 11, 1, 12, 0, 0, tzinfo=timezone.utc)
    names = {new_version(now) for _ in range(200)}  # same instant: the random part tells them apart
    assert len(names) == 200 and all(n.startswith("v20261101-120000-000000") for n in names)
    assert new_version(now) < new_version(now + timedelta(microseconds=1))


@pytest.fixture
def cluster() -> Any:
    with emulated_inference_service(NS, NAME) as pair:
        yield pair


@pytest.mark.parametrize("repoint", [False, True])
def test_kserve_unmanaged_is_refused_then_adopted_without_moving_traffic(
    outside: dict[str, Path], tmp_path: Path, cluster: Any, repoint: bool
) -> None:
    api, controller = cluster
    serving = "gs://team-models/iris/2026-10/saved_model"
    manifest = isvc.inference_service(NAME, NS, serving)  # applied by hand, as a user's manifests do
    api.create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, manifest)
    controller.reconcile()
    before = api.get_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, NAME)
    target = KServeTarget(NAME, NS, api)

    # The first step of every run refuses to treat an unmanaged service as "nothing serves".
    with pytest.raises(DeploymentError, match=r"serves without rollout state: run `feedback-loop adopt"):
        core.advance_rollout(target, T0)

    store = str(tmp_path / "store")
    request = adopting.Request(outside["model"], outside["data"], "species", NAME, outside["test"], version="v1")
    built = adopting.build(request, tmp_path / "build" / "v1", T0)
    state, transition = deployment.adopt(built.model_dir, store, NAME, "v1", target, T0, repoint=repoint)
    controller.reconcile()
    after = api.get_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, NAME)

    assert ROLLOUT_ANNOTATION in after["metadata"]["annotations"]
    copy = f"file://{tmp_path / 'store' / NAME / 'v1' / 'saved_model'}"
    if repoint:
        assert after["spec"]["predictor"]["model"]["storageUri"] == copy
        assert controller.serving() == {copy: 100}
    else:
        assert after["spec"] == before["spec"]  # traffic, runtime, replicas: untouched
        assert after["metadata"]["generation"] == before["metadata"]["generation"]
        assert controller.serving() == {serving: 100}
        assert "traffic unchanged" in transition.reason
    read = target.read()
    assert read is not None and read.stable is not None and read.stable.version == "v1" and read.canary is None
    assert read.stable.storage_uri == (copy if repoint else serving)  # a roll-back returns to exactly this
    assert (tmp_path / "store" / NAME / "v1" / "_COMPLETE").exists()

    # Now managed: a run's first step proceeds (nothing to advance), and a second adopt is refused.
    _, transitions = core.advance_rollout(target, T0)
    assert transitions[-1].action == "idle"
    with pytest.raises(DeploymentError, match="already managed"):
        deployment.check(target, NAME)
