"""Load a job spec from YAML, apply dotted overrides, and explain every error by its field path."""

from __future__ import annotations

import copy
import difflib
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from amp_ray.errors import SpecError
from amp_ray.spec.job import JobSpec


def load_spec(path: str | Path, overrides: Sequence[str] = ()) -> JobSpec:
    """Read a YAML spec, apply `dotted.key=value` overrides, validate; SpecError on any problem."""
    raw = read_yaml(path)
    for override in overrides:
        raw = apply_override(raw, override)
    return validate_spec(raw, source=str(path))


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(f"spec file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"spec file {path} cannot be read: {exc}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = getattr(exc, "problem", None) or str(exc)
        raise SpecError(f"{where}: invalid YAML: {problem}") from None
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: a spec is a YAML mapping of blocks, got {type(raw).__name__}")
    return raw


def apply_override(raw: dict[str, Any], override: str) -> dict[str, Any]:
    """Return a copy of `raw` with `a.b.c=value` set; the value is parsed as YAML (0.2, [1, 2])."""
    key, sep, text = override.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise SpecError(f"override {override!r} is not of the form dotted.key=value")
    try:
        value = yaml.safe_load(text) if text.strip() else text
    except yaml.YAMLError:
        value = text
    return with_value(raw, key, value, f"override {override!r}")


def with_value(raw: dict[str, Any], key: str, value: Any, what: str = "") -> dict[str, Any]:
    """Return a copy of `raw` with the dotted path `key` set to `value` (already parsed)."""
    result = copy.deepcopy(raw)
    node = result
    parts = key.split(".")
    for depth, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            prefix = ".".join(parts[: depth + 1])
            raise SpecError(f"{what or key}: {prefix} is a value, not a block")
        node = child
    node[parts[-1]] = copy.deepcopy(value)
    return result


def validate_spec(raw: dict[str, Any], source: str = "spec") -> JobSpec:
    try:
        spec = JobSpec.model_validate(raw)
    except ValidationError as exc:
        raise SpecError(format_validation_error(exc, source)) from None
    _validate_sweep_grid(spec, raw, source)
    return spec


def _validate_sweep_grid(spec: JobSpec, raw: dict[str, Any], source: str) -> None:
    """Every trial of the sweep must itself be a valid spec: check them all before anything runs."""
    base = {k: v for k, v in raw.items() if k != "sweep"}
    for point in spec.sweep.points():
        try:
            JobSpec.model_validate(with_overrides(base, point))
        except ValidationError as exc:
            where = ", ".join(f"{k}={v!r}" for k, v in point.items())
            detail = format_validation_error(exc, source).split("\n", 1)[-1]
            raise SpecError(
                f"{source}: the sweep trial {where} is not a valid spec:\n{detail}"
            ) from None


def with_overrides(raw: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """A copy of `raw` with each dotted path of `values` set to its (already parsed) value: a
    sweep's point is applied as values, never written out as YAML text and parsed back."""
    for key, value in values.items():
        raw = with_value(raw, key, value)
    return raw


def format_validation_error(exc: ValidationError, source: str) -> str:
    """One line per problem: `field.path: what is wrong (got X)`; unknown keys list the allowed."""
    lines = [f"{source}: {exc.error_count()} problem(s) in the job spec:"]
    for error in exc.errors():
        loc = error["loc"]
        path = _dotted(loc) or "(top level)"
        if error["type"] == "extra_forbidden":
            lines.append(f"  {path}: unknown key; {_allowed_keys_hint(loc)}")
            continue
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "missing":
            lines.append(f"  {path}: required field is missing")
        elif error["type"] in ("model_type", "model_attributes_type", "dict_type"):
            lines.append(f"  {path}: must be a mapping of keys, got {_show(error['input'])}")
        elif error["type"] == "value_error" or not loc:
            lines.append(f"  {path}: {message}")
        else:
            lines.append(f"  {path}: {message} (got {_show(error['input'])})")
    return "\n".join(lines)


def _dotted(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _allowed_keys_hint(loc: tuple[int | str, ...]) -> str:
    """List the keys the enclosing block accepts, and the closest one to the unknown key."""
    model = _model_at(JobSpec, loc[:-1])
    if model is None:
        return "not allowed here"
    allowed = list(model.model_fields)
    guess = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
    hint = f" (did you mean {guess[0]!r}?)" if guess else ""
    return f"allowed: {', '.join(allowed)}{hint}"


def _model_at(model: type[BaseModel], loc: tuple[int | str, ...]) -> type[BaseModel] | None:
    """The block class at `loc`, walking through optionals, lists and dict values."""
    annotation: Any = model
    for part in loc:
        blocks = _block_types(annotation)
        if blocks and isinstance(part, str) and part in blocks[0].model_fields:
            annotation = blocks[0].model_fields[part].annotation
            continue
        items = _container_items(annotation)  # `part` is a list index or a dict key
        if not items:
            return None
        annotation = items[0]
    blocks = _block_types(annotation)
    return blocks[0] if blocks else None


def _block_types(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return [a for arg in typing.get_args(annotation) for a in _block_types(arg)]
    return []


def _container_items(annotation: Any) -> list[Any]:
    """The value type of a list[X] / dict[str, X] annotation (possibly optional)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return [i for arg in typing.get_args(annotation) for i in _container_items(arg)]
    if origin in (list, tuple, set):
        return list(typing.get_args(annotation)[:1])
    if origin is dict:
        return list(typing.get_args(annotation)[1:2])
    return []
