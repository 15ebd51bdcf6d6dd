"""Configs as JSON: any frozen (nested) dataclass to a dict and back, with its version.

``config_to_dict`` writes each field by its type: enums by value, tuples and frozensets as
lists, nested dataclasses as dicts with their own ``version``, paths as strings. A class's
version is its ``VERSION`` class attribute (1 if it has none). ``config_from_dict`` reads them
back by the fields' type hints and refuses, as a ``ValueError`` naming the field, an unknown
field, a value of the wrong type or a version other than the class's: a saved config is either
replayed exactly or not at all. ``save_config`` / ``load_config`` add a small envelope naming the
command and the class, so a compile config is never replayed into ``lower``.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from smoothrot.core.errors import SmoothrotError

__all__ = ["CONFIG_FORMAT", "config_from_dict", "config_to_dict", "load_config", "save_config"]

CONFIG_FORMAT = "smoothrot-config"
T = TypeVar("T")


def version_of(cls: type) -> int:
    return int(getattr(cls, "VERSION", 1))


def config_to_dict(config: Any) -> dict[str, Any]:
    if not dataclasses.is_dataclass(config) or isinstance(config, type):
        raise TypeError(f"{config!r} is not a dataclass instance")
    out: dict[str, Any] = {"version": version_of(type(config))}
    for f in dataclasses.fields(config):
        out[f.name] = _encode(getattr(config, f.name))
    return out


def _encode(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return config_to_dict(value)
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, frozenset):
        return sorted(_encode(v) for v in value)
    if isinstance(value, tuple | list):
        return [_encode(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise TypeError(f"cannot write {value!r} ({type(value).__name__}) in a config")


def config_from_dict(cls: type[T], data: Any, where: str = "") -> T:
    where = where or cls.__name__
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected an object, got {type(data).__name__}")
    version = data.get("version", version_of(cls))
    if version != version_of(cls):
        raise ValueError(
            f"{where}: config version {version} is not {version_of(cls)} (written by another "
            "smoothrot version)"
        )
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields) - {"version"})
    if unknown:
        raise ValueError(f"{where}: unknown field {unknown[0]!r}")
    values = {
        name: _decode(hints[name], data[name], f"{where}.{name}") for name in fields if name in data
    }
    return cls(**values)


def _decode(hint: Any, value: Any, where: str) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if len(inner) != 1:
            raise TypeError(f"{where}: unions other than X | None are not supported")
        return _decode(inner[0], value, where)
    if origin in (tuple, frozenset, list):
        if not isinstance(value, list):
            raise ValueError(f"{where}: expected a list, got {value!r}")
        item = args[0] if args else Any
        items = [_decode(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return {tuple: tuple, frozenset: frozenset, list: list}[origin](items)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return config_from_dict(hint, value, where)
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        try:
            return hint(value)
        except ValueError:
            choices = ", ".join(str(m.value) for m in hint)
            raise ValueError(f"{where}: {value!r} is not one of {choices}") from None
    if hint is Path:
        if not isinstance(value, str):
            raise ValueError(f"{where}: expected a path string, got {value!r}")
        return Path(value)
    if hint is Any:
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (bool, int, float, str):
        if type(value) is not hint:
            raise ValueError(f"{where}: expected {hint.__name__}, got {value!r}")
        return value
    raise TypeError(f"{where}: cannot read a {hint!r} from a config")


def save_config(path: Path, command: str, config: Any) -> None:
    """Write ``config`` (the exact configuration of ``command``) as JSON, atomically."""
    path = Path(path)
    doc = {
        "format": CONFIG_FORMAT,
        "command": command,
        "type": type(config).__name__,
        "config": config_to_dict(config),
    }
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(json.dumps(doc, indent=2) + "\n")
        tmp.replace(path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise SmoothrotError(f"cannot write the config to {path}: {exc.strerror}") from exc


def load_config(path: Path, command: str, cls: type[T]) -> T:
    """Read a config ``save_config`` wrote for ``command`` (ValueError if it is not one)."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise SmoothrotError(f"config file {path} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SmoothrotError(f"{path} is not a smoothrot config: {exc}") from None
    if not isinstance(doc, dict) or doc.get("format") != CONFIG_FORMAT:
        raise SmoothrotError(f"{path} is not a smoothrot config (no format {CONFIG_FORMAT!r})")
    if doc.get("command") != command or doc.get("type") != cls.__name__:
        raise SmoothrotError(
            f"{path} holds a config of `smoothrot {doc.get('command')}`, not of `{command}`"
        )
    try:
        return config_from_dict(cls, doc.get("config"))
    except (TypeError, ValueError) as exc:
        raise SmoothrotError(f"{path}: {exc}") from None
