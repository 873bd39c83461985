"""Each component compiled to its own YAML (committed, fresh, loadable), the README's table of
their inputs and outputs in sync, and RETRAIN_LOG_LEVEL honoured by every component."""

from __future__ import annotations

import inspect
import logging
from pathlib import Path

import pytest
from click.testing import CliRunner
from kfp import components as kfp_components

from feedback_loop import logs
from feedback_loop.cli import main
from feedback_loop.operate import catalog

COMPONENTS = catalog.components()
STALE = "run `./build.sh compile` (or `feedback-loop compile-components`) and commit components/yaml/ and README.md"


def test_every_stage_is_found() -> None:
    expected = {"advance_rollout", "extract_feedback", "detect_drift", "decide_retrain", "prepare_dataset",
                "train_model", "evaluate_model", "deploy_canary", "notify_outcome", "clean_model_store", "purge_feedback"}
    assert expected <= set(COMPONENTS)


def test_committed_component_yaml_is_not_stale(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["compile-components", "--output-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    fresh = {p.name: p.read_text() for p in tmp_path.glob("*.yaml")}
    committed = {p.name: p.read_text() for p in catalog.YAML_DIR.glob("*.yaml")}
    assert sorted(fresh) == sorted(committed), STALE
    stale = [name for name in fresh if fresh[name] != committed[name]]
    assert not stale, f"{', '.join(stale)} stale: {STALE}"


@pytest.mark.parametrize("name", sorted(COMPONENTS))
def test_committed_yaml_loads_with_the_same_interface(name: str) -> None:
    loaded = kfp_components.load_component_from_file(str(catalog.YAML_DIR / f"{name}.yaml"))
    spec, original = loaded.component_spec, COMPONENTS[name].component_spec
    assert set(spec.inputs or {}) == set(original.inputs or {})
    assert set(spec.outputs or {}) == set(original.outputs or {})
    assert loaded.name == name.replace("_", "-")  # KFP names components in kebab case


def test_registry_option_rewrites_images(tmp_path: Path) -> None:
    catalog.compile_all(tmp_path, registry="europe-docker.pkg.dev/acme/ml")
    images = {line.split("image:")[1].strip() for p in tmp_path.glob("*.yaml") for line in p.read_text().splitlines() if "image:" in line}
    assert images and all(i.startswith("europe-docker.pkg.dev/acme/ml/") and not i.endswith(":latest") for i in images)


def test_readme_component_table_is_in_sync() -> None:
    text = catalog.README.read_text()
    assert catalog.readme_with_table(text) == text, STALE
    for name in COMPONENTS:
        assert f"| `{name}` |" in text


def test_every_output_is_documented() -> None:
    # KFP reads `name: text` lines under Returns; the single return value is `Output: text`.
    undocumented = [
        f"{name}.{key}"
        for name, component in COMPONENTS.items()
        for key, spec in (component.component_spec.outputs or {}).items()
        if not (spec.description or "").strip()
    ]
    assert not undocumented, f"add these to the docstring's Returns as `name: text`: {undocumented}"


@pytest.mark.parametrize(
    "name",
    sorted(COMPONENTS),
)
def test_every_component_sets_up_logging(name: str) -> None:
    # logs.setup(log_level) makes the pipeline's log_level parameter count inside the task's process
    # (KFP cannot set a task's environment from a parameter).
    source = inspect.getsource(COMPONENTS[name].python_func)
    assert "logs.setup(log_level" in source
    assert COMPONENTS[name].component_spec.inputs["log_level"].default == "INFO"


def test_logs_setup_honours_retrain_log_level(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RETRAIN_LOG_LEVEL", "warning")
    logs.setup()
    try:
        assert logging.getLogger().level == logging.WARNING
        assert not logging.getLogger("feedback_loop.operate").isEnabledFor(logging.INFO)
    finally:
        monkeypatch.delenv("RETRAIN_LOG_LEVEL")
        logs.setup()
