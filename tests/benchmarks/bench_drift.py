"""Benchmark: the drift stage's core against a plain SciPy loop and Evidently.

Data: 200,000 rows x (50 numeric + 10 categorical) features on each side, as Parquet on
disk; 5 numeric and 2 categorical features drift. Three contenders, each from the same
two files to a verdict per feature:

- ours: `feedback_loop.drift.core.run` as the component calls it (batched read, tests,
  data quality, prediction-drift check, histograms) plus the HTML, Markdown and JSON
  reports and the metrics, with the default engine (alibi-detect); also with the SciPy
  engine.
- scipy: `pyarrow.parquet.read_table`, then `scipy.stats.ks_2samp` per numeric column
  and `scipy.stats.chi2_contingency` per categorical column (the test alibi-detect's
  ChiSquareDrift runs; categories counted with Arrow), Bonferroni across the 60.
- evidently: Parquet into pandas, Evidently's `DataDriftPreset(num_method="ks",
  cat_method="chisquare")` at the same per-column threshold, and its HTML report.

Ours and the SciPy loop run alternately in one process after their imports (three rounds,
medians); importing alibi-detect is a one-off cost per process, reported on its own
(`alibi_import_seconds`). Peak memory is that of a fresh process running ours once.
Evidently runs in its own process. The last line printed is one JSON object.

Usage: ./build.sh bench drift [--rows N] [--rounds N]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "local_outputs" / "bench-drift"
N_NUMERIC, N_CATEGORICAL = 50, 10
DRIFTED_NUMERIC = [f"num_{i:02d}" for i in (3, 11, 19, 27, 42)]
DRIFTED_CATEGORICAL = ["cat_2", "cat_7"]
ALPHA = 0.05
SEED = 20
HTML_SECONDS: list[float] = []  # Evidently's save_html, per run


def make_data(rows: int) -> tuple[Path, Path]:
    """Writes (once per size) the reference and current Parquet files."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = DATA / f"rows-{rows}-seed-{SEED}"
    reference, current = folder / "reference.parquet", folder / "current.parquet"
    if reference.exists() and current.exists():
        return reference, current
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(SEED)
    for path, is_current in ((reference, False), (current, True)):
        columns: dict[str, pa.Array] = {"id": pa.array(np.char.add("r", np.arange(rows).astype(str)))}
        for i in range(N_NUMERIC):
            name = f"num_{i:02d}"
            scale = 10.0 ** (i % 4 - 1)  # features on different scales
            shift = 0.05 if is_current and name in DRIFTED_NUMERIC else 0.0  # 0.05 std: small, clear at this size
            columns[name] = pa.array(rng.normal(shift, 1.0, rows) * scale)
        for j in range(N_CATEGORICAL):
            name = f"cat_{j}"
            k = 4 + 2 * j  # 4 to 22 categories
            p = np.linspace(1.0, 2.0, k)
            if is_current and name in DRIFTED_CATEGORICAL:
                p[0] *= 1.15
            labels = np.array([f"{name}_v{c:02d}" for c in range(k)])
            columns[name] = pa.array(labels[rng.choice(k, rows, p=p / p.sum())])
        pq.write_table(pa.table(columns), path)
    return reference, current


def features() -> tuple[list[str], list[str]]:
    return [f"num_{i:02d}" for i in range(N_NUMERIC)], [f"cat_{j}" for j in range(N_CATEGORICAL)]


def run_ours(reference: Path, current: Path, engine: str, out: Path) -> set[str]:
    from feedback_loop.drift import core, report

    result = core.run(current, f"file://{reference}", p_value=ALPHA, engine=engine, min_rows=30)
    report.write_html(result, out / "report.html")
    report.write_markdown(result, out / "summary.md")
    report.write_json(result, out / "verdict.json")
    result.metrics()
    return {f.name for f in result.drifted}


def run_scipy(reference: Path, current: Path) -> set[str]:
    import pyarrow as pa
    import pyarrow.parquet as pq
    from scipy import stats

    numeric, categorical = features()
    ref, cur = pq.read_table(reference, columns=numeric + categorical), pq.read_table(current, columns=numeric + categorical)
    p_values = {}
    for name in numeric:
        p_values[name] = stats.ks_2samp(ref.column(name).to_numpy(), cur.column(name).to_numpy()).pvalue
    for name in categorical:
        encoded = pa.chunked_array(ref.column(name).chunks + cur.column(name).chunks).combine_chunks().dictionary_encode()
        codes, k, n_ref = encoded.indices.to_numpy(), len(encoded.dictionary), ref.num_rows
        table = np.vstack([np.bincount(codes[:n_ref], minlength=k), np.bincount(codes[n_ref:], minlength=k)])
        p_values[name] = stats.chi2_contingency(table).pvalue
    threshold = ALPHA / len(p_values)  # Bonferroni
    return {name for name, p in p_values.items() if p < threshold}


