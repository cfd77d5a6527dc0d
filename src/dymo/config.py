"""Validated configs that round-trip to JSON.

Subclass :class:`Config` as a dataclass. ``from_dict`` rejects unknown keys and values of the
wrong type with a :class:`~dymo.errors.ConfigError` naming the key; ``to_dict``/``save``/``load``
round-trip exactly.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from typing import Any, TypeVar, Union, get_args, get_origin, get_type_hints

from dymo.errors import ConfigError
from dymo.utils.io import read_json, write_json

T = TypeVar("T", bound="Config")


def _check_type(name: str, value: Any, tp: Any) -> Any:
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        errors = []
        for arg in get_args(tp):
            try:
                return _check_type(name, value, arg)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"config key {name!r}: {value!r} does not match {tp}")
    if tp is type(None):
        if value is None:
            return None
        raise ConfigError(f"config key {name!r}: expected None, got {value!r}")
    if origin is typing.Literal:
        if value in get_args(tp):
            return value
        raise ConfigError(f"config key {name!r}: {value!r} is not one of {get_args(tp)}")
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key {name!r}: expected a list, got {type(value).__name__}")
        args = get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"config key {name!r}: expected {len(args)} items, got {len(value)}")
            items = [_check_type(name, v, a) for v, a in zip(value, args, strict=False)]
        else:
            items = [_check_type(name, v, args[0]) for v in value] if args else list(value)
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key {name!r}: expected a mapping, got {type(value).__name__}")
        kt, vt = get_args(tp) or (Any, Any)
        return {_check_type(name, k, kt): _check_type(name, v, vt) for k, v in value.items()}
    if isinstance(tp, type) and issubclass(tp, Config):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"config key {name!r}: expected a mapping, got {type(value).__name__}")
        return tp.from_dict(value)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config key {name!r}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config key {name!r}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config key {name!r}: expected true/false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"config key {name!r}: expected a string, got {value!r}")
        return value
    return value


@dataclasses.dataclass
class Config:
    def __post_init__(self) -> None:
        hints = get_type_hints(type(self))
        for f in dataclasses.fields(self):
            setattr(self, f.name, _check_type(f.name, getattr(self, f.name), hints[f.name]))
        self.validate()

    def validate(self) -> None:
        """Override to check value ranges; raise ConfigError."""

    @classmethod
    def from_dict(cls: type[T], d: dict[str, Any]) -> T:
        if not isinstance(d, dict):
            raise ConfigError(f"{cls.__name__}: expected a mapping, got {type(d).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f"{cls.__name__}: unknown key(s) {unknown}; known keys: {sorted(names)}")
        try:
            return cls(**d)
        except TypeError as e:  # e.g. a required key is absent
            raise ConfigError(f"{cls.__name__}: {e}") from None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, Config):
                v = v.to_dict()
            elif isinstance(v, tuple):
                v = list(v)
            out[f.name] = v
        return out

    def save(self, path: str | os.PathLike) -> None:
        write_json(path, self.to_dict())

    @classmethod
    def load(cls: type[T], path: str | os.PathLike) -> T:
        return cls.from_dict(read_json(path))

    def replace(self: T, **changes: Any) -> T:
        return type(self).from_dict({**self.to_dict(), **changes})

    @classmethod
    def coerce(cls: type[T], config: Config | None, overrides: dict[str, Any], owner: str) -> T:
        """The config a component of class ``owner`` is built with: ``config`` (which must be a
        ``cls``) with ``overrides`` applied, or ``cls`` built from ``overrides`` alone."""
        if config is None:
            return cls.from_dict(overrides)
        if not isinstance(config, cls):
            raise ConfigError(f"{owner} needs a {cls.__name__}, got {type(config).__name__}")
        return config.replace(**overrides) if overrides else config
