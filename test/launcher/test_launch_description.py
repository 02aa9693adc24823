"""The XML front end of grrl-launch: resolution of args, substitutions, params, errors."""
from __future__ import annotations

from pathlib import Path

import pytest

from grrl_tools.launch_description import (Context, LaunchError, ParamFile,
                                             load_launch_file, parse_cli_overrides)
from grrl_tools.launcher import ros_arguments


def test_talker_resolves_namespace_params_and_remaps(testpkg: Path, launch_dir: Path):
    desc = load_launch_file(launch_dir / "talker.launch.xml", {"greeting": "yo"})
    (spec,) = desc.processes
    assert spec.package == "grrl_testpkg" and spec.executable == "param_talker"
    assert spec.cmd[0] == str(testpkg / "lib" / "grrl_testpkg" / "param_talker")
    assert spec.namespace == "/robot1" and spec.node_name == "talker"
    assert isinstance(spec.params[0], ParamFile)
    assert spec.params[0].path == launch_dir / "talker_params.yaml"
    assert spec.params[1:] == [{"greeting": "yo"}, {"nested": {"value": 42}}]
    assert spec.remaps == [("chatter", "talk")]
    assert desc.arguments["ns"] == ("robot1", "namespace of the talker")


def test_ros_arguments_order_matches_launch_ros(testpkg: Path, launch_dir: Path, tmp_path):
    desc = load_launch_file(launch_dir / "talker.launch.xml")
    args = ros_arguments(desc.processes[0], tmp_path)
    assert args[:5] == ["--ros-args", "-r", "__node:=talker", "-r", "__ns:=/robot1"]
    files = [args[i + 1] for i, a in enumerate(args) if a == "--params-file"]
    assert files[0] == str(launch_dir / "talker_params.yaml")
    assert "greeting: hi" in Path(files[1]).read_text()  # inline params after the file
    assert args[-2:] == ["-r", "chatter:=talk"]


def test_include_let_group_if_unless(testpkg: Path, launch_dir: Path):
    one = load_launch_file(launch_dir / "outer.launch.xml")
    assert [p.namespace for p in one.processes if p.is_ros_node] == ["/fleet/a"]
    assert one.processes[0].params[1] == {"greeting": "included"}
    assert [p.name for p in one.processes] == ["fleet.a.talker", "oneshot"]
    two = load_launch_file(launch_dir / "outer.launch.xml", {"use_second": "true"})
    assert [p.namespace for p in two.processes] == ["/fleet/a", "/fleet/b"]
    # ROS 2 launch semantics: the first include's arg values stay set for the second one
    assert two.processes[1].params[1] == {"greeting": "included"}
    # a command-line argument reaches the included files, unless the include sets it
    three = load_launch_file(launch_dir / "outer.launch.xml", {"topic": "elsewhere"})
    assert three.processes[0].remaps == [("chatter", "elsewhere")]


def test_unknown_executable_is_named(testpkg: Path, launch_dir: Path):
    with pytest.raises(LaunchError, match="executable 'no_such_node' not found in package "
                                          "'grrl_testpkg'.*param_talker"):
        load_launch_file(launch_dir / "bad_exec.launch.xml")


def test_non_executable_file_is_not_an_executable(testpkg: Path, tmp_path: Path):
    f = tmp_path / "x.launch.xml"
    f.write_text('<launch><node pkg="grrl_testpkg" exec="not_executable"/></launch>')
    with pytest.raises(LaunchError, match="'not_executable' not found"):
        load_launch_file(f)


def test_unknown_package_is_named(tmp_path: Path):
    f = tmp_path / "x.launch.xml"
    f.write_text('<launch><node pkg="no_such_pkg" exec="x"/></launch>')
    with pytest.raises(LaunchError, match="package 'no_such_pkg' not found"):
        load_launch_file(f)


def test_missing_param_file_is_named(testpkg: Path, launch_dir: Path):
    with pytest.raises(LaunchError, match="parameter file not found: .*does_not_exist.yaml"):
        load_launch_file(launch_dir / "missing_params.launch.xml")


def test_argument_errors(testpkg: Path, launch_dir: Path, tmp_path: Path):
    with pytest.raises(LaunchError, match=r"unknown launch argument\(s\) \['nope'\]"):
        load_launch_file(launch_dir / "talker.launch.xml", {"nope": "1"})
    f = tmp_path / "req.launch.xml"
    f.write_text('<launch><arg name="robot"><choice value="a"/><choice value="b"/></arg>'
                 '</launch>')
    with pytest.raises(LaunchError, match="required launch argument 'robot'"):
        load_launch_file(f)
    with pytest.raises(LaunchError, match=r"must be one of \['a', 'b'\]"):
        load_launch_file(f, {"robot": "c"})
    assert load_launch_file(f, {"robot": "b"}).configs["robot"] == "b"
    with pytest.raises(LaunchError, match="name:=value"):
        parse_cli_overrides(["robot=b"])


@pytest.mark.parametrize("text, match", [
    ("<launch><node pkg='a'", "malformed XML"),
    ("<notlaunch/>", "root element must be <launch>"),
    ("<launch><timer period='1'/></launch>", "unsupported tag <timer>"),
    ("<launch><set-env name='A' value='1'/></launch>", "unsupported tag <set-env>"),
    ("<launch><executable cmd='true' cwd='/'/></launch>", r"unsupported attribute\(s\) \['cwd'\]"),
    ("<launch><let name='x' value='$(eval 1+1)'/></launch>", r"unsupported substitution '\$\(eval"),
    ("<launch><let name='x' value='$(optenv A)'/></launch>", r"unsupported substitution '\$\(optenv"),
    ("<launch><let name='x' value='$(var y'/></launch>", "unbalanced"),
    ("<launch><group if='maybe'/></launch>", "expected true/false"),
])
def test_malformed_files(tmp_path: Path, text: str, match: str):
    f = tmp_path / "bad.launch.xml"
    f.write_text(text)
    with pytest.raises(LaunchError, match=match):
        load_launch_file(f)


def test_substitutions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("GRRL_X", "ex")
    ctx = Context(tmp_path / "f.launch.xml", {"a": "true", "b": "false", "n": "grrl_trainer",
                                              "e": ""})
    assert ctx.subst("$(env GRRL_X)-$(env GRRL_NOPE dflt)") == "ex-dflt"
    assert ctx.subst("$(not $(var a)) $(and $(var a) $(var b)) $(or $(var a) $(var b))") == \
        "false false true"
    assert ctx.subst("$(equals $(var a) true) $(not-equals x y)") == "true true"
    # an empty argument, quoted (sim.launch.xml: a progress node unless critic is empty)
    assert ctx.subst("$(equals '$(var e)' '') $(equals '$(var a)' '')") == "true false"
    assert ctx.subst("$(dirname)") == str(tmp_path)
    assert ctx.subst("$(find-pkg-share $(var n))").endswith("share/grrl_trainer")
    assert ctx.subst("$(anon n)") == ctx.subst("$(anon n)") != "n"
    with pytest.raises(LaunchError, match="environment variable 'GRRL_NOPE' is not set"):
        ctx.subst("$(env GRRL_NOPE)")


def test_non_executable_command_is_refused(tmp_path: Path):
    script = tmp_path / "tool.sh"
    script.write_text("#!/bin/sh\n")
    f = tmp_path / "x.launch.xml"
    f.write_text(f"<launch><executable cmd='{script}'/></launch>")
    with pytest.raises(LaunchError, match=r"not found \(or not executable\)"):
        load_launch_file(f)
    script.chmod(0o755)
    assert load_launch_file(f).processes[0].cmd == [str(script)]
