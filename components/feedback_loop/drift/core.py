"""Input drift: does the data the model sees now differ from the data it was trained on?

Each feature column common to both datasets is tested on its own: numeric columns with
the two-sample Kolmogorov-Smirnov test, categorical (string) columns with the chi-squared
test on the category counts. The per-feature p-values are then corrected for the number of
features tested (Bonferroni or Benjamini-Hochberg), as alibi-detect does for a batch.

Two engines run the same tests: alibi-detect (`KSDrift`, `ChiSquareDrift`) and SciPy
(`ks_2samp`, `chi2_contingency`, called the way alibi-detect calls them). alibi-detect
>= 0.11.5 is under the Business Source License; the SciPy engine gives the same verdicts
without it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import html
import logging
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from scipy import stats

from feedback_loop import dataset, storage
from feedback_loop.errors import DataError

logger = logging.getLogger(__name__)

ENGINES = ("alibi", "scipy")
CORRECTIONS = ("bonferroni", "fdr")
N_BINS = 20
MAX_CATEGORIES_SHOWN = 20  # beyond this, the rarest categories are pooled in charts and summaries
MAX_UNSEEN_LISTED = 50

Kind = Literal["numeric", "categorical"]


@dataclass(frozen=True)
class Histogram:
    """Counts per bin on both sides. Numeric bins share `edges` (len(labels) + 1 values)."""

    labels: list[str]
    reference: list[int]
    current: list[int]
    edges: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class FeatureDrift:
    name: str
    kind: Kind
    test: str
    statistic: float  # KS distance, or the chi-squared statistic
    p_value: float  # raw, before the correction for the number of features
    drifted: bool  # after the correction
    n_reference: int  # non-null values tested
    n_current: int
    reference: dict[str, float]  # mean and std, or category shares
    current: dict[str, float]
    histogram: Histogram
    unseen: list[str] = field(default_factory=list)  # categories absent from the reference, most frequent first
    n_unseen: int = 0


@dataclass(frozen=True)
class DriftResult:
    features: list[FeatureDrift]
    is_drift: bool
    p_value: float  # significance level before the correction
    correction: str
    engine: str
    n_reference: int
    n_current: int
    threshold: float = 0.0  # per-feature p-value below which a feature counts as drifted
    skipped: dict[str, str] = field(default_factory=dict)  # feature -> why it was not tested
    reason: str = ""  # why nothing was tested; empty when the test ran

    @property
    def tested(self) -> bool:
        return not self.reason

    @property
    def drifted(self) -> list[FeatureDrift]:
        return [f for f in self.features if f.drifted]

    @property
    def share_drifted(self) -> float:
        return len(self.drifted) / len(self.features) if self.features else 0.0

    def ranked(self) -> list[FeatureDrift]:
        """Drifted features first, each group by rising p-value."""
        return sorted(self.features, key=lambda f: (not f.drifted, f.p_value, f.name))

    def metrics(self) -> dict[str, float]:
        values = {
            "tested": float(self.tested),
            "is_drift": float(self.is_drift),
            "n_features": float(len(self.features)),
            "n_drifted": float(len(self.drifted)),
            "share_drifted": self.share_drifted,
            "threshold": self.threshold,
            "n_reference": float(self.n_reference),
            "n_current": float(self.n_current),
        }
        for feature in self.features:
            values[f"p_value.{feature.name}"] = feature.p_value
            values[f"statistic.{feature.name}"] = feature.statistic
        return values

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "tested": self.tested, "share_drifted": self.share_drifted}


def not_tested(
    reason: str,
    *,
    n_reference: int = 0,
    n_current: int = 0,
    p_value: float = 0.05,
    correction: str = "bonferroni",
    engine: str = "alibi",
    skipped: dict[str, str] | None = None,
) -> DriftResult:
    """A result that reports no drift because the test could not run, and says why."""
    return DriftResult(
        features=[],
        is_drift=False,
        p_value=p_value,
        correction=correction,
        engine=engine,
        n_reference=n_reference,
        n_current=n_current,
        skipped=skipped or {},
        reason=reason,
    )


@functools.cache
def _alibi() -> tuple[type, type]:
    """Imports alibi-detect's KSDrift and ChiSquareDrift with TensorFlow hidden.

    alibi-detect imports TensorFlow whenever it is importable and then fails on its
    TensorFlow-Probability paths; the statistical detectors need neither, so TensorFlow is
    made unimportable for the duration of the import and restored afterwards.
    """
    hidden = {name: sys.modules.pop(name) for name in list(sys.modules) if name.startswith("tensorflow")}
    sys.modules["tensorflow"] = None  # type: ignore[assignment]  # makes `import tensorflow` raise ImportError
    try:
        from alibi_detect.cd import ChiSquareDrift, KSDrift
    finally:
        sys.modules.pop("tensorflow", None)
        sys.modules.update(hidden)
    return KSDrift, ChiSquareDrift


def detect(
    reference: Path | str,
    current: Path | str,
    *,
    p_value: float = 0.05,
    correction: str = "bonferroni",
    engine: str = "alibi",
    categorical: list[str] | None = None,
) -> DriftResult:
    """Tests every feature column common to `reference` and `current` (Parquet files).

    Numeric columns get the KS test, string columns (and those named in `categorical`) the
    chi-squared test; nulls and NaNs are dropped per column. A feature has drifted when its
    p-value passes the correction across all features tested.

    Raises:
        DataError: a dataset has no rows, or the two share no feature column.
    """
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, not {engine!r}")
    if correction not in CORRECTIONS:
        raise ValueError(f"correction must be one of {CORRECTIONS}, not {correction!r}")
    reference, current = Path(reference), Path(current)
    ref_schema, n_reference = _schema_and_rows(reference, "reference")
    cur_schema, n_current = _schema_and_rows(current, "current")
    if n_reference == 0:
        raise DataError(
            f"reference dataset {reference} has no rows: the production model's training data is empty; "
            "retrain from non-empty data or point the reference at another model version"
        )
    if n_current == 0:
        raise DataError(
            f"current dataset {current} has no rows: widen the feedback window (days_back) or wait for traffic"
        )
    ref_features, cur_features = dataset.feature_columns(ref_schema), dataset.feature_columns(cur_schema)
    if not ref_features and not cur_features:
        # The image family carries only `pixels`: nothing tabular to test, which is no mismatch.
        result = not_tested(
            "neither dataset has a tabular feature column (raw image inputs are not tested for drift)",
            n_reference=n_reference, n_current=n_current, p_value=p_value, correction=correction, engine=engine,
        )
        logger.info("%s", verdict(result))
        return result
    in_current = set(cur_features)
    common = [name for name in ref_features if name in in_current]
    if not common:
        raise DataError(
            f"reference and current share no feature column: reference has {ref_features}, "
            f"current has {cur_features}; make the app log the same features the model was trained on"
        )

    ref_table = pq.read_table(reference, columns=common)
    cur_table = pq.read_table(current, columns=common)
    forced = set(categorical or ())
    logger.info(
        "testing %d features on %d reference and %d current rows (engine %s, %s correction)",
        len(common), n_reference, n_current, engine, correction,
    )

    raw: list[FeatureDrift] = []
    skipped: dict[str, str] = {}
    for name in common:
        ref_col, cur_col = ref_table.column(name), cur_table.column(name)
        ref_kind, cur_kind = _kind(ref_col.type, name in forced), _kind(cur_col.type, name in forced)
        if ref_kind is None or cur_kind is None:
            skipped[name] = f"type {ref_col.type if ref_kind is None else cur_col.type} is neither numeric nor text"
            continue
        if ref_kind != cur_kind:
            skipped[name] = f"{ref_kind} ({ref_col.type}) in reference but {cur_kind} ({cur_col.type}) in current"
            continue
        if ref_kind == "numeric":
            ref_values, cur_values = _numeric(ref_col), _numeric(cur_col)
        else:
            ref_values, cur_values = _strings(ref_col), _strings(cur_col)
        if not len(ref_values) or not len(cur_values):
            skipped[name] = f"no values in the {'reference' if not len(ref_values) else 'current'} data"
            continue
        test = _test_numeric if ref_kind == "numeric" else _test_categorical
        raw.append(test(name, ref_values, cur_values, engine=engine, p_value=p_value, correction=correction))

    for name, why in skipped.items():
        logger.warning("feature %s not tested: %s", name, why)
    if not raw:
        return not_tested(
            "no feature could be tested: " + "; ".join(f"{k}: {v}" for k, v in skipped.items()),
            n_reference=n_reference, n_current=n_current, p_value=p_value, correction=correction,
            engine=engine, skipped=skipped,
        )

    threshold = _threshold(np.array([f.p_value for f in raw]), p_value, correction)
    features = [dataclasses.replace(f, drifted=f.p_value < threshold) for f in raw]
    result = DriftResult(
        features=features,
        is_drift=any(f.drifted for f in features),
        p_value=p_value,
        correction=correction,
        engine=engine,
        n_reference=n_reference,
        n_current=n_current,
        threshold=threshold,
        skipped=skipped,
    )
    logger.info("%s", verdict(result))
    return result


def run(
    current: Path | str,
    reference_uri: str,
    *,
    p_value: float = 0.05,
    min_rows: int = 30,
    correction: str = "bonferroni",
    engine: str = "alibi",
) -> DriftResult:
    """Tests `current` against the production model's training data at `reference_uri`.

    `reference_uri` is a model-store URI (`file://` or `gs://`), or "" when no model is in
    production yet. Too few current rows, or no reference, give a not-tested result.
    """
    if not reference_uri:
        result = not_tested("no production model yet", p_value=p_value, correction=correction, engine=engine)
        logger.info("%s", verdict(result))
        return result
    _, n_current = _schema_and_rows(Path(current), "current")
    if n_current < min_rows:
        result = not_tested(
            f"only {n_current} rows since the last training; at least {min_rows} needed",
            n_current=n_current, p_value=p_value, correction=correction, engine=engine,
        )
        logger.info("%s", verdict(result))
        return result
    with _local_copy(reference_uri) as reference:
        return detect(reference, Path(current), p_value=p_value, correction=correction, engine=engine)


@contextlib.contextmanager
def _local_copy(uri: str) -> Iterator[Path]:
    if not uri.startswith("gs://"):
        yield storage.local_path(uri)
        return
    with tempfile.TemporaryDirectory(prefix="drift-reference-") as tmp:
        path = Path(tmp) / "reference.parquet"
        path.write_bytes(storage.read_bytes(uri))
        yield path


def _schema_and_rows(path: Path, role: str) -> tuple[pa.Schema, int]:
    try:
        metadata = pq.read_metadata(path)
    except FileNotFoundError:
        raise DataError(f"{role} dataset {path} does not exist: check the path or URI given for it") from None
    except (pa.ArrowInvalid, OSError) as err:
        raise DataError(
            f"{role} dataset {path} is not a readable Parquet file ({err}): write it with feedback_loop.dataset"
        ) from None
    return metadata.schema.to_arrow_schema(), metadata.num_rows


def _kind(type_: pa.DataType, forced_categorical: bool) -> Kind | None:
    t = pa.types
    is_number = t.is_integer(type_) or t.is_floating(type_) or t.is_boolean(type_) or t.is_decimal(type_)
    if pa.types.is_dictionary(type_):
        type_ = type_.value_type
    is_text = t.is_string(type_) or t.is_large_string(type_) or t.is_string_view(type_)
    if is_text or (forced_categorical and is_number):
        return "categorical"
    return "numeric" if is_number else None


def _numeric(column: pa.ChunkedArray) -> np.ndarray:
    values = pc.drop_null(column).cast(pa.float64()).to_numpy()
    return values[~np.isnan(values)]


def _strings(column: pa.ChunkedArray) -> np.ndarray:
    return pc.drop_null(column).cast(pa.string()).to_numpy(zero_copy_only=False)


def _test_numeric(
    name: str, ref: np.ndarray, cur: np.ndarray, *, engine: str, p_value: float, correction: str
) -> FeatureDrift:
    if engine == "alibi":
        ks_drift, _ = _alibi()
        detector = ks_drift(ref.reshape(-1, 1), p_val=p_value, correction=correction)
        p_values, distances = detector.score(cur.reshape(-1, 1))
        statistic, p = float(distances[0]), float(p_values[0])
    else:
        # alibi-detect's KSDrift calls ks_2samp with mode='asymp' (the old name of method).
        test = stats.ks_2samp(ref, cur, alternative="two-sided", method="asymp")
        statistic, p = float(test.statistic), float(test.pvalue)
    return FeatureDrift(
        name=name,
        kind="numeric",
        test="KS",
        statistic=statistic,
        p_value=p,
        drifted=False,  # set once all features are tested
        n_reference=len(ref),
        n_current=len(cur),
        reference={"mean": float(np.mean(ref)), "std": float(np.std(ref))},
        current={"mean": float(np.mean(cur)), "std": float(np.std(cur))},
        histogram=_numeric_histogram(ref, cur),
    )


def _test_categorical(
    name: str, ref: np.ndarray, cur: np.ndarray, *, engine: str, p_value: float, correction: str
) -> FeatureDrift:
    # One category list for both sides, so a category new in `current` gets its own code.
    categories, codes = np.unique(np.concatenate([ref, cur]), return_inverse=True)
    ref_codes, cur_codes = codes[: len(ref)], codes[len(ref) :]
    ref_counts = np.bincount(ref_codes, minlength=len(categories))
    cur_counts = np.bincount(cur_codes, minlength=len(categories))
    if engine == "alibi":
        _, chi_square_drift = _alibi()
        detector = chi_square_drift(
            ref_codes.reshape(-1, 1), p_val=p_value, correction=correction,
            categories_per_feature={0: len(categories)},
        )
        p_values, distances = detector.score(cur_codes.reshape(-1, 1))
        statistic, p = float(distances[0]), float(p_values[0])
    else:
        # As alibi-detect's ChiSquareDrift: a 2 x k table, scipy's defaults (Yates when k == 2).
        chi2, p, _, _ = stats.chi2_contingency(np.vstack([ref_counts, cur_counts]))
        statistic, p = float(chi2), float(p)
    new = np.flatnonzero(ref_counts == 0)
    new = new[np.argsort(-cur_counts[new], kind="stable")]
    return FeatureDrift(
        name=name,
        kind="categorical",
        test="chi-squared",
        statistic=statistic,
        p_value=p,
        drifted=False,  # set once all features are tested
        n_reference=len(ref),
        n_current=len(cur),
        reference=_shares(categories, ref_counts, order=ref_counts + cur_counts),
        current=_shares(categories, cur_counts, order=ref_counts + cur_counts),
        histogram=_categorical_histogram(categories, ref_counts, cur_counts),
        unseen=[str(c) for c in categories[new[:MAX_UNSEEN_LISTED]]],
        n_unseen=len(new),
    )


def _threshold(p_values: np.ndarray, alpha: float, correction: str) -> float:
    """The per-feature p-value below which a feature has drifted."""
    n = len(p_values)
    if correction == "bonferroni":
        return alpha / n
    # Benjamini-Hochberg, as alibi-detect's fdr(): the largest rank k with p_(k) < alpha * k / n
    # sets the bar; with none, the lowest step alpha / n still separates (nothing passes it).
    steps = alpha * np.arange(1, n + 1) / n
    below = np.flatnonzero(np.sort(p_values) < steps)
    return float(steps[below.max()]) if below.size else alpha / n


def _numeric_histogram(ref: np.ndarray, cur: np.ndarray) -> Histogram:
    both = np.concatenate([ref, cur])
    # Tails beyond the 0.5 / 99.5 percentiles fall into the end bins, so one outlier
    # does not squash the whole chart into a single bar.
    lo, hi = (float(q) for q in np.quantile(both, [0.005, 0.995]))
    if lo == hi:
        lo, hi = float(both.min()), float(both.max())
    if lo == hi:
        lo, hi = lo - 0.5, hi + 0.5
    edges = np.linspace(lo, hi, N_BINS + 1)
    ref_counts, _ = np.histogram(np.clip(ref, lo, hi), edges)
    cur_counts, _ = np.histogram(np.clip(cur, lo, hi), edges)
    labels = [f"{_num(a)} – {_num(b)}" for a, b in zip(edges[:-1], edges[1:])]
    return Histogram(labels, ref_counts.tolist(), cur_counts.tolist(), edges.tolist())


def _categorical_histogram(categories: np.ndarray, ref_counts: np.ndarray, cur_counts: np.ndarray) -> Histogram:
    order = np.argsort(-(ref_counts + cur_counts), kind="stable")
    shown, rest = order[:MAX_CATEGORIES_SHOWN], order[MAX_CATEGORIES_SHOWN:]
    labels = [str(c) for c in categories[shown]]
    ref, cur = ref_counts[shown].tolist(), cur_counts[shown].tolist()
    if rest.size:
        labels.append(f"({rest.size} others)")
        ref.append(int(ref_counts[rest].sum()))
        cur.append(int(cur_counts[rest].sum()))
    return Histogram(labels, [int(v) for v in ref], [int(v) for v in cur])


def _shares(categories: np.ndarray, counts: np.ndarray, order: np.ndarray) -> dict[str, float]:
    total = counts.sum() or 1
    top = np.argsort(-order, kind="stable")[:MAX_CATEGORIES_SHOWN]
    return {str(categories[i]): float(counts[i] / total) for i in top}


# ---------------------------------------------------------------------------- reports


def verdict(result: DriftResult) -> str:
    """One line: drift or not, in how many features, at which threshold."""
    if not result.tested:
        return f"Drift not tested: {result.reason}"
    n, k = len(result.features), len(result.drifted)
    bar = f"{result.correction} correction, per-feature p < {_p(result.threshold)}"
    if result.is_drift:
        return f"Drift detected in {k} of {n} features ({bar})"
    return f"No drift in {n} features ({bar})"


def write_markdown(result: DriftResult, path: Path | str, top: int = 10) -> Path:
    """The verdict and the most significant drifted features, for the KFP UI."""
    lines = [f"**{verdict(result)}**", ""]
    if result.tested:
        lines += [
            f"{result.n_reference:,} reference rows, {result.n_current:,} current rows, "
            f"engine {result.engine}, significance {result.p_value:g}.",
            "",
        ]
    drifted = sorted(result.drifted, key=lambda f: f.p_value)
    if drifted:
        lines += ["| feature | kind | test | statistic | p-value |", "|---|---|---|---|---|"]
        for f in drifted[:top]:
            name = f.name.replace("|", "\\|")
            lines.append(f"| {name} | {f.kind} | {f.test} | {f.statistic:.4g} | {_p(f.p_value)} |")
        if len(drifted) > top:
            lines += ["", f"…and {len(drifted) - top} more drifted features in the HTML report."]
        lines.append("")
    for f in (f for f in result.ranked() if f.n_unseen):
        unseen = _count(f.n_unseen, "category", "categories")
        lines.append(f"- `{f.name}`: {unseen} unseen in the reference ({', '.join(f.unseen[:5])})")
    if result.skipped:
        lines.append("")
        lines.append("Not tested: " + "; ".join(f"`{k}` ({v})" for k, v in result.skipped.items()))
    return _write(path, "\n".join(lines).rstrip() + "\n")


def write_html(result: DriftResult, path: Path | str) -> Path:
    """One self-contained page: verdict, summary table, and per-feature charts as inline SVG."""
    e = html.escape
    state = "skip" if not result.tested else ("drift" if result.is_drift else "ok")
    body = [f'<header class="verdict {state}"><h1>{e(verdict(result))}</h1>']
    if result.tested:
        body.append(
            f'<p class="sub">{result.n_reference:,} reference rows · {result.n_current:,} current rows · '
            f"engine {e(result.engine)} · significance {result.p_value:g} · {e(result.correction)} correction → "
            f"per-feature threshold {e(_p(result.threshold))}</p>"
        )
    body.append("</header>")

    ranked = result.ranked()
    if ranked:
        rows = []
        for i, f in enumerate(ranked):
            badge = '<span class="badge drift">drifted</span>' if f.drifted else '<span class="badge ok">no</span>'
            rows.append(
                f'<tr><td><a href="#f{i}">{e(f.name)}</a></td><td>{f.kind}</td><td>{e(f.test)}</td>'
                f'<td class="num">{f.statistic:.4g}</td><td class="num">{e(_p(f.p_value))}</td><td>{badge}</td></tr>'
            )
        body.append(
            "<section><h2>Features</h2><table><thead><tr><th>Feature</th><th>Kind</th><th>Test</th>"
            '<th class="num">Statistic</th><th class="num">p-value</th><th>Drifted</th></tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table></section>"
        )
    if result.skipped:
        items = "".join(f"<li><b>{e(k)}</b>: {e(v)}</li>" for k, v in result.skipped.items())
        body.append(f"<section><h2>Not tested</h2><ul class=\"skipped\">{items}</ul></section>")
    if ranked:
        legend = (
            '<p class="legend"><i style="background:var(--ref)"></i>reference (training data)'
            '<i style="background:var(--cur)"></i>current</p>'
        )
        cards = [_card(i, f, legend) for i, f in enumerate(ranked)]
        body.append(f'<section><h2>Distributions</h2><div class="grid">{"".join(cards)}</div></section>')

    page = (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{e(verdict(result))}</title><style>{_CSS}</style></head>"
        f"<body><main>{''.join(body)}</main></body></html>\n"
    )
    return _write(path, page)


def _card(index: int, f: FeatureDrift, legend: str) -> str:
    e = html.escape
    if f.kind == "numeric":
        line = (
            f"reference mean {_num(f.reference['mean'])}, std {_num(f.reference['std'])} (n={f.n_reference:,}) → "
            f"current mean {_num(f.current['mean'])}, std {_num(f.current['std'])} (n={f.n_current:,})"
        )
        chart = _svg_histogram(f.histogram)
    else:
        line = f"reference n={f.n_reference:,} → current n={f.n_current:,}"
        if f.n_unseen:
            unseen = _count(f.n_unseen, "category", "categories")
            line += f' · <span class="new">{unseen} unseen in the reference: {e(", ".join(f.unseen[:5]))}</span>'
        chart = _svg_bars(f.histogram, set(f.unseen))
    badge = '<span class="badge drift">drifted</span>' if f.drifted else '<span class="badge ok">no drift</span>'
    return (
        f'<article class="card{" drift" if f.drifted else ""}" id="f{index}">'
        f"<h3><span>{e(f.name)}</span>{badge}</h3>"
        f'<p class="stats">{e(f.test)} statistic {f.statistic:.4g} · p-value {e(_p(f.p_value))}<br>{line}</p>'
        f"{legend}{chart}</article>"
    )


def _svg_histogram(h: Histogram) -> str:
    width, height, left, right, top, bottom = 520, 190, 44, 18, 10, 30
    plot_w, plot_h = width - left - right, height - top - bottom
    ref, cur = _fractions(h.reference), _fractions(h.current)
    peak = max(ref + cur) or 1.0
    step = plot_w / len(ref)
    parts = [f'<svg viewBox="0 0 {width} {height}" role="img" aria-label="histogram">']
    for frac in (0.0, 0.5, 1.0):
        y = top + plot_h * (1 - frac)
        parts.append(f'<line x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}" class="gridline"/>')
        parts.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{_pct(peak * frac)}</text>')
    bar = max(step / 2 - 1, 0.5)
    for i, (r, c) in enumerate(zip(ref, cur)):
        x = left + i * step
        tip = html.escape(f"{h.labels[i]}: reference {_pct(r)}, current {_pct(c)}")
        for dx, share, side in ((0.5, r, "ref"), (step / 2, c, "cur")):
            bar_h = plot_h * share / peak
            parts.append(
                f'<rect x="{x + dx:.1f}" y="{top + plot_h - bar_h:.1f}" width="{bar:.1f}" height="{bar_h:.1f}" '
                f'class="{side}"><title>{tip}</title></rect>'
            )
    for i in range(0, len(h.edges), max(len(h.edges) // 4, 1)):
        x = left + i * step
        parts.append(f'<text x="{x:.1f}" y="{height - 10}" text-anchor="middle">{h.edges[i]:.3g}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _svg_bars(h: Histogram, unseen: set[str]) -> str:
    label_w, value_w, row_h, width = 150, 56, 26, 520
    plot_w = width - label_w - value_w
    ref, cur = _fractions(h.reference), _fractions(h.current)
    peak = max(ref + cur) or 1.0
    height = row_h * len(ref) + 4
    parts = [f'<svg viewBox="0 0 {width} {height}" role="img" aria-label="category shares">']
    for i, (label, r, c) in enumerate(zip(h.labels, ref, cur)):
        y = 2 + i * row_h
        new = label in unseen
        shown = label if len(label) <= 22 else label[:21] + "…"
        css = ' class="new"' if new else ""
        parts.append(
            f'<text x="{label_w - 8}" y="{y + 16}" text-anchor="end"{css}>'
            f"<title>{html.escape(label)}</title>{html.escape(shown)}{' (new)' if new else ''}</text>"
        )
        for dy, share, side in ((3, r, "ref"), (13, c, "cur")):
            bar_w = plot_w * share / peak
            parts.append(f'<rect x="{label_w}" y="{y + dy}" width="{bar_w:.1f}" height="9" class="{side}"/>')
            parts.append(f'<text x="{label_w + bar_w + 4:.1f}" y="{y + dy + 8}" class="small">{_pct(share)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _fractions(counts: list[int]) -> list[float]:
    total = sum(counts) or 1
    return [c / total for c in counts]


def _count(n: int, one: str, many: str) -> str:
    return f"{n:,} {one if n == 1 else many}"


def _pct(share: float) -> str:
    return f"{share:.0%}" if share >= 0.1 or share == 0 else f"{share:.1%}"


def _num(value: float) -> str:
    return f"{value:.4g}"


def _p(p: float) -> str:
    if p == 0:
        return "≈ 0"
    return f"{p:.2e}" if p < 1e-3 else f"{p:.4f}"


def _write(path: Path | str, text: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


_CSS = """
:root{--ref:#4c78a8;--cur:#f58518;--bad:#c0392b;--ok:#2e7d32;--muted:#667085;--line:#e4e7ec}
*{box-sizing:border-box}
body{margin:0;background:#f6f7f9;color:#1d2939;
font:14px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif}
main{max-width:1180px;margin:0 auto;padding:28px 24px 48px}
.verdict{background:#fff;border-left:6px solid var(--muted);border-radius:8px;padding:14px 18px;
box-shadow:0 1px 2px rgba(16,24,40,.06)}
.verdict.drift{border-left-color:var(--bad)}.verdict.ok{border-left-color:var(--ok)}
h1{font-size:21px;margin:0 0 4px}h2{font-size:16px;margin:28px 0 10px}
.sub{color:var(--muted);margin:0}
table{width:100%;border-collapse:collapse;background:#fff;border-radius:8px;overflow:hidden;
box-shadow:0 1px 2px rgba(16,24,40,.06)}
th,td{padding:7px 12px;text-align:left;border-bottom:1px solid var(--line);word-break:break-word}
th{background:#f2f4f7;font-size:12px;font-weight:600;text-transform:uppercase;letter-spacing:.03em;color:#475467}
.num{text-align:right;font-variant-numeric:tabular-nums}
a{color:inherit;text-decoration:none;border-bottom:1px dotted var(--muted)}
.badge{display:inline-block;padding:1px 9px;border-radius:999px;font-size:12px;font-weight:600;white-space:nowrap}
.badge.drift{background:#fdecea;color:var(--bad)}.badge.ok{background:#e8f5e9;color:var(--ok)}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(480px,1fr));gap:16px}
.card{background:#fff;border:1px solid var(--line);border-radius:8px;padding:14px 16px}
.card.drift{border-top:3px solid var(--bad)}
.card h3{margin:0;font-size:15px;display:flex;justify-content:space-between;gap:8px;word-break:break-word}
.stats{color:var(--muted);font-size:12.5px;margin:2px 0 8px}
.legend{font-size:12px;color:#475467;margin:0 0 4px}
.legend i{display:inline-block;width:10px;height:10px;border-radius:2px;margin:0 5px 0 12px;vertical-align:-1px}
.legend i:first-child{margin-left:0}
.new{color:var(--bad);font-weight:600}
.skipped{background:#fff;border:1px solid var(--line);border-radius:8px;padding:10px 28px}
svg{display:block;width:100%;height:auto}
svg text{font-size:11px;fill:#475467}svg text.small{font-size:10px}svg text.new{fill:var(--bad);font-weight:600}
svg .gridline{stroke:var(--line);stroke-width:1}
svg .ref{fill:var(--ref)}svg .cur{fill:var(--cur)}
"""
