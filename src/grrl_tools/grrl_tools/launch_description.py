"""Read a ROS 2 XML launch file into a flat list of processes to start.

The launch files in ``launch/`` are standard ROS 2 XML launch files: ``ros2 launch`` runs them
on a normal ROS 2 install. ``launch``/``launch_ros`` cannot be installed from the registries we
use, so :mod:`grrl_tools.launcher` starts the same graph from the same files, and this module
is its front end. It understands the subset of the XML launch format our files use and refuses
everything else with an error that names the tag or substitution, so a file never runs half
understood:

* tags: ``launch``, ``arg`` (``choice`` children), ``let``, ``include`` (of XML files, with
  ``arg`` children), ``group`` (``scoped``), ``push-ros-namespace``/``push_ros_namespace``,
  ``set_env``, ``node`` (``param``, ``remap``, ``env`` children), ``executable`` (``env``);
* attributes ``if``/``unless`` on every action; on ``node``/``executable``: ``output``,
  ``on_exit="shutdown"`` (a required process), ``respawn``, ``respawn_delay``, ``args``,
  ``ros_args``, ``sigterm_timeout``, ``sigkill_timeout``;
* substitutions: ``var``, ``env``, ``find-pkg-share``, ``find-pkg-prefix``, ``find-exec``,
  ``dirname``, ``filename``, ``anon``, ``not``, ``and``, ``or``, ``equals``, ``not-equals``.

Semantics follow ROS 2 ``launch`` (checked against launch 3.7 / launch_ros 0.28), including
that an ``<include>``'s ``<arg>`` values stay set in the including file afterwards. Where we are
deliberately stricter: an unknown command-line argument, a missing parameter file and an
unknown executable are errors before anything starts (``ros2 launch`` ignores the first, only
warns about the second, and starts the nodes before the bad one for the third).

This module has no ROS import besides ``ament_index_python`` (package lookup).
"""
from __future__ import annotations

import os
import shlex
import shutil
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml


class LaunchError(Exception):
    """A launch file that cannot be run; the message names the file and the culprit."""


@dataclass
class ParamFile:
    """A ``<param from="..."/>``: a ROS 2 parameter YAML file passed through unchanged."""

    path: Path


@dataclass
class ProcessSpec:
    """One process of the graph, fully resolved (no substitutions left)."""

    name: str
    """Unique label used in log prefixes and log file names."""
    cmd: list[str]
    """The command line without ROS arguments (executable first)."""
    package: str | None = None
    executable: str | None = None
    node_name: str | None = None
    namespace: str | None = None
    params: list[ParamFile | dict[str, Any]] = field(default_factory=list)
    """Parameter files and inline parameter dicts, in the order given; later ones win."""
    remaps: list[tuple[str, str]] = field(default_factory=list)
    ros_args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    """Extra environment on top of the launcher's (``set-env`` and ``env`` children)."""
    output: str = "screen"
    required: bool = False
    """``on_exit="shutdown"``: when it exits, the whole graph is torn down."""
    respawn: bool = False
    respawn_delay: float = 0.0
    sigterm_timeout: float = 5.0
    sigkill_timeout: float = 5.0
    source: str = ""
    """``file:line`` of the tag, for error messages."""

    @property
    def is_ros_node(self) -> bool:
        return self.package is not None


# ----------------------------------------------------------------------------- lookup

def package_prefix(package: str) -> Path:
    """Install prefix of an ament package, with an error that names the package."""
    from ament_index_python.packages import PackageNotFoundError, get_package_prefix

    try:
        return Path(get_package_prefix(package))
    except (PackageNotFoundError, LookupError, ValueError) as exc:
        raise LaunchError(
            f"package '{package}' not found in AMENT_PREFIX_PATH "
            f"({os.environ.get('AMENT_PREFIX_PATH', '<unset>')}); did the workspace build "
            f"and is its env file sourced?") from exc


