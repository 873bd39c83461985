"""A canary with a higher error rate, judged from a real Prometheus (Debian's `prometheus`)
scraping two real model servers (KServe's ModelServer): rolled back at the first step, and
the previous model serves 100 %. The InferenceService is kmock's emulator with the KServe
status controller (tests/kserve_emulator.py)."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kserve_emulator import KServeController, kubernetes_api
from serving_helpers import FEATURES, ModelServerProcess, free_port, make_version

from feedback_loop.deploy import analysis, core
from feedback_loop.deploy.targets.kserve import KServeTarget
from feedback_loop.layout import COMPLETE_MARKER

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::UserWarning")]
NAME, NS = "cats-vs-dogs", "ml"
PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
# The model servers' own metrics, with the revision as Prometheus' target label (as Knative's are).
METRICS = {
    "requests": {"query": 'sum(increase(feedback_loop_requests_total{revision_name="{revision}"}[{window}]))', "min": 50},
    "error_rate": {
        "query": '(sum(rate(feedback_loop_requests_total{revision_name="{revision}",code="5xx"}[{window}])) or vector(0))'
        ' / sum(rate(feedback_loop_requests_total{revision_name="{revision}"}[{window}]))',
        "max_increase": 0.01,
    },
    # The same rate with the requests behind it: judged by the always-valid non-inferiority test.
    "error_share": {
        "query": '(sum(rate(feedback_loop_requests_total{revision_name="{revision}",code="5xx"}[{window}])) or vector(0))'
        ' / sum(rate(feedback_loop_requests_total{revision_name="{revision}"}[{window}]))',
        "samples": 'sum(increase(feedback_loop_requests_total{revision_name="{revision}"}[{window}]))',
        "max_increase": 0.01,
    },
    "p95_latency_ms": {
        "query": '1000 * histogram_quantile(0.95, sum by (le) (rate(feedback_loop_request_seconds_bucket{revision_name="{revision}"}[{window}])))',
        "max_increase": 250.0,
        "max_ratio": 3.0,
    },
}


class PrometheusProcess:
    def __init__(self, workdir: Path, targets: dict[str, str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [
                {"job_name": revision, "static_configs": [{"targets": [address], "labels": {"revision_name": revision}}]}
                for revision, address in targets.items()
            ],
        }
        (workdir / "prometheus.yml").write_text(json.dumps(config))
        self.process = subprocess.Popen(
            [PROMETHEUS, f"--config.file={workdir / 'prometheus.yml'}", f"--storage.tsdb.path={workdir / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
        )

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"prometheus exited with status {self.process.returncode}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as answer:
                    if answer.status == 200:
                        return
            except OSError:
                time.sleep(0.3)
        raise TimeoutError("Prometheus not ready")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()


def send(url: str, rows: np.ndarray) -> int:
    """One request per row; returns how many failed with a 5xx."""
    failed = 0
    for row in rows:
        body = json.dumps({"instances": [row.tolist()]}).encode()
        request = urllib.request.Request(f"{url}/v1/models/{NAME}:predict", body, {"Content-Type": "application/json"})
        try:
            urllib.request.urlopen(request, timeout=10).read()
        except urllib.error.HTTPError as err:
            failed += err.code >= 500
    return failed


def scraped(prometheus_url: str, query: str, enough: float = 0.0, timeout: float = 30) -> float:
    """Waits until Prometheus answers `query` with more than `enough` (scrapes lag on a loaded machine)."""
    source = analysis.Prometheus(prometheus_url)
    deadline = time.monotonic() + timeout
    while True:
        value = source.query(query, datetime.now(timezone.utc))
        if value is not None and value > enough or time.monotonic() > deadline:
            return value
        time.sleep(0.5)


def warm_up(servers: dict[str, Any]) -> None:
    """A request of each outcome, scraped: a series' first sample must predate the traffic that
    `rate()` and `increase()` measure, or they miss what came before it."""
    ok, refused = np.zeros((1, FEATURES), dtype=np.float32), np.ones((1, FEATURES), dtype=np.float32)
    for name, revision in (("stable", f"{NAME}-predictor-00001"), ("canary", f"{NAME}-predictor-00002")):
        send(servers[name].url, ok)
        scraped(servers["prometheus"].url, f'sum(feedback_loop_requests_total{{revision_name="{revision}"}})')
    assert send(servers["canary"].url, refused) == 1  # the canary's 5xx series exists before the traffic
    scraped(servers["prometheus"].url, f'sum(feedback_loop_requests_total{{revision_name="{NAME}-predictor-00002",code="5xx"}})')


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    if not Path(PROMETHEUS).exists():
        pytest.skip(f"prometheus not installed ({PROMETHEUS}): apt-get install prometheus")
    root = tmp_path_factory.mktemp("prom")
    stable_dir = make_version(root, "v1", seed=1)
    canary_dir = make_version(root, "v2", seed=2, fail_above=0.9)  # refuses about a third of the traffic
    for folder in (stable_dir, canary_dir):  # `serve` serves only a complete version
        (folder / COMPLETE_MARKER).touch()
    stable, canary = ModelServerProcess(stable_dir, NAME), ModelServerProcess(canary_dir, NAME)
    revisions = {f"{NAME}-predictor-00001": f"127.0.0.1:{stable.port}", f"{NAME}-predictor-00002": f"127.0.0.1:{canary.port}"}
    prometheus = PrometheusProcess(root, revisions)
    try:
        try:
            prometheus.wait_ready()
        except (RuntimeError, TimeoutError) as err:
            pytest.skip(f"Prometheus could not start here: {str(err)[-300:]}")
        stable.wait_ready(), canary.wait_ready()
        yield {"root": root, "stable": stable, "canary": canary, "prometheus": prometheus}
    finally:
        prometheus.stop()
        stable.stop()
        canary.stop()


def test_prometheus_answers_the_analysis_queries(servers: dict[str, Any]) -> None:
    source = analysis.Prometheus(servers["prometheus"].url)
    assert source.query("vector(42)", datetime.now(timezone.utc)) == 42.0
    assert source.query("absent_metric_xyz", datetime.now(timezone.utc)) is None
    with pytest.raises(analysis.AnalysisUnavailable, match="refused a query"):
        source.query("sum(", datetime.now(timezone.utc))
    with pytest.raises(analysis.AnalysisUnavailable, match="unreachable"):
        analysis.Prometheus(f"http://127.0.0.1:{free_port()}").query("up", datetime.now(timezone.utc))


def test_higher_error_rate_rolls_back_at_the_first_step(servers: dict[str, Any], tmp_path: Path) -> None:
    root = servers["root"]
    started = datetime.now(timezone.utc)
    with kubernetes_api() as (_, api):
        controller = KServeController(api, NS, NAME)
        store_uri = str(tmp_path / "store")
        target = KServeTarget(NAME, NS, api)
        core.deploy(root / "v1", store_uri, NAME, target, started)
        controller.reconcile()
        core.deploy(root / "v2", store_uri, NAME, KServeTarget(NAME, NS, api), started)
        controller.reconcile()
        assert controller.serving() == {f"file://{tmp_path}/store/{NAME}/v1/saved_model": 90, f"file://{tmp_path}/store/{NAME}/v2/saved_model": 10}

        # The same traffic to both revisions (a router would split it 90/10; the rates compare the same).
        warm_up(servers)
        rows = np.random.default_rng(7).uniform(0, 1, size=(120, FEATURES)).astype(np.float32)
        assert send(servers["stable"].url, rows) == 0
        failed = send(servers["canary"].url, rows)
        assert failed > 10
        for revision in ("00001", "00002"):
            window = f"{int((datetime.now(timezone.utc) - started).total_seconds()) + 60}s"
            scraped(servers["prometheus"].url, f'sum(increase(feedback_loop_requests_total{{revision_name="{NAME}-predictor-{revision}"}}[{window}]))', enough=100)

        now = datetime.now(timezone.utc)
        config = analysis.AnalysisConfig(NAME, NS, servers["prometheus"].url, METRICS, min_feedback_samples=0)
        state, moved = core.advance_rollout(KServeTarget(NAME, NS, api), now, judge=core.make_judge(config, now), max_wait_hours=24)
        assert [(t.action, t.version, t.traffic) for t in moved] == [("rolled_back", "v2", 0)], moved[0].reason
        checks = {c.name: c for c in moved[0].analysis.checks}
        assert checks["requests"].verdict == "healthy" and checks["requests"].canary >= 50, moved[0].analysis.checks
        assert checks["error_rate"].verdict == "unhealthy"
        assert checks["error_rate"].stable == pytest.approx(0.0) and checks["error_rate"].canary == pytest.approx(failed / len(rows), abs=0.1)
        assert "error_rate canary" in moved[0].reason
        assert checks["error_share"].verdict == "unhealthy" and "always-valid interval" in checks["error_share"].detail
        controller.reconcile()
        assert controller.serving() == {f"file://{tmp_path}/store/{NAME}/v1/saved_model": 100}
        assert state.stable.version == "v1" and state.canary is None


def test_equal_revisions_are_healthy(servers: dict[str, Any]) -> None:
    """The same comparison between the stable revision and itself: no false alarm."""
    warm_up(servers)
    rows = np.random.default_rng(8).uniform(0, 0.5, size=(80, FEATURES)).astype(np.float32)
    send(servers["stable"].url, rows)
    scraped(servers["prometheus"].url, f'sum(increase(feedback_loop_requests_total{{revision_name="{NAME}-predictor-00001"}}[2m]))', enough=60)
    now = datetime.now(timezone.utc)
    # Thresholds only: 80 requests are too few for the error share's test to show non-inferiority.
    metrics = {k: v for k, v in METRICS.items() if "samples" not in v}
    config = analysis.AnalysisConfig(NAME, NS, servers["prometheus"].url, metrics, min_feedback_samples=0)
    observation = analysis.Observation(True, f"{NAME}-predictor-00001", f"{NAME}-predictor-00001")
    verdict = analysis.analyse(
        "v1", "v1", now - timedelta(minutes=2), now, observation, config, metrics=analysis.Prometheus(config.prometheus_url)
    )
    assert verdict.verdict == "healthy", verdict.reason
