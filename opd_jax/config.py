"""Typed configuration plumbing: load an experiment file, override fields from the command line,
write the resolved configuration.

Experiments are Python files defining ``get_config(arg: str) -> <frozen dataclass>``; the
command line names one as ``path/to/file.py`` or ``path/to/file.py:arg``. Overrides are
``a.b.c=value`` strings applied with ``dataclasses.replace`` and parsed by the field's type
(int, float, bool, str, None, tuples, Literals, dicts as JSON objects, nested dataclasses); the
dataclasses' own ``__post_init__`` checks then run, so a bad value fails with the class's
message. A field may carry ``metadata={"factory": fn}``: then ``field=name`` builds a new value
with ``fn(name)`` (used to switch the objective recipe: ``objective=eopd``).
"""

import dataclasses
import importlib
import importlib.util
import json
import os
import types
import typing
from typing import Any, Literal, Union


class ConfigOverrideError(ValueError):
    """An override names an unknown field or gives a value the field's type cannot take."""


def load_module(path: str) -> types.ModuleType:
    """Execute the experiment file ``path`` and return it as a module (it must define get_config)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"experiment file {path!r} does not exist")
    module_spec = importlib.util.spec_from_file_location(
        "experiment_" + os.path.splitext(os.path.basename(path))[0], path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise AttributeError(f"{path} defines no get_config(arg) function")
    return module


def named_factory(kind: str, name: str, builtin: dict, signature: str):
    """The factory ``name`` names: a key of ``builtin``, or ``"package.module:factory"`` (imported);
    errors name the ``kind`` (e.g. "reward") and the factory's expected ``signature``."""
    if name in builtin:
        return builtin[name]
    if ":" in name:
        module, _, attr = name.partition(":")
        try:
            return getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as e:
            raise ValueError(f"{kind} {name!r}: cannot import {attr} from {module} ({e})") from e
    raise ValueError(f"unknown {kind} {name!r}; built-in: {sorted(builtin)}, or give "
                     f"'package.module:factory' ({signature})")


def load_experiment(spec: str):
    """``"experiments/x.py:arg"`` → ``get_config(arg)`` of that file."""
    path, _, arg = spec.partition(":")
    return load_module(path).get_config(arg)


def _fields(cfg) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cfg)}


def _types(cfg) -> dict[str, Any]:
    return typing.get_type_hints(type(cfg))


def _is_optional(tp) -> tuple[bool, Any]:
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return True, (rest[0] if len(rest) == 1 else Union[tuple(rest)])
    return False, tp


def parse_value(text: str, tp, name: str):
    """Parse ``text`` as a value of type ``tp`` (the field ``name`` is for messages)."""
    optional, tp = _is_optional(tp)
    if optional and text.strip().lower() in ("none", "null"):
        return None
    origin = typing.get_origin(tp)
    try:
        if tp is bool:
            low = text.strip().lower()
            if low not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError
            return low in ("true", "1", "yes")
        if tp is int:
            return int(text)
        if tp is float:
            return float(text)
        if tp is str:
            return text
        if origin is Literal:
            options = typing.get_args(tp)
            for option in options:
                if str(option) == text:
                    return option
            raise ConfigOverrideError(f"{name} must be one of {options}, got {text!r}")
        if origin in (Union, types.UnionType):  # the first member type that reads it
            errors = []
            for member in typing.get_args(tp):
                try:
                    return parse_value(text, member, name)
                except ConfigOverrideError as e:
                    errors.append(str(e))
            raise ConfigOverrideError("; ".join(errors))
        if origin is dict:  # a JSON object: {"enable_thinking": false}
            try:
                value = json.loads(text)
            except json.JSONDecodeError:
                value = None
            if not isinstance(value, dict):
                raise ConfigOverrideError(f"{name} must be a JSON object such as "
                                          f"'{{\"name\": value}}', got {text!r}")
            return value
        if origin is tuple:
            args = typing.get_args(tp)
            elem = args[0] if args else str
            if text.strip().startswith("["):  # JSON: ["a", "b"] or [0.3, 0.7]
                try:
                    items = json.loads(text)
                except json.JSONDecodeError:
                    items = None
                if isinstance(items, list):
                    return tuple(parse_value(x if isinstance(x, str) else json.dumps(x), elem, name)
                                 for x in items)
            parts = [p.strip() for p in text.strip("()[] ").split(",") if p.strip()]
            if elem is str:  # a,b or 'a','b'
                parts = [p[1:-1] if len(p) > 1 and p[0] == p[-1] and p[0] in "'\"" else p
                         for p in parts]
            return tuple(parse_value(p, elem, name) for p in parts)
    except ConfigOverrideError:
        raise
    except ValueError:
        raise ConfigOverrideError(f"{name}: cannot read {text!r} as {getattr(tp, '__name__', tp)}")
    raise ConfigOverrideError(f"{name}: fields of type {tp} cannot be set from the command line")


def override(cfg, assignment: str):
    """Apply one ``a.b=value`` assignment to a frozen dataclass, returning the new config."""
    if "=" not in assignment:
        raise ConfigOverrideError(f"override {assignment!r} must look like field.path=value")
    path, value = assignment.split("=", 1)
    return _set(cfg, path.strip().split("."), value, path.strip())


def _set(cfg, parts: list[str], value: str, full: str):
    if not dataclasses.is_dataclass(cfg):
        raise ConfigOverrideError(f"{full}: {type(cfg).__name__} has no fields")
    fields = _fields(cfg)
    name = parts[0]
    if name not in fields:
        raise ConfigOverrideError(f"unknown config field {full!r}: {type(cfg).__name__} has "
                                  f"{sorted(fields)}")
    field = fields[name]
    if len(parts) > 1:
        child = getattr(cfg, name)
        if child is None:
            raise ConfigOverrideError(f"{full}: {name} is None; set it first")
        new = _set(child, parts[1:], value, full)
    elif "factory" in field.metadata and not value.replace("_", "").isdigit():
        new = field.metadata["factory"](value)
    else:
        tp = _types(cfg)[name]
        current = getattr(cfg, name)
        if dataclasses.is_dataclass(current) and not _is_optional(tp)[0]:
            raise ConfigOverrideError(f"{full} is a group of settings; set one of its fields "
                                      f"({full}.<field>=...)")
        new = parse_value(value, tp, full)
    try:
        return dataclasses.replace(cfg, **{name: new})
    except (TypeError, ValueError) as e:
        raise ConfigOverrideError(f"{full}={value}: {e}") from e


def apply_overrides(cfg, assignments: list[str]):
    for a in assignments:
        cfg = override(cfg, a)
    return cfg


def to_dict(cfg) -> Any:
    """A JSON-able view of a config (dataclasses carry their class name under ``_type``)."""
    if dataclasses.is_dataclass(cfg):
        out = {"_type": type(cfg).__name__}
        out.update({f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)})
        return out
    if isinstance(cfg, (tuple, list)):
        return [to_dict(x) for x in cfg]
    return cfg


def write_json(cfg, path: str) -> None:
    """Write ``to_dict(cfg)`` atomically (a temporary file renamed into place)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(to_dict(cfg), f, indent=2, sort_keys=False)
    os.replace(tmp, path)