def find_executable(package: str, executable: str) -> Path:
    """``lib/<package>/<executable>`` as ``ros2 run`` resolves it."""
    path = package_prefix(package) / "lib" / package / executable
    if not (path.is_file() and os.access(path, os.X_OK)):
        libdir = path.parent
        have = sorted(p.name for p in libdir.iterdir()) if libdir.is_dir() else []
        raise LaunchError(
            f"executable '{executable}' not found in package '{package}' (looked for {path}; "
            f"the package has: {', '.join(have) or 'no executables'})")
    return path


# ----------------------------------------------------------------------- substitutions

def _split_top(text: str) -> list[str]:
    """Split the argument string of a substitution on whitespace outside nested ``$()``; a
    quoted argument may be empty (``$(equals $(var x) '')``)."""
    parts: list[str] = []
    depth, cur, quote, quoted = 0, "", None, False
    i = 0
    while i < len(text):
        ch = text[i]
        if quote:
            if ch == quote:
                quote = None
            else:
                cur += ch
        elif ch in "'\"" and depth == 0:
            quote, quoted = ch, True
        elif text.startswith("$(", i):
            depth += 1
            cur += "$("
            i += 2
            continue
        elif ch == ")" and depth:
            depth -= 1
            cur += ch
        elif ch.isspace() and depth == 0:
            if cur or quoted:
                parts.append(cur)
            cur, quoted = "", False
        else:
            cur += ch
        i += 1
    if quote:
        raise LaunchError(f"unterminated quote in substitution arguments '{text}'")
    if cur or quoted:
        parts.append(cur)
    return parts


def parse_bool(value: str, what: str) -> bool:
    """The launch convention: ``true``/``1`` and ``false``/``0``, case-insensitive."""
    low = value.strip().lower()
    if low in ("true", "1"):
        return True
    if low in ("false", "0"):
        return False
    raise LaunchError(f"{what}: expected true/false/1/0, got '{value}'")


