"""Reading TOML tables with precise one-line errors (file, section, key, value, what is
allowed), and checking keyword options against a function's signature."""

from __future__ import annotations

import difflib
import importlib
import inspect
import math
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import SetupError

if sys.version_info >= (3, 11):  # pragma: no cover - depends on the interpreter
    import tomllib  # noqa: F401  (re-exported to the other config modules)
else:  # pragma: no cover
    import tomli as tomllib  # noqa: F401

_MISSING = object()

# Parameters the runner passes itself; never setup options.
_RUNNER_ARGS = {
    "model",
    "experiment",
    "quiet",
    "progress",
    "self",
    "mesh",
    "setup",
    "matrices",  # FEMatrices / LaplaceEig objects are built by the runner, not set in files
    "lap",
    "geometry",  # analytical: built from [geometry] and [pde]
    "sequences",
    "bvalues",
    "qvalues",
    "eigenmodes",
    "dtype",
    "device",
}


# ============================================================================ error helpers
class _Ctx:
    """Where a value came from, for error messages: ``file: [section] key``."""

    def __init__(self, source: str):
        self.source = source

    def error(self, where: str, message: str) -> SetupError:
        return SetupError(
            f"{self.source}: [{where}] {message}" if where else f"{self.source}: {message}"
        )


def _fmt(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


class _Table:
    """A TOML table being read: typed getters with precise errors, then :meth:`finish`."""

    def __init__(self, ctx: _Ctx, where: str, data: Any):
        if not isinstance(data, Mapping):
            raise ctx.error(where, f"must be a table, got {_fmt(data)}")
        self.ctx = ctx
        self.where = where
        self.data = dict(data)
        self.seen: set[str] = set()
        self.allowed: list[str] = []

    def err(self, key: str | None, message: str) -> SetupError:
        if key is None:
            return self.ctx.error(self.where, message)
        value = self.data.get(key, _MISSING)
        shown = "" if value is _MISSING else f" = {_fmt(value)}"
        return self.ctx.error(self.where, f"{key}{shown}: {message}")

    def has(self, key: str) -> bool:
        return key in self.data

    def raw(self, key: str, default: Any = _MISSING, *, required_text: str = "") -> Any:
        if key not in self.allowed:
            self.allowed.append(key)
        if key in self.data:
            self.seen.add(key)
            return self.data[key]
        if default is _MISSING:
            raise self.ctx.error(
                self.where,
                f"missing required key '{key}'" + (f" ({required_text})" if required_text else ""),
            )
        return default

    def number(
        self,
        key: str,
        default: Any = _MISSING,
        *,
        unit: str = "",
        positive: bool = False,
        nonneg: bool = False,
        allow_inf: bool = False,
    ) -> Any:
        v = self.raw(key, default, required_text=f"a number{', ' + unit if unit else ''}")
        if v is default and key not in self.data:
            return v
        u = f" ({unit})" if unit else ""
        if not _is_number(v):
            raise self.err(key, f"must be a number{u}")
        v = float(v)
        if math.isnan(v) or (math.isinf(v) and not allow_inf):
            raise self.err(key, f"must be a finite number{u}")
        if positive and not v > 0:
            raise self.err(key, f"must be > 0{u}")
        if nonneg and v < 0:
            raise self.err(key, f"must be >= 0{u}")
        return v

    def integer(self, key: str, default: Any = _MISSING, *, minimum: int | None = None) -> Any:
        v = self.raw(key, default, required_text="an integer")
        if key not in self.data:
            return v
        if not _is_int(v):
            raise self.err(key, "must be an integer")
        if minimum is not None and v < minimum:
            raise self.err(key, f"must be an integer >= {minimum}")
        return int(v)

    def boolean(self, key: str, default: Any = _MISSING) -> Any:
        v = self.raw(key, default, required_text="true or false")
        if key in self.data and not isinstance(v, bool):
            raise self.err(key, "must be true or false")
        return v

    def string(
        self,
        key: str,
        default: Any = _MISSING,
        *,
        choices: Sequence[str] | None = None,
        required_text: str = "",
    ) -> Any:
        if not required_text:
            required_text = (
                "one of " + ", ".join(repr(c) for c in choices) if choices else "a string"
            )
        v = self.raw(key, default, required_text=required_text)
        if key not in self.data:
            return v
        if not isinstance(v, str):
            allowed = f"one of {', '.join(repr(c) for c in choices)}" if choices else "a string"
            raise self.err(key, f"must be {allowed}")
        if choices is not None and v not in choices:
            hint = _did_you_mean(v, choices)
            raise self.err(key, f"unknown; allowed: {', '.join(repr(c) for c in choices)}{hint}")
        return v

    def table(self, key: str, default: Any = _MISSING) -> _Table | None:
        v = self.raw(key, default, required_text="a table")
        if key not in self.data:
            return None if v is None else _Table(self.ctx, f"{self.where}.{key}".lstrip("."), v)
        if not isinstance(v, Mapping):
            raise self.err(key, "must be a table")
        return _Table(self.ctx, f"{self.where}.{key}".lstrip("."), v)

    def finish(self, extra_hint: Mapping[str, str] | None = None) -> None:
        """Raise on the first key that no getter asked for."""
        for key in self.data:
            if key in self.seen:
                continue
            hint = (extra_hint or {}).get(key) or _did_you_mean(key, self.allowed)
            allowed = ", ".join(self.allowed) if self.allowed else "none"
            raise self.ctx.error(self.where, f"unknown key '{key}'; allowed: {allowed}{hint}")


def _did_you_mean(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(str(word), list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


# ======================================================================= option checks by signature
def _annotation_kinds(annotation: Any) -> set[str]:
    """Coarse kinds ('number', 'int', 'bool', 'str', 'list', 'table') an annotation admits."""
    text = (
        annotation
        if isinstance(annotation, str)
        else getattr(annotation, "__name__", str(annotation))
    )
    kinds = set()
    for token, kind in (
        ("float", "number"),
        ("Tensor", "number"),
        ("int", "int"),
        ("bool", "bool"),
        ("str", "str"),
        ("Sequence", "list"),
        ("tuple", "list"),
        ("list", "list"),
        ("Tensor", "list"),
        ("dict", "table"),
        ("Mapping", "table"),
        ("Path", "str"),
    ):
        if token in text:
            kinds.add(kind)
    return kinds


def _value_kind(v: Any) -> str:
    if isinstance(v, bool):
        return "bool"
    if _is_int(v):
        return "int"
    if isinstance(v, float):
        return "number"
    if isinstance(v, str):
        return "str"
    if isinstance(v, list):
        return "list"
    if isinstance(v, Mapping):
        return "table"
    return type(v).__name__


_KIND_TEXT = {
    "number": "a number",
    "int": "an integer",
    "bool": "true or false",
    "str": "a string",
    "list": "a list",
    "table": "a table",
}


def _check_kwargs(
    tab: _Table,
    params: Mapping[str, inspect.Parameter],
    *,
    skip: Iterable[str] = (),
    units: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Validate the keys of ``tab`` against keyword parameters (names, required, coarse types)."""
    skip = set(skip) | _RUNNER_ARGS
    out: dict[str, Any] = {}
    for name, p in params.items():
        if name in skip or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        required = p.default is inspect.Parameter.empty
        if not tab.has(name):
            tab.raw(name, None)  # registers the key as allowed
            if required:
                unit = f", {units[name]}" if units and name in units else ""
                raise tab.ctx.error(tab.where, f"missing required key '{name}'{unit}")
            continue
        value = tab.raw(name)
        kinds = (
            _annotation_kinds(p.annotation)
            if p.annotation is not inspect.Parameter.empty
            else set()
        )
        if not kinds and p.default not in (inspect.Parameter.empty, None):
            kinds = {_value_kind(p.default)}
        vk = _value_kind(value)
        ok = not kinds or vk in kinds or (vk == "int" and "number" in kinds)
        if vk == "number" and "int" in kinds and "number" not in kinds:
            ok = False
        if vk == "bool" and "bool" not in kinds and kinds:
            ok = False
        if not ok:
            allowed = " or ".join(_KIND_TEXT.get(k, k) for k in sorted(kinds))
            unit = f" ({units[name]})" if units and name in units else ""
            raise tab.err(name, f"must be {allowed}{unit}")
        if vk == "number" and not math.isfinite(value) and not (math.isinf(value) and value > 0):
            raise tab.err(name, "must be finite")
        out[name] = value
    return out


def _signature_params(func: Callable) -> dict[str, inspect.Parameter]:
    return dict(inspect.signature(func).parameters)


def _import(module: str, what: str, ctx: _Ctx, where: str) -> Any:
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as err:
        if err.name and module.startswith(err.name):
            raise ctx.error(
                where, f"{what} needs {module}, which this installation does not have"
            ) from None
        raise


def _jsonable(x: Any) -> Any:
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    if isinstance(x, Path):
        return str(x)
    return x
