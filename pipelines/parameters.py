"""The pipeline's parameters, derived from the settings (one table: name, type, default, help).

`pipeline_function` gives a pipeline body a real signature built from that table, so KFP
shows every parameter with its default and help text, and `step` hands each component
the parameters its inputs are named after: a setting is declared once, in settings.py.
"""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

from feedback_loop.settings import Settings, default_of, pipeline_parameters

REQUIRED = ("model_store_uri",)  # the settings' local default is no place for a cluster's versions


def _kfp_type(annotation: Any) -> type:
    """The KFP parameter type of a settings annotation (str, int, float, bool, list or dict)."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _kfp_type(typing.get_args(annotation)[0])
    if origin is typing.Literal:
        return type(typing.get_args(annotation)[0])
    if origin in (list, dict):
        return origin
    return annotation


def signature() -> inspect.Signature:
    names = pipeline_parameters()
    ordered = [n for n in names if n in REQUIRED] + [n for n in names if n not in REQUIRED]
    return inspect.Signature(
        [
            inspect.Parameter(
                name,
                inspect.Parameter.POSITIONAL_OR_KEYWORD,
                default=inspect.Parameter.empty if name in REQUIRED else default_of(name),
                annotation=_kfp_type(Settings.model_fields[name].annotation),
            )
            for name in ordered
        ]
    )


def docstring(summary: str) -> str:
    """The summary, then every parameter's help text (KFP shows them in the UI)."""
    args = "\n".join(f"    {name}: {Settings.model_fields[name].description}" for name in signature().parameters)
    return f"{summary}\n\nArgs:\n{args}\n"


def pipeline_function(body: Callable[[SimpleNamespace], None], name: str, summary: str) -> Callable[..., None]:
    """A function KFP can compile: the settings' signature, calling `body` with the parameters."""
    sig = signature()

    @functools.wraps(body)
    def run(*args: Any, **kwargs: Any) -> None:
        bound = sig.bind(*args, **kwargs)
        bound.apply_defaults()
        body(SimpleNamespace(**bound.arguments))

    run.__signature__ = sig  # type: ignore[attr-defined]
    run.__name__ = name.replace("-", "_")
    run.__doc__ = docstring(summary)
    del run.__wrapped__  # KFP must read the settings' signature, not the body's
    return run


def step(component: Any, params: SimpleNamespace, **wired: Any) -> Any:
    """Adds `component` to the graph: each input named like a pipeline parameter gets it, the rest is `wired`."""
    names = component.component_spec.inputs or {}
    return component(**{**{n: getattr(params, n) for n in names if hasattr(params, n)}, **wired})


def pipeline_arguments(settings: Settings) -> dict[str, Any]:
    """The run's arguments: each pipeline parameter is the setting of the same name.

    What `feedback-loop run`, `submit` and `schedule` pass, and what a notebook passes to
    `kfp.Client().create_run_from_pipeline_package(..., arguments=...)`.
    """
    return {name: getattr(settings, name) for name in signature().parameters}
