"""One parameter table: every setting that a component or the pipeline takes has one name,
one default and one help text, all from settings.py."""

from __future__ import annotations

import pytest

from feedback_loop.operate import catalog
from feedback_loop.pipelines.retraining_pipeline import retraining_pipeline
from feedback_loop.settings import Settings, default_of, pipeline_parameters

COMPONENTS = catalog.components()
# (component, input) for every component input named after a setting.
SHARED = [(c, name) for c, comp in COMPONENTS.items() for name in comp.component_spec.inputs or {} if name in Settings.model_fields]


def _flat(text: str | None) -> str:
    return " ".join((text or "").split())


def test_components_take_many_settings() -> None:
    # Guards the table below against an empty parametrization.
    assert len(SHARED) > 40 and len({name for _, name in SHARED}) > 35


@pytest.mark.parametrize("component,name", SHARED, ids=[f"{c}.{n}" for c, n in SHARED])
def test_a_component_input_named_after_a_setting_has_its_default_and_help(component: str, name: str) -> None:
    spec = COMPONENTS[component].component_spec.inputs[name]
    if spec.default is not None:
        expected = default_of(name)
        assert spec.default == (float(expected) if isinstance(expected, int) and not isinstance(expected, bool) and spec.default != expected else expected)
    assert _flat(Settings.model_fields[name].description) in _flat(COMPONENTS[component].python_func.__doc__)


def test_every_setting_has_help_text() -> None:
    assert [n for n, f in Settings.model_fields.items() if not (f.description or "").strip()] == []


def test_the_pipeline_takes_every_setting_but_the_process_ones_with_their_defaults_and_help() -> None:
    inputs = retraining_pipeline.component_spec.inputs
    assert set(inputs) == set(pipeline_parameters())
    for name, spec in inputs.items():
        if name != "model_store_uri":  # required: the local default is no place for a cluster's versions
            assert spec.default == default_of(name), name
        assert _flat(spec.description) == _flat(Settings.model_fields[name].description), name


def test_every_setting_a_pipeline_parameter_feeds_some_component() -> None:
    fed = {name for _, name in SHARED}
    # Read by the graph itself (a condition, a pod setting), not by a component.
    in_graph = {"dry_run", "cleanup", "node_selector", "tolerations"}
    assert set(pipeline_parameters()) - fed - in_graph == set()