class Context:
    """Launch configurations (``arg``/``let``), environment and the current file."""

    def __init__(self, file: Path, configs: dict[str, str] | None = None,
                 env: dict[str, str] | None = None, namespace: str = ""):
        self.file = file
        self.configs: dict[str, str] = dict(configs or {})
        self.env: dict[str, str] = dict(env or {})
        self.namespace = namespace
        self._anon: dict[str, str] = {}

    def child(self, file: Path | None = None, scoped: bool = True) -> "Context":
        if not scoped:
            return self
        ctx = Context(file or self.file, self.configs, self.env, self.namespace)
        ctx._anon = self._anon
        return ctx

    # The substitution table: name -> function(list of evaluated args) -> str.
    def _subs(self) -> dict[str, Callable[[list[str]], str]]:
        def var(a: list[str]) -> str:
            self._nargs("var", a, 1)
            if a[0] not in self.configs:
                raise LaunchError(f"launch argument '{a[0]}' is not set (declare it with "
                                  f"<arg name=\"{a[0]}\"/> or pass {a[0]}:=VALUE)")
            return self.configs[a[0]]

        def env(a: list[str]) -> str:
            self._nargs("env", a, 1, 2)
            val = self.env.get(a[0], os.environ.get(a[0]))
            if val is None:
                if len(a) == 2:
                    return a[1]
                raise LaunchError(f"environment variable '{a[0]}' is not set")
            return val

        def find_exec(a: list[str]) -> str:
            self._nargs("find-exec", a, 1)
            found = shutil.which(a[0])
            if found is None:
                raise LaunchError(f"executable '{a[0]}' not found on PATH")
            return found

        def anon(a: list[str]) -> str:
            self._nargs("anon", a, 1)
            return self._anon.setdefault(a[0], f"{a[0]}_{uuid.uuid4().hex[:8]}")

        def logic(op: Callable[[list[bool]], bool], name: str, n: int | None = None):
            def f(a: list[str]) -> str:
                if n is not None:
                    self._nargs(name, a, n)
                return "true" if op([parse_bool(x, f"$({name})") for x in a]) else "false"
            return f

        def equals(a: list[str]) -> str:
            self._nargs("equals", a, 2)
            return "true" if a[0] == a[1] else "false"

        return {
            "var": var, "env": env, "find-exec": find_exec, "anon": anon,
            "find-pkg-share": lambda a: str(package_prefix(self._one("find-pkg-share", a))
                                            / "share" / a[0]),
            "find-pkg-prefix": lambda a: str(package_prefix(self._one("find-pkg-prefix", a))),
            "dirname": lambda a: (self._nargs("dirname", a, 0), str(self.file.parent))[1],
            "filename": lambda a: (self._nargs("filename", a, 0), str(self.file))[1],
            "not": logic(lambda v: not v[0], "not", 1),
            "and": logic(all, "and", 2),
            "or": logic(any, "or", 2),
            "equals": equals,
            "not-equals": lambda a: "false" if equals(a) == "true" else "true",
        }

    def _nargs(self, name: str, args: list[str], lo: int, hi: int | None = None) -> None:
        hi = lo if hi is None else hi
        if not lo <= len(args) <= hi:
            want = str(lo) if lo == hi else f"{lo}-{hi}"
            raise LaunchError(f"$({name}) takes {want} argument(s), got {len(args)}: {args}")

    def _one(self, name: str, args: list[str]) -> str:
        self._nargs(name, args, 1)
        return args[0]

    def subst(self, text: str | None) -> str:
        """Evaluate every ``$(...)`` in ``text`` (innermost first)."""
        if text is None:
            return ""
        out, i = "", 0
        while i < len(text):
            if text.startswith("$(", i):
                depth, j = 1, i + 2
                while j < len(text) and depth:
                    if text.startswith("$(", j):
                        depth += 1
                        j += 2
                        continue
                    if text[j] == ")":
                        depth -= 1
                    j += 1
                if depth:
                    raise LaunchError(f"unbalanced '$(' in '{text}'")
                body = text[i + 2:j - 1].strip()
                parts = _split_top(body)
                if not parts:
                    raise LaunchError(f"empty substitution in '{text}'")
                name, args = parts[0], [self.subst(p) for p in parts[1:]]
                fn = self._subs().get(name)
                if fn is None:
                    raise LaunchError(
                        f"unsupported substitution '$({name} ...)' in '{text}' (supported: "
                        f"{', '.join(sorted(self._subs()))})")
                out += fn(args)
                i = j
            else:
                out += text[i]
                i += 1
        return out


# ----------------------------------------------------------------------------- parsing

def _ns_join(base: str, ns: str) -> str:
    if ns.startswith("/"):
        joined = ns
    else:
        joined = base.rstrip("/") + "/" + ns if ns else base
    joined = "/" + "/".join(p for p in joined.split("/") if p)
    return joined


def _yaml_value(text: str) -> Any:
    """Type a parameter value the way ``launch_ros`` does: as a YAML scalar or list."""
    try:
        return yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        return text


