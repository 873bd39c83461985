"""The drift tests, one file each, and the registry the drift stage picks them from.

A test file holds a short function `(reference, current, engine) -> Score` and its
`StatTest` declaration (see `base`); one `register` line below makes it known. Numeric
features get the Kolmogorov-Smirnov test and categorical ones the chi-squared test unless
a registration says otherwise; beside it, a distance test measures the effect size
(normalized Wasserstein for numbers, Jensen-Shannon for categories): a feature drifts
when its p-value is significant and its effect above the threshold.
"""

from __future__ import annotations

from feedback_loop.drift.result import Kind
from feedback_loop.drift.stattests import chi2, jensenshannon, ks, wasserstein
from feedback_loop.drift.stattests.base import ENGINES, Score, StatTest, alibi_detectors

__all__ = ["ENGINES", "Score", "StatTest", "alibi_detectors", "default_for", "effect_for", "get", "names", "register"]

_TESTS: dict[str, StatTest] = {}
_DEFAULTS: dict[str, str] = {}  # feature kind -> name of its test
_EFFECTS: dict[str, str] = {}  # feature kind -> name of the distance that measures its effect size


def register(test: StatTest, *, default_for: tuple[Kind, ...] = (), effect_for: tuple[Kind, ...] = ()) -> StatTest:
    """Makes `test` known by its name and, for the kinds in `default_for`, the test they get;
    for those in `effect_for` (a distance test), the effect size they are measured by."""
    if test.name in _TESTS:
        raise ValueError(f"a drift test named {test.name!r} is already registered")
    if wrong := [kind for kind in (*default_for, *effect_for) if kind not in test.feature_kinds]:
        raise ValueError(f"{test.name} cannot serve {wrong}: it tests {test.feature_kinds}")
    if effect_for and test.score != "distance":
        raise ValueError(f"{test.name} gives a p-value, not a distance: it cannot measure an effect size")
    _TESTS[test.name] = test
    _DEFAULTS.update(dict.fromkeys(default_for, test.name))
    _EFFECTS.update(dict.fromkeys(effect_for, test.name))
    return test


def get(name: str) -> StatTest:
    """The registered test called `name`."""
    try:
        return _TESTS[name]
    except KeyError:
        raise ValueError(f"no drift test named {name!r}; registered: {', '.join(names())}") from None


def names(kind: Kind | None = None) -> tuple[str, ...]:
    """The registered tests, or those that accept features of `kind`."""
    return tuple(name for name, test in _TESTS.items() if kind is None or kind in test.feature_kinds)


def default_for(kind: Kind) -> StatTest:
    """The test a feature of `kind` gets."""
    return _TESTS[_DEFAULTS[kind]]


def effect_for(kind: Kind) -> StatTest | None:
    """The distance test measuring a feature of `kind`'s effect size (None: none registered)."""
    return _TESTS[_EFFECTS[kind]] if kind in _EFFECTS else None


register(ks.KS, default_for=("numeric",))
register(chi2.CHI_SQUARED, default_for=("categorical",))
register(wasserstein.WASSERSTEIN, effect_for=("numeric",))
register(jensenshannon.JENSEN_SHANNON, effect_for=("categorical",))