def run_evidently(reference: Path, current: Path, out: Path) -> set[str]:
    import pandas as pd
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    numeric, categorical = features()
    definition = DataDefinition(numerical_columns=numeric, categorical_columns=categorical)
    ref = Dataset.from_pandas(pd.read_parquet(reference, columns=numeric + categorical), data_definition=definition)
    cur = Dataset.from_pandas(pd.read_parquet(current, columns=numeric + categorical), data_definition=definition)
    threshold = ALPHA / (len(numeric) + len(categorical))  # the same per-column bar as ours (Bonferroni)
    report = Report([DataDriftPreset(num_method="ks", cat_method="chisquare", threshold=threshold)])
    snapshot = report.run(cur, ref)
    html_started = time.perf_counter()
    snapshot.save_html(str(out / "evidently.html"))
    HTML_SECONDS.append(time.perf_counter() - html_started)
    drifted = set()
    for metric in snapshot.dict()["metrics"]:
        config = metric["config"]
        if config.get("type", "").endswith("ValueDrift") and metric["value"] < threshold:
            drifted.add(config["column"])
    return drifted


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def child(role: str, rows: int, rounds: int) -> dict:
    reference, current = make_data(rows)
    out = Path(tempfile.mkdtemp(prefix=f"bench-drift-{role}-"))
    if role == "ours-alone":
        from feedback_loop.drift import core  # noqa: F401  (alibi-detect itself is imported lazily, inside the timing)

        started = time.perf_counter()
        drifted = run_ours(reference, current, "alibi", out)
        return {"cold_seconds": time.perf_counter() - started, "peak_rss_mb": peak_rss_mb(), "drifted": sorted(drifted)}
    if role == "evidently":
        import evidently  # noqa: F401  (import outside the timing, as for the others)

        times, drifted = [], set()
        for _ in range(rounds):
            started = time.perf_counter()
            drifted = run_evidently(reference, current, out)
            times.append(time.perf_counter() - started)
        return {
            "seconds": statistics.median(times),
            "times": times,
            "html_seconds": statistics.median(HTML_SECONDS),
            "drifted": sorted(drifted),
            "peak_rss_mb": peak_rss_mb(),
        }
    # role == "pair": ours and the SciPy loop, alternately, after their imports.
    import scipy.stats  # noqa: F401

    from feedback_loop.drift.stattests import alibi_detectors

    started = time.perf_counter()
    alibi_detectors()
    alibi_import = time.perf_counter() - started
    times: dict[str, list[float]] = {"ours": [], "ours_scipy_engine": [], "scipy": []}
    verdicts: dict[str, set[str]] = {}
    for _ in range(rounds):
        for name, work in (
            ("scipy", lambda: run_scipy(reference, current)),
            ("ours", lambda: run_ours(reference, current, "alibi", out)),
            ("ours_scipy_engine", lambda: run_ours(reference, current, "scipy", out)),
        ):
            started = time.perf_counter()
            verdicts[name] = work()
            times[name].append(time.perf_counter() - started)
    return {
        "alibi_import_seconds": alibi_import,
        "times": times,
        "seconds": {k: statistics.median(v) for k, v in times.items()},
        "drifted": {k: sorted(v) for k, v in verdicts.items()},
    }


def spawn(role: str, rows: int, rounds: int) -> dict:
    done = subprocess.run(
        [sys.executable, __file__, "--role", role, "--rows", str(rows), "--rounds", str(rounds)],
        capture_output=True, text=True, env={**os.environ, "RETRAIN_LOG_LEVEL": "WARNING"},
    )
    if done.returncode:
        sys.stderr.write(done.stderr[-4000:])
        raise SystemExit(f"error: the {role} run failed (exit {done.returncode})")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--evidently-rounds", type=int, default=1)
    parser.add_argument("--role", default="")
    args = parser.parse_args()
    if args.role:
        print(json.dumps(child(args.role, args.rows, args.rounds)))
        return

    make_data(args.rows)
    pair = spawn("pair", args.rows, args.rounds)
    alone = spawn("ours-alone", args.rows, 1)
    evidently = spawn("evidently", args.rows, args.evidently_rounds)
    ours, scipy_loop = pair["seconds"]["ours"], pair["seconds"]["scipy"]
    truth = sorted(DRIFTED_NUMERIC + DRIFTED_CATEGORICAL)
    summary = {
        "benchmark": "drift",
        "rows": args.rows,
        "features": {"numeric": N_NUMERIC, "categorical": N_CATEGORICAL},
        "seconds": round(ours, 3),
        "scipy_loop_seconds": round(scipy_loop, 3),
        "evidently_seconds": round(evidently["seconds"], 3),
        "ratio_vs_scipy": round(ours / scipy_loop, 3),
        "speedup_vs_evidently": round(evidently["seconds"] / ours, 2),
        "verdicts_match": pair["drifted"]["ours"] == pair["drifted"]["scipy"],
        "verdicts_match_scipy_engine": pair["drifted"]["ours_scipy_engine"] == pair["drifted"]["scipy"],
        "verdicts_match_evidently": evidently["drifted"] == pair["drifted"]["scipy"],
        "drifted": pair["drifted"]["ours"],
        "evidently_drifted": evidently["drifted"],
        "speedup_vs_evidently_without_html": round((evidently["seconds"] - evidently["html_seconds"]) / ours, 2),
        "finds_the_planted_drift": pair["drifted"]["ours"] == truth,
        "scipy_engine_seconds": round(pair["seconds"]["ours_scipy_engine"], 3),
        "alibi_import_seconds": round(pair["alibi_import_seconds"], 3),
        "cold_process_seconds": round(alone["cold_seconds"], 3),
        "peak_rss_mb": round(alone["peak_rss_mb"], 1),
        "evidently_peak_rss_mb": round(evidently["peak_rss_mb"], 1),
        "rounds": args.rounds,
        "timed": "ours = core.run (batched Parquet read, tests, quality, histograms) + HTML/Markdown/JSON + metrics, "
        "engine alibi, imports done; scipy = read_table + ks_2samp/chi2_contingency loop; evidently = read_parquet + "
        "DataDriftPreset(ks, chisquare) + save_html; medians; cold_process_seconds = ours once in a fresh process "
        "after importing the package, including alibi-detect's import (a one-off per process)",
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