class _Parser:
    #: XML tag -> handler suffix; the spellings ``ros2 launch`` accepts.
    TAGS = {"arg": "arg", "let": "let", "set_env": "set_env", "group": "group",
            "include": "include", "node": "node", "executable": "executable",
            "push-ros-namespace": "push_ros_namespace", "push_ros_namespace": "push_ros_namespace"}

    def __init__(self, overrides: dict[str, str]):
        self.overrides = overrides
        self.processes: list[ProcessSpec] = []
        self.declared: dict[str, tuple[str | None, str]] = {}
        self._names: dict[str, int] = {}
        self._stack: list[Path] = []
        self.seen: set[str] = set()

    def where(self, ctx: Context, el: ET.Element) -> str:
        return f"{ctx.file}:<{el.tag}>"

    def cond(self, ctx: Context, el: ET.Element) -> bool:
        if "if" in el.attrib and not parse_bool(ctx.subst(el.attrib["if"]),
                                                f"{self.where(ctx, el)} if"):
            return False
        if "unless" in el.attrib and parse_bool(ctx.subst(el.attrib["unless"]),
                                                f"{self.where(ctx, el)} unless"):
            return False
        return True

    def load(self, file: Path, ctx: Context, top: bool) -> None:
        file = file.resolve()
        if not file.is_file():
            raise LaunchError(f"launch file not found: {file}")
        if not file.name.endswith(".xml"):
            raise LaunchError(f"{file}: only XML launch files (*.launch.xml) can be run by "
                              "grrl-launch; use `ros2 launch` for Python/YAML launch files")
        if file in self._stack:
            raise LaunchError(f"{file}: recursive include")
        try:
            root = ET.parse(file).getroot()
        except ET.ParseError as exc:
            raise LaunchError(f"{file}: malformed XML: {exc}") from exc
        if root.tag != "launch":
            raise LaunchError(f"{file}: root element must be <launch>, got <{root.tag}>")
        self._stack.append(file)
        ctx.file = file
        self.children(root, ctx, top)
        self._stack.pop()

    def children(self, parent: ET.Element, ctx: Context, top: bool) -> None:
        for el in parent:
            if not isinstance(el.tag, str):  # comments
                continue
            tag = self.TAGS.get(el.tag)
            handler = getattr(self, "tag_" + tag, None) if tag else None
            if handler is None:
                raise LaunchError(f"{ctx.file}: unsupported tag <{el.tag}> (supported: "
                                  f"{', '.join(sorted(self.TAGS))})")
            if tag == "arg":
                handler(el, ctx, top)  # an arg is declared even under a false condition
            elif self.cond(ctx, el):
                handler(el, ctx, top)

    # --- tags
    def tag_arg(self, el: ET.Element, ctx: Context, top: bool) -> None:
        # Like ROS 2 launch: command-line arguments are launch configurations from the start,
        # so they reach included files too; an <include>'s <arg value> sets them for that file.
        name = el.attrib.get("name")
        if not name:
            raise LaunchError(f"{self.where(ctx, el)}: <arg> needs a name")
        if name in ctx.configs:
            pass
        elif "default" in el.attrib:
            ctx.configs[name] = ctx.subst(el.attrib["default"])
        else:
            raise LaunchError(f"{ctx.file}: required launch argument '{name}' not provided "
                              f"(pass {name}:=VALUE)")
        choices = [c.attrib.get("value", "") for c in el if c.tag == "choice"]
        if choices:
            if ctx.configs[name] not in choices:
                raise LaunchError(f"{ctx.file}: argument '{name}' is '{ctx.configs[name]}', "
                                  f"must be one of {choices}")
        if top:
            self.declared[name] = (el.attrib.get("default"), el.attrib.get("description", ""))
        self.seen.add(name)

    def tag_let(self, el: ET.Element, ctx: Context, top: bool) -> None:
        ctx.configs[el.attrib["name"]] = ctx.subst(el.attrib.get("value", ""))

    def tag_set_env(self, el: ET.Element, ctx: Context, top: bool) -> None:
        ctx.env[ctx.subst(el.attrib["name"])] = ctx.subst(el.attrib.get("value", ""))

    def tag_push_ros_namespace(self, el: ET.Element, ctx: Context, top: bool) -> None:
        ctx.namespace = _ns_join(ctx.namespace or "/", ctx.subst(el.attrib["namespace"]))

    def tag_group(self, el: ET.Element, ctx: Context, top: bool) -> None:
        scoped = parse_bool(el.attrib.get("scoped", "true"), f"{self.where(ctx, el)} scoped")
        self.children(el, ctx.child(scoped=scoped), top)

    def tag_include(self, el: ET.Element, ctx: Context, top: bool) -> None:
        target = Path(ctx.subst(el.attrib.get("file")))
        if not target.is_absolute():
            target = ctx.file.parent / target
        for a in el:
            if a.tag != "arg":
                raise LaunchError(f"{ctx.file}: unsupported tag <{a.tag}> inside <include>")
            # as in ROS 2 launch, these stay set in the including scope afterwards
            ctx.configs[a.attrib["name"]] = ctx.subst(a.attrib.get("value", ""))
        inner = ctx.child()
        self.load(target, inner, top=False)

    def _unique(self, label: str) -> str:
        n = self._names.get(label, 0)
        self._names[label] = n + 1
        return label if n == 0 else f"{label}-{n + 1}"

    #: attributes understood per tag; anything else is refused, never silently ignored
    ATTRS = {
        "node": {"pkg", "exec", "name", "namespace", "args", "ros_args", "output", "on_exit",
                 "respawn", "respawn_delay", "sigterm_timeout", "sigkill_timeout", "if",
                 "unless"},
        "executable": {"cmd", "name", "output", "on_exit", "respawn", "respawn_delay",
                       "sigterm_timeout", "sigkill_timeout", "if", "unless"},
    }

    def _common(self, el: ET.Element, ctx: Context, spec: ProcessSpec) -> None:
        spec.source = f"{ctx.file}:<{el.tag}>"
        unknown = sorted(set(el.attrib) - self.ATTRS[el.tag])
        if unknown:
            raise LaunchError(f"{spec.source}: unsupported attribute(s) {unknown} (supported: "
                              f"{sorted(self.ATTRS[el.tag])})")
        spec.env = dict(ctx.env)
        spec.output = ctx.subst(el.attrib.get("output", "screen"))
        if spec.output not in ("screen", "log", "both"):
            raise LaunchError(f"{spec.source}: output must be screen, log or both, "
                              f"got '{spec.output}'")
        on_exit = el.attrib.get("on_exit")
        if on_exit is not None:
            if on_exit != "shutdown":
                raise LaunchError(f"{spec.source}: on_exit supports only 'shutdown', "
                                  f"got '{on_exit}'")
            spec.required = True
        spec.respawn = parse_bool(ctx.subst(el.attrib.get("respawn", "false")),
                                  f"{spec.source} respawn")
        spec.respawn_delay = float(ctx.subst(el.attrib.get("respawn_delay", "0")))
        spec.sigterm_timeout = float(ctx.subst(el.attrib.get("sigterm_timeout", "5")))
        spec.sigkill_timeout = float(ctx.subst(el.attrib.get("sigkill_timeout", "5")))
        for child in el:
            if child.tag == "env":
                spec.env[ctx.subst(child.attrib["name"])] = ctx.subst(child.attrib["value"])

    def tag_executable(self, el: ET.Element, ctx: Context, top: bool) -> None:
        cmd = shlex.split(ctx.subst(el.attrib.get("cmd")))
        if not cmd:
            raise LaunchError(f"{self.where(ctx, el)}: <executable> needs a cmd")
        exe = shutil.which(cmd[0])
        if exe is None:
            raise LaunchError(f"{self.where(ctx, el)}: executable '{cmd[0]}' not found (or not "
                              "executable)")
        label = self._unique(ctx.subst(el.attrib.get("name", Path(cmd[0]).name)))
        spec = ProcessSpec(name=label, cmd=cmd)
        self._common(el, ctx, spec)
        for child in el:
            if child.tag != "env":
                raise LaunchError(f"{spec.source}: unsupported tag <{child.tag}> in <executable>")
        self.processes.append(spec)

    def tag_node(self, el: ET.Element, ctx: Context, top: bool) -> None:
        where = self.where(ctx, el)
        pkg, exe = el.attrib.get("pkg"), el.attrib.get("exec")
        if not pkg or not exe:
            raise LaunchError(f"{where}: <node> needs pkg and exec attributes")
        pkg, exe = ctx.subst(pkg), ctx.subst(exe)
        path = find_executable(pkg, exe)
        node_name = ctx.subst(el.attrib["name"]) if "name" in el.attrib else None
        ns = ctx.namespace
        if "namespace" in el.attrib:
            ns = _ns_join(ctx.namespace or "/", ctx.subst(el.attrib["namespace"]))
        args = shlex.split(ctx.subst(el.attrib.get("args", "")))
        label = (ns.strip("/").replace("/", ".") + "." if ns and ns != "/" else "") + \
            (node_name or exe)
        spec = ProcessSpec(name=self._unique(label), cmd=[str(path), *args], package=pkg,
                           executable=exe, node_name=node_name, namespace=ns or None)
        spec.ros_args = shlex.split(ctx.subst(el.attrib.get("ros_args", "")))
        self._common(el, ctx, spec)
        for child in el:
            if child.tag == "param":
                spec.params.append(self._param(child, ctx, spec.source))
            elif child.tag == "remap":
                spec.remaps.append((ctx.subst(child.attrib["from"]),
                                    ctx.subst(child.attrib["to"])))
            elif child.tag != "env":
                raise LaunchError(f"{spec.source}: unsupported tag <{child.tag}> in <node>")
        self.processes.append(spec)

    def _param(self, el: ET.Element, ctx: Context, where: str) -> ParamFile | dict[str, Any]:
        if "from" in el.attrib:
            if "name" in el.attrib:
                raise LaunchError(f"{where}: <param> takes either name or from, not both")
            path = Path(ctx.subst(el.attrib["from"]))
            if not path.is_absolute():
                path = ctx.file.parent / path
            if not path.is_file():
                raise LaunchError(f"{where}: parameter file not found: {path}")
            try:
                yaml.safe_load(path.read_text())
            except yaml.YAMLError as exc:
                raise LaunchError(f"{where}: parameter file {path} is not valid YAML: {exc}") \
                    from exc
            return ParamFile(path)
        name = el.attrib.get("name")
        if not name:
            raise LaunchError(f"{where}: <param> needs a name or a from attribute")
        name = ctx.subst(name)
        nested = [c for c in el if c.tag == "param"]
        if "value" in el.attrib and nested:
            raise LaunchError(f"{where}: parameter '{name}' has both a value and nested params")
        if nested:
            inner: dict[str, Any] = {}
            for c in nested:
                inner.update(self._param(c, ctx, where))  # type: ignore[arg-type]
            return {name: inner}
        if "value" not in el.attrib:
            raise LaunchError(f"{where}: parameter '{name}' needs a value")
        value = ctx.subst(el.attrib["value"])
        kind = el.attrib.get("type")
        if kind == "str":
            return {name: value}
        return {name: _yaml_value(value)}


@dataclass
class LaunchDescription:
    """The resolved graph of one launch file."""

    file: Path
    processes: list[ProcessSpec]
    arguments: dict[str, tuple[str | None, str]]
    """Top-level arguments: name -> (default or None if required, description)."""
    configs: dict[str, str]


def parse_cli_overrides(items: list[str]) -> dict[str, str]:
    """``name:=value`` pairs as given to ``ros2 launch``."""
    out: dict[str, str] = {}
    for item in items:
        if ":=" not in item:
            raise LaunchError(f"launch arguments are name:=value, got '{item}'")
        key, value = item.split(":=", 1)
        if not key:
            raise LaunchError(f"empty argument name in '{item}'")
        out[key] = value
    return out


def load_launch_file(file: str | Path, overrides: dict[str, str] | None = None
                     ) -> LaunchDescription:
    """Parse and fully resolve ``file``. Nothing is started; errors raise :class:`LaunchError`."""
    overrides = dict(overrides or {})
    parser = _Parser(overrides)
    ctx = Context(Path(file).resolve(), configs=overrides)
    parser.load(Path(file), ctx, top=True)
    unknown = sorted(set(overrides) - parser.seen)
    if unknown:
        raise LaunchError(f"{file}: unknown launch argument(s) {unknown}; declared: "
                          f"{sorted(parser.seen)}")
    return LaunchDescription(Path(file).resolve(), parser.processes, parser.declared,
                             ctx.configs)
