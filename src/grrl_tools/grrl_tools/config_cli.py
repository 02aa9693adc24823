"""Config dataclasses as the single source of defaults: CLI flags and ROS node parameters are
generated from them, with each field's docstring as its help.

    parser = argparse.ArgumentParser()
    add_arguments(parser, EvalConfig(), flatten=("controller",))
    cfg = from_args(parser.parse_args(), EvalConfig(), flatten=("controller",))

A field ``execute_steps`` becomes ``--execute-steps``; a nested config field is flagged with its
parent's name (``--steering-lr``) unless the parent is in ``flatten`` (``--execute-steps`` for
``controller.execute_steps``). Booleans get ``--x/--no-x``. ``skip`` leaves fields to the
caller (paths given as positionals, say). Two fields with one flag are a programming error
(argparse refuses the second). ROS parameters use the same names with dots for nesting
(``controller.execute_steps``).

With ``given_only=True`` only the flags given on the command line are set; :func:`from_args`
then keeps the values of the config it is handed for the others, so that a preset chosen by
another flag (a size, say) supplies the defaults and flags given win:

    add_arguments(parser, Sizes(), given_only=True)          # help shows Sizes()'s defaults
    args = parser.parse_args()
    cfg = from_args(args, PRESETS[args.size])
"""
from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import inspect
import json
import textwrap
import typing
from typing import Any, Iterator

NUMBER_TYPES = (int, float)


@functools.lru_cache(maxsize=None)
def field_docs(cls: type) -> dict[str, str]:
    """The docstring under each field of a dataclass (its attribute docstring), by name."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError, SyntaxError):
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for node, nxt in zip(body, body[1:] + [None]):
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and \
                    isinstance(nxt, ast.Expr) and isinstance(getattr(nxt, "value", None), ast.Constant) \
                    and isinstance(nxt.value.value, str):
                docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _base_type(hint: Any) -> Any:
    """``int | None`` → int; ``list[int]`` → list; a plain type → itself."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    origin = typing.get_origin(hint)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)) and len(args) == 1:
        return _base_type(args[0])
    return origin or hint


def walk(config: Any, flatten: tuple[str, ...] = (), skip: tuple[str, ...] = (),
         prefix: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], str, Any, Any, str]]:
    """(path, flag name, type, default, help) of every leaf field of a config instance."""
    hints = _hints(type(config))
    docs = field_docs(type(config))
    for f in dataclasses.fields(config):
        if f.name in skip or not f.init:
            continue
        value = getattr(config, f.name)
        path = prefix + (f.name,)
        if dataclasses.is_dataclass(value):
            yield from walk(value, flatten, skip, path)
            continue
        shown = [p for p in path[:-1] if p not in flatten] + [path[-1]]
        yield path, "-".join(shown).replace("_", "-"), _base_type(hints[f.name]), value, \
            docs.get(f.name, "")


def _parse_bool(text: str) -> bool:
    low = str(text).strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def add_arguments(parser: argparse.ArgumentParser, config: Any, flatten: tuple[str, ...] = (),
                  skip: tuple[str, ...] = (), given_only: bool = False) -> None:
    """One flag per leaf field of ``config`` (an instance: its values are the defaults shown).
    ``given_only``: a flag that is not given leaves its field out of the parsed namespace (see
    the module docstring)."""
    for path, flag, typ, default, doc in walk(config, flatten, skip):
        dest = "__".join(path)
        meta = path[-1].upper()
        shown = "" if default in (None, "") else f" (default: {default})"
        value = argparse.SUPPRESS if given_only else default
        if typ is bool:
            parser.add_argument(f"--{flag}", dest=dest, action=argparse.BooleanOptionalAction,
                                default=value, help=doc + shown)
        elif typ in (list, tuple):
            parser.add_argument(f"--{flag}", dest=dest, nargs="*", default=value,
                                type=_element_type(default, _field_hint(config, path)),
                                metavar=meta, help=doc + shown)
        elif typ is dict or typ is Any or default is None and typ not in (int, float, str):
            parser.add_argument(f"--{flag}", dest=dest, default=value,
                                type=_json_object if typ is dict else json.loads,
                                metavar="JSON", help=doc + shown)
        else:
            parser.add_argument(f"--{flag}", dest=dest, type=typ, default=value, metavar=meta,
                                help=doc + shown)


def _json_object(text: str) -> dict[str, Any]:
    """A dict field's flag: a JSON object (argparse reports anything else as a usage error)."""
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"must be a JSON object ({{...}}), got {text!r}")
    return value


def _field_hint(config: Any, path: tuple[str, ...]) -> Any:
    """The type hint of the field at ``path`` of a (nested) config instance."""
    for name in path[:-1]:
        config = getattr(config, name)
    return _hints(type(config))[path[-1]]


def _element_type(default: Any, hint: Any = None):
    """A list flag's element type: the hint's (``tuple[int, ...]``), else the default's first
    item's, else text."""
    args = [a for a in typing.get_args(hint) if a is not Ellipsis]
    if len(set(args)) == 1 and args[0] in (int, float, str):
        return args[0]
    items = list(default or [])
    return type(items[0]) if items and type(items[0]) in (int, float, str) else str


def from_args(args: argparse.Namespace, config: Any, flatten: tuple[str, ...] = (),
              skip: tuple[str, ...] = ()) -> Any:
    """``config`` with every field replaced by the parsed flag (nested configs rebuilt, so their
    ``__post_init__`` checks run on the new values); a field whose flag is not in ``args``
    (``given_only``) keeps its value in ``config``."""
    values = {path: getattr(args, "__".join(path)) for path, *_ in walk(config, flatten, skip)
              if hasattr(args, "__".join(path))}
    return _rebuild(config, values, ())


def _rebuild(config: Any, values: dict[tuple[str, ...], Any], prefix: tuple[str, ...]) -> Any:
    changes = {}
    for f in dataclasses.fields(config):
        if not f.init:
            continue
        path = prefix + (f.name,)
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            changes[f.name] = _rebuild(value, values, path)
        elif path in values:
            new = values[path]
            changes[f.name] = tuple(new) if isinstance(value, tuple) and new is not None else new
    return dataclasses.replace(config, **changes)


def parameter_name(path: tuple[str, ...], flatten: tuple[str, ...] = ()) -> str:
    """ROS parameter name of a field: dots for nesting, none for a parent in ``flatten``."""
    return ".".join([p for p in path[:-1] if p not in flatten] + [path[-1]])


def parameter_items(config: Any, flatten: tuple[str, ...] = (), skip: tuple[str, ...] = ()
                    ) -> Iterator[tuple[str, Any, str]]:
    """(ROS parameter name, default, description) of every leaf field."""
    for path, _flag, _typ, default, doc in walk(config, flatten, skip):
        yield parameter_name(path, flatten), default, doc


def declare_parameters(node, config: Any, flatten: tuple[str, ...] = (),
                       skip: tuple[str, ...] = ()) -> None:
    """Declare one ROS parameter per leaf field of ``config`` with its default and docstring.
    Numbers are dynamically typed, so a YAML ``4`` sets a float field."""
    from rcl_interfaces.msg import ParameterDescriptor

    for name, default, doc in parameter_items(config, flatten, skip):
        dynamic = isinstance(default, float) or default is None or isinstance(default, (list, tuple, dict))
        value = json.dumps(default) if isinstance(default, dict) or default is None else default
        node.declare_parameter(name, list(value) if isinstance(value, tuple) else value,
                               ParameterDescriptor(description=doc, dynamic_typing=dynamic))


def _parameter_value(value: Any, typ: Any, default: Any) -> Any:
    """A parameter's value as the field's type; TypeError/ValueError if it is not one."""
    if default is None and isinstance(value, str):      # optional fields are declared as JSON
        value = json.loads(value)
        if value is None:
            return None
    if typ is bool and not isinstance(value, bool):
        raise TypeError
    if typ in NUMBER_TYPES:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError
        if typ is int and float(value) != int(value):
            raise TypeError
        return typ(value)
    if typ is dict and isinstance(value, str):
        return json.loads(value)
    return value


def from_parameters(node, config: Any, flatten: tuple[str, ...] = (),
                    skip: tuple[str, ...] = ()) -> Any:
    """``config`` with every field read back from the node's parameters (after
    :func:`declare_parameters`); raises ValueError naming a parameter of the wrong type."""
    values = {}
    for path, _flag, typ, default, _doc in walk(config, flatten, skip):
        name = parameter_name(path, flatten)
        value = node.get_parameter(name).value
        try:
            values[path] = _parameter_value(value, typ, default)
        except (TypeError, ValueError):
            raise ValueError(f"parameter {name} must be {getattr(typ, '__name__', typ)}, got "
                             f"{value!r}") from None
    return _rebuild(config, values, ())
