"""Strict conversion of plain dicts (parsed YAML) into frozen dataclasses.

Every problem is collected (unknown keys, missing keys, wrong types, values outside a choice) and
reported at once, each naming its dotted key, so a misspelled key in params.yaml never passes
silently. Dataclass fields carry their documentation in ``metadata["doc"]``.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, Literal, Union, get_args, get_origin

from crn_repro.errors import CrnError


@dataclasses.dataclass(frozen=True)
class Range:
    """The values a numeric setting may take: ``low``/``high`` bounds (None: unbounded on that side),
    each inclusive unless ``*_open``. Every int and float in params.yaml declares one (a test checks),
    so no out-of-range value reaches torch or numpy; NaN and infinities are never in range."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    why: str | None = None  # appended to the error: why the bound is there

    def contains(self, value: float) -> bool:
        if isinstance(value, float) and not math.isfinite(value):
            return False
        if self.low is not None and not (value > self.low if self.low_open else value >= self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def __str__(self) -> str:
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        if self.low is None:
            return f"{'<' if self.high_open else '<='} {self.high:g}"
        return f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"


SEED = Range(0, 2**32 - 1)  # what numpy and torch both accept


def doc(text: str, low: float | None = None, high: float | None = None, *, low_open: bool = False,
        high_open: bool = False, why: str | None = None, range: Range | None = None, **kwargs: Any) -> Any:  # noqa: A002
    """A dataclass field with a docstring (``metadata['doc']``) and, for numbers, the range of values it
    accepts (``low``/``high`` or a ``Range``; checked on load, for every element of a list); pass
    ``default=`` for optional ones."""
    metadata = {"doc": text}
    if range is None and (low is not None or high is not None):
        range = Range(low, high, low_open, high_open, why)
    if range is not None:
        metadata["range"] = range
    return dataclasses.field(metadata=metadata, **kwargs)


def _range_problem(value: Any, allowed: Range) -> str | None:
    values = value if isinstance(value, (list, tuple)) else (value,)
    for v in values:
        if isinstance(v, (list, tuple)):
            message = _range_problem(v, allowed)
            if message:
                return message
        elif isinstance(v, (int, float)) and not isinstance(v, bool) and not allowed.contains(v):
            return f"{v!r} is out of range: must be {allowed}" + (f": {allowed.why}" if allowed.why else "")
    return None


class Problems(list):
    def add(self, where: str, message: str) -> None:
        self.append(f"{where}: {message}")


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp))
    if origin in (list, tuple):
        return f"list of {_type_name(get_args(tp)[0])}"
    if tp is type(None):
        return "null"
    if dataclasses.is_dataclass(tp):
        return "mapping"
    return getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp: Any, where: str, problems: Problems) -> Any:
    origin = get_origin(tp)
    if origin is Literal:
        if value in get_args(tp):
            return value
        problems.add(where, f"{value!r} is not one of {_type_name(tp)}")
        return None
    if origin in (Union, types.UnionType):
        options = get_args(tp)
        if value is None and type(None) in options:
            return None
        for option in options:
            if option is type(None):
                continue
            trial = Problems()
            result = _convert(value, option, where, trial)
            if not trial:
                return result
        problems.add(where, f"expected {_type_name(tp)}, got {value!r}")
        return None
    if origin is tuple:
        args = get_args(tp)
        if not isinstance(value, (list, tuple)):
            problems.add(where, f"expected a list, got {value!r}")
            return None
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(v, args[0], f"{where}[{i}]", problems) for i, v in enumerate(value))
        if len(value) != len(args):
            problems.add(where, f"expected {len(args)} values, got {len(value)}")
            return None
        return tuple(_convert(v, a, f"{where}[{i}]", problems) for i, (v, a) in enumerate(zip(value, args)))
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where, problems)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    elif tp is Any:
        return value
    problems.add(where, f"expected {_type_name(tp)}, got {value!r}")
    return None


def from_dict(cls: type, data: Any, where: str, problems: Problems | None = None) -> Any:
    """Build dataclass ``cls`` from ``data``; raise CrnError listing every problem (top-level call)."""
    top = problems is None
    problems = Problems() if top else problems
    before = len(problems)
    result = None
    if not isinstance(data, dict):
        problems.add(where, f"expected a mapping, got {data!r}")
    else:
        hints = typing.get_type_hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls)}
        for key in data:
            if key not in fields:
                problems.add(f"{where}.{key}", f"unknown key (valid keys: {', '.join(fields)})")
        kwargs = {}
        for name, field in fields.items():
            if name in data:
                count = len(problems)
                kwargs[name] = _convert(data[name], hints[name], f"{where}.{name}", problems)
                allowed = field.metadata.get("range")
                if allowed is not None and len(problems) == count and kwargs[name] is not None:
                    message = _range_problem(kwargs[name], allowed)
                    if message:
                        problems.add(f"{where}.{name}", message)
            elif field.default is not dataclasses.MISSING:
                kwargs[name] = field.default
            else:
                problems.add(f"{where}.{name}", f"missing key ({field.metadata.get('doc', '')})".replace(" ()", ""))
        if len(problems) == before:
            result = cls(**kwargs)
            check = getattr(result, "validate", None)
            if check is not None:
                for key, message in check():
                    problems.add(f"{where}.{key}", message)
    if top and problems:
        raise CrnError("invalid params: " + "; ".join(problems))
    return result


def to_dict(obj: Any) -> Any:
    """Plain, YAML/JSON-friendly form of a (nested) dataclass."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj
