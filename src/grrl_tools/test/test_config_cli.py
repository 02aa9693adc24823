"""Config dataclasses as CLI flags and ROS parameters: every field, its default and docstring,
nested configs flattened or prefixed, optional fields, and values of the wrong type refused."""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Any

import pytest

from grrl_tools.config_cli import (add_arguments, declare_parameters, from_args, from_parameters,
                                   parameter_items)


@dataclass
class Inner:
    beta: float | None = None
    """optional threshold (None: derived)"""
    steps: int = 3
    """steps per round"""


@dataclass
class Outer:
    rate: float = 2.0
    """how often"""
    name: str = "x"
    """what"""
    on: bool = True
    """whether"""
    extra: dict[str, Any] = field(default_factory=dict)
    """free-form overrides"""
    inner: Inner = field(default_factory=Inner)
    """nested"""


class FakeNode:
    """declare_parameter / get_parameter as rclpy's Node, with overrides as a launch gives them."""

    def __init__(self, overrides: dict[str, Any] | None = None):
        self.values: dict[str, Any] = {}
        self.docs: dict[str, str] = {}
        self.overrides = overrides or {}

    def declare_parameter(self, name, value, descriptor):
        self.values[name] = self.overrides.get(name, value)
        self.docs[name] = descriptor.description

    def get_parameter(self, name):
        return type("P", (), {"value": self.values[name]})()


@pytest.mark.parametrize("flatten", [(), ("inner",)])
def test_parameters_round_trip_with_their_docstrings(flatten):
    node = FakeNode()
    declare_parameters(node, Outer(), flatten)
    beta = "beta" if flatten else "inner.beta"
    assert node.docs[beta] == "optional threshold (None: derived)" and node.docs["rate"] == "how often"
    assert from_parameters(node, Outer(), flatten) == Outer()
    node = FakeNode({beta: 0.5, "rate": 4, "extra": '{"a": 1}'})     # a YAML 4 sets a float
    declare_parameters(node, Outer(), flatten)
    got = from_parameters(node, Outer(), flatten)
    assert got.inner.beta == 0.5 and got.rate == 4.0 and isinstance(got.rate, float)
    assert got.extra == {"a": 1}
    assert [n for n, _, _ in parameter_items(Outer(), flatten)] == \
        ["rate", "name", "on", "extra", beta, "steps" if flatten else "inner.steps"]


@pytest.mark.parametrize("name, value", [("rate", "fast"), ("on", 1), ("inner.steps", 2.5),
                                         ("inner.beta", "[1]"), ("rate", True)])
def test_wrong_types_are_refused_by_name(name, value):
    node = FakeNode({name: value})
    declare_parameters(node, Outer())
    with pytest.raises(ValueError, match=f"parameter {name} must be"):
        from_parameters(node, Outer())


def test_flags_from_the_dataclass():
    parser = argparse.ArgumentParser()
    add_arguments(parser, Outer(), flatten=("inner",))
    text = parser.format_help()
    for flag in ("--rate", "--name", "--on", "--no-on", "--extra", "--beta", "--steps"):
        assert flag in text
    args = parser.parse_args(["--rate", "3", "--no-on", "--beta", "0.1", "--extra", '{"b": 2}'])
    got = from_args(args, Outer(), flatten=("inner",))
    assert got == Outer(rate=3.0, on=False, extra={"b": 2}, inner=Inner(beta=0.1))


@dataclass
class WithList:
    ids: tuple[int, ...] = ()
    """numbers, none by default"""
    names: list[str] = field(default_factory=lambda: ["a"])
    """words"""


def test_list_flags_take_their_element_type_from_the_hint_even_when_empty():
    parser = argparse.ArgumentParser()
    add_arguments(parser, WithList())
    got = from_args(parser.parse_args(["--ids", "0", "2", "--names", "b", "c"]), WithList())
    assert got == WithList(ids=(0, 2), names=["b", "c"])
    with pytest.raises(SystemExit):
        parser.parse_args(["--ids", "pick"])
