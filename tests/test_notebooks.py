"""The notebooks run as they are: 01 (the whole loop, then 03 on its run) and 02 against a local KFP API."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from kfp_api_server import KfpApiServer

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def execute(name: str, cwd: Path, timeout: int = 900) -> nbformat.NotebookNode:
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    NotebookClient(notebook, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}).execute()
    return notebook


def outputs(notebook: nbformat.NotebookNode) -> list[dict]:
    return [out for cell in notebook.cells if cell.cell_type == "code" for out in cell.get("outputs", [])]


def text_of(notebook: nbformat.NotebookNode) -> str:
    parts = []
    for out in outputs(notebook):
        parts.append(out.get("text", ""))
        parts.extend(str(v) for k, v in out.get("data", {}).items() if k in ("text/plain", "text/markdown", "text/html"))
    return "\n".join(parts)


def test_notebooks_define_nothing_the_package_should_hold() -> None:
    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        notebook = nbformat.read(path, as_version=4)
        nbformat.validate(notebook)
        source = "\n".join(cell.source for cell in notebook.cells if cell.cell_type == "code")
        assert "def " not in source and "class " not in source, path.name
        assert not outputs(notebook), f"{path.name} is committed with outputs: clear them"


def test_submit_and_schedule_notebook_against_a_local_kfp_api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("RETRAIN_MODEL_STORE_URI", "gs://acme-models")
    monkeypatch.setenv("KFP_TOKEN", "notebook-token")
    with KfpApiServer() as server:
        monkeypatch.setenv("KFP_HOST", server.url)
        monkeypatch.setenv("KFP_NAMESPACE", "team-ml")
        executed = execute("02_submit_and_schedule.ipynb", tmp_path, timeout=300)
        execute("02_submit_and_schedule.ipynb", tmp_path, timeout=300)  # again: still one recurring run
    assert [r["display_name"] for r in server.runs.values()] == ["from-the-notebook"] * 2
    (recurring,) = server.recurring_runs.values()
    assert recurring["display_name"] == "feedback-loop-daily" and recurring["runtime_config"]["parameters"]["model_store_uri"] == "gs://acme-models"
    text = text_of(executed)
    assert "created" in text and "from-the-notebook" in text and "notebook-token" not in text


@pytest.mark.slow
def test_run_locally_then_inspect_the_run(tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEEDBACK_LOOP_WORKDIR", str(tmp_path / "work"))
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
    ran = execute("01_run_locally.ipynb", tmp_path)
    text = text_of(ran)
    assert ": succeeded" in text and "decision   retrain" in text, text[-3000:]
    html = [out["data"]["text/html"] for out in outputs(ran) if "text/html" in out.get("data", {})]
    assert any("<html" in h.lower() or "<table" in h.lower() for h in html), "the drift report is not shown"
    assert "canary_started" in text or "deployed" in text  # the blessed candidate's rollout

    inspected = execute("03_inspect_a_run.ipynb", tmp_path)
    text = text_of(inspected)
    assert "candidate" in text and "production" in text and "gain" in text
    assert "p-value" in text
