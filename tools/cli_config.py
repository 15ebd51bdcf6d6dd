"""Command-line flags generated from the config dataclasses: one flag per field.

A field ``group_size`` becomes ``--group-size`` (a nested config's fields take the field's name
as a prefix, ``tune.epochs`` → ``--tune-epochs``, unless the field's metadata says ``flatten``);
its metadata (``compiler/config.py``'s ``cli(...)``) gives the help and may rename the flag. The
type decides the argument: enums take their values as choices, booleans get ``--x`` / ``--no-x``,
``X | None`` takes an ``X``, tuples of strings repeat, other tuples are comma-separated. Every
flag's argparse default is None, so only the flags given on the command line override the
config: defaults < ``--config FILE`` < flags. ``--save-config FILE`` writes the exact config the
command then runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from smoothrot.core.config_io import load_config, save_config

__all__ = ["ConfigFlags", "add_config_flags"]

T = TypeVar("T")
_MISSING = dataclasses.MISSING


def _kebab(name: str) -> str:
    return name.replace("_", "-")


def _optional(hint: Any) -> tuple[Any, bool]:
    """(the type inside ``X | None``, True), or (hint, False)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(inner) == 1:
            return inner[0], True
    return hint, False


def _is_config(hint: Any) -> bool:
    return isinstance(hint, type) and dataclasses.is_dataclass(hint)


def _default_text(f: dataclasses.Field) -> str:
    if f.default is not _MISSING:
        value = f.default
    elif f.default_factory is not _MISSING:
        value = f.default_factory()
    else:
        return "required"
    if isinstance(value, enum.Enum):
        value = value.value
    if isinstance(value, tuple):
        value = ",".join(str(v) for v in value) or "none"
    return "default none" if value is None else f"default {value}"


@dataclass(frozen=True)
class _Flag:
    path: tuple[str, ...]  # field names from the top config down to this field
    dest: str
    option: str
    hint: Any  # the field's type (``X`` of ``X | None``)
    enable: bool = False  # the switch of an optional nested config


@dataclass(frozen=True)
class ConfigFlags:
    """The flags one config class added to a parser; turns parsed arguments into the config."""

    command: str
    cls: type
    flags: tuple[_Flag, ...]

    def config(self, args: argparse.Namespace) -> Any:
        """defaults < ``--config`` file < the flags given; writes ``--save-config``."""
        base = load_config(args.config, self.command, self.cls) if args.config else None
        overrides: dict[str, Any] = {}
        for flag in self.flags:
            value = getattr(args, flag.dest)
            if value is None:
                continue
            node = overrides
            for name in flag.path[:-1]:
                node = node.setdefault(name, {})
            if flag.enable:
                node.setdefault(flag.path[-1], {})
            else:
                node[flag.path[-1]] = _convert(flag.hint, value)
        config = _build(self.cls, base, overrides, self._options())
        if args.save_config:
            save_config(args.save_config, self.command, config)
        return config

    def _options(self) -> dict[tuple[str, ...], str]:
        return {f.path: f.option for f in self.flags}


def _convert(hint: Any, value: Any) -> Any:
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return hint(value)
    if typing.get_origin(hint) is tuple and not isinstance(value, tuple):
        return tuple(value)
    return value


def _build(cls: type[T], base: T | None, overrides: dict[str, Any], options, path=()) -> T:
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.name not in overrides:
            continue
        inner, _ = _optional(hints[f.name])
        if _is_config(inner):
            current = getattr(base, f.name) if base is not None else None
            values[f.name] = _build(inner, current, overrides[f.name], options, (*path, f.name))
        else:
            values[f.name] = overrides[f.name]
    if base is not None:
        return dataclasses.replace(base, **values)
    missing = [
        f.name
        for f in dataclasses.fields(cls)  # type: ignore[arg-type]
        if f.name not in values and f.default is _MISSING and f.default_factory is _MISSING
    ]
    if missing:
        option = options.get((*path, missing[0]), f"--{_kebab(missing[0])}")
        raise ValueError(f"{option} is required (or --config FILE that holds it)")
    return cls(**values)


def add_config_flags(parser: argparse.ArgumentParser, command: str, cls: type) -> ConfigFlags:
    """Add a flag per field of ``cls`` (recursively), plus ``--config`` / ``--save-config``."""
    group = parser.add_argument_group(f"{cls.__name__} (one flag per field)")
    flags = _add(group, cls, (), "", frozenset(), {}, {})
    parser.add_argument(
        "--config", type=Path, metavar="FILE", help="start from a config that --save-config wrote"
    )
    parser.add_argument(
        "--save-config", type=Path, metavar="FILE", help="write the exact config this command runs"
    )
    return ConfigFlags(command, cls, tuple(flags))


def _add(group, cls, path, prefix, exclude, renames, helps) -> list[_Flag]:
    hints = typing.get_type_hints(cls)
    flags: list[_Flag] = []
    for f in dataclasses.fields(cls):
        meta = f.metadata
        if f.name in exclude or meta.get("hidden"):
            continue
        inner, optional = _optional(hints[f.name])
        here = (*path, f.name)
        if _is_config(inner):
            sub_prefix = prefix if meta.get("flatten") else f"{prefix}{_kebab(f.name)}-"
            if optional:
                option = meta.get("enable") or f"--{prefix}{_kebab(f.name)}"
                dest = "cfg__" + "__".join(here)
                group.add_argument(option, dest=dest, action="store_const", const=True,
                                   default=None, help=meta.get("help"))  # fmt: skip
                flags.append(_Flag(here, dest, option, inner, enable=True))
            flags += _add(
                group, inner, here, sub_prefix, frozenset(meta.get("exclude", ())),
                meta.get("flags", {}), meta.get("helps", {}),
            )  # fmt: skip
            continue
        option = renames.get(f.name) or meta.get("flag") or f"--{prefix}{_kebab(f.name)}"
        text = helps.get(f.name) or meta.get("help") or ""
        dest = "cfg__" + "__".join(here)
        kwargs = _argument(inner, meta, f.name.upper())
        kwargs["help"] = f"{text} ({_default_text(f)})" if text else f"({_default_text(f)})"
        group.add_argument(option, dest=dest, default=None, **kwargs)
        flags.append(_Flag(here, dest, option, inner))
    return flags


def _argument(hint: Any, meta: Any, metavar: str) -> dict[str, Any]:
    """argparse keyword arguments for a field of type ``hint``."""
    parse: Callable[[str], Any] | None = meta.get("parse")
    kwargs: dict[str, Any] = {"metavar": meta.get("metavar", metavar)}
    if parse is not None:
        return {**kwargs, "type": _argparse_type(parse)}
    if hint is bool:
        return {"action": argparse.BooleanOptionalAction}
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return {"choices": [m.value for m in hint]}
    if typing.get_origin(hint) is tuple:
        item = typing.get_args(hint)[0]
        if item is str:
            return {**kwargs, "action": "append"}
        return {**kwargs, "type": _argparse_type(lambda text: _items(item, text))}
    if hint in (int, float, str, Path):
        return {**kwargs, "type": hint}
    raise TypeError(f"no command-line form for a field of type {hint!r}")


def _items(item: type, text: str) -> tuple:
    return tuple(item(part) for part in text.split(",") if part.strip())


def _argparse_type(fn: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            return fn(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse.__name__ = getattr(fn, "__name__", "value")
    return parse
