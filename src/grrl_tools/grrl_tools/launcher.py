"""``grrl-launch``: start the graph of a ROS 2 XML launch file without ``ros2 launch``.

One graph description, two runners: a user with a ROS 2 install runs
``ros2 launch grrl_trainer sim.launch.xml``; on a pip-only install ``grrl-launch`` reads the same
file (see :mod:`grrl_tools.launch_description`) and supervises the processes itself:

* each node in its own process (and process group), with ``--ros-args`` built as ``launch_ros``
  builds them: node name, namespace, parameter files, inline parameters, remaps;
* everything is resolved before the first process starts, so a bad file starts nothing;
* SIGINT/SIGTERM are forwarded (SIGINT, then SIGTERM after ``sigterm_timeout``, then SIGKILL);
  a process still running at the escalation is first asked for its threads' stacks (SIGUSR1);
* a required process (``on_exit="shutdown"``) that exits tears the graph down;
* children get ``PR_SET_PDEATHSIG`` so a ``kill -9`` of the launcher leaves no orphans;
* the exit status is 0 only if every process ended cleanly.
"""
from __future__ import annotations

import argparse
import ctypes
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import yaml

from grrl_tools.launch_description import (LaunchDescription, LaunchError, ParamFile,
                                             ProcessSpec, load_launch_file,
                                             parse_cli_overrides, package_prefix)

LOG = logging.getLogger("grrl-launch")

#: Exit codes that mean "stopped because we asked it to".
_STOP_CODES = {0, -signal.SIGINT, -signal.SIGTERM, 128 + signal.SIGINT, 128 + signal.SIGTERM}


def ros_arguments(spec: ProcessSpec, param_dir: Path) -> list[str]:
    """The ``--ros-args`` tail of a node's command line, as ``launch_ros`` would build it."""
    if not spec.is_ros_node:
        return []
    out = ["--ros-args", *spec.ros_args]
    if spec.node_name:
        out += ["-r", f"__node:={spec.node_name}"]
    if spec.namespace:
        out += ["-r", f"__ns:={spec.namespace}"]
    for i, param in enumerate(spec.params):
        if isinstance(param, ParamFile):
            out += ["--params-file", str(param.path)]
        else:
            path = param_dir / f"{spec.name}.{i}.params.yaml"
            path.write_text(yaml.safe_dump({"/**": {"ros__parameters": param}}))
            out += ["--params-file", str(path)]
    for src, dst in spec.remaps:
        out += ["-r", f"{src}:={dst}"]
    return out


def _die_with_parent() -> None:
    """In the child: get SIGTERM when the launcher dies, however it dies (Linux)."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _catches(pid: int, sig: int) -> bool:
    """Whether process ``pid`` has a handler for ``sig`` (Linux: SigCgt in /proc/PID/status)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("SigCgt:"):
                    return bool(int(line.split()[1], 16) >> (sig - 1) & 1)
    except (OSError, ValueError, IndexError):
        pass
    return False


@dataclass
class _Running:
    spec: ProcessSpec
    cmd: list[str]
    env: dict[str, str]
    proc: subprocess.Popen | None = None
    log: IO[str] | None = None
    pump: threading.Thread | None = None
    returncode: int | None = None
    stopped_by_us: bool = False
    starts: int = 0
    restart_at: float | None = None
    history: list[int] = field(default_factory=list)


class Launcher:
    """Supervises the processes of one :class:`LaunchDescription`."""

    def __init__(self, desc: LaunchDescription, log_dir: Path | None = None,
                 stream: IO[str] | None = None):
        self.desc = desc
        ros_home = Path(os.environ.get("ROS_HOME", Path.home() / ".ros"))
        stamp = time.strftime("%Y-%m-%d-%H-%M-%S") + f"-{os.getpid()}"
        self.log_dir = log_dir or ros_home / "log" / "grrl-launch" / stamp
        self.stream = stream or sys.stdout
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._shutdown_reason: str | None = None
        self._failed: list[str] = []
        self.running: list[_Running] = []

    # --- output
    def _emit(self, text: str) -> None:
        with self._lock:
            self.stream.write(text)
            self.stream.flush()

    def _pump(self, run: _Running) -> None:
        assert run.proc is not None and run.proc.stdout is not None
        prefix = f"[{run.spec.name}] "
        for line in run.proc.stdout:
            if run.log is not None:
                run.log.write(line)
                run.log.flush()
            if run.spec.output in ("screen", "both"):
                self._emit(prefix + line if line.endswith("\n") else prefix + line + "\n")
        self._wake.set()

    # --- lifecycle
    def prepare(self) -> None:
        """Build every command line and environment; raises before anything starts."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._param_dir = Path(tempfile.mkdtemp(prefix="grrl-launch-params-"))
        for spec in self.desc.processes:
            env = dict(os.environ)
            env.update(spec.env)
            env.setdefault("PYTHONUNBUFFERED", "1")
            env.setdefault("RCUTILS_LOGGING_BUFFERED_STREAM", "0")
            self.running.append(_Running(spec, spec.cmd + ros_arguments(spec, self._param_dir),
                                         env))

    def _start(self, run: _Running) -> None:
        if run.log is None:
            run.log = open(self.log_dir / f"{run.spec.name}.log", "a", encoding="utf-8")
        run.proc = subprocess.Popen(
            run.cmd, env=run.env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, errors="replace", bufsize=1,
            start_new_session=True, preexec_fn=_die_with_parent)
        run.starts += 1
        run.returncode = None
        run.restart_at = None
        LOG.info("started %s (pid %d): %s", run.spec.name, run.proc.pid, " ".join(run.cmd))
        run.pump = threading.Thread(target=self._pump, args=(run,), daemon=True)
        run.pump.start()

    def request_shutdown(self, reason: str) -> None:
        if self._shutdown_reason is None:
            self._shutdown_reason = reason
            LOG.info("shutting down: %s", reason)
        self._wake.set()

    def _signal(self, run: _Running, sig: int) -> None:
        if run.proc is not None and run.proc.poll() is None:
            try:
                os.killpg(run.proc.pid, sig)
            except ProcessLookupError:
                pass

    def _dump_stacks(self, runs: list[_Running]) -> None:
        """Ask processes that ignored SIGINT for their threads' stacks (our nodes print them on
        SIGUSR1, grrl_tools.node_main.STACKS_SIGNAL) so that the log shows where they hung;
        only a leader that handles SIGUSR1 is asked (it ends a process without a handler)."""
        asked = False
        for run in runs:
            if run.proc is not None and run.proc.poll() is None and _catches(run.proc.pid,
                                                                             signal.SIGUSR1):
                asked = True
                LOG.warning("%s did not stop after SIGINT; its stacks follow (SIGUSR1)",
                            run.spec.name)
                try:
                    os.kill(run.proc.pid, signal.SIGUSR1)
                except ProcessLookupError:
                    pass
        if asked:
            time.sleep(0.5)         # let the dumps reach the log before the next signal

    def _reap(self) -> None:
        now = time.monotonic()
        for run in self.running:
            if run.proc is None or run.returncode is not None:
                if run.restart_at is not None and now >= run.restart_at \
                        and self._shutdown_reason is None:
                    self._start(run)
                continue
            code = run.proc.poll()
            if code is None:
                continue
            if run.pump is not None:
                run.pump.join(timeout=2.0)
            run.returncode = code
            run.history.append(code)
            clean = code == 0 or (run.stopped_by_us and code in _STOP_CODES)
            level = logging.INFO if clean else logging.ERROR
            LOG.log(level, "process %s (pid %d) exited with code %d", run.spec.name,
                    run.proc.pid, code)
            if self._shutdown_reason is not None:
                if not clean:
                    self._failed.append(f"{run.spec.name} exited with {code} during shutdown")
                continue
            if not clean:
                self._failed.append(f"{run.spec.name} exited with {code}")
            if run.spec.required:
                self.request_shutdown(f"required process {run.spec.name} exited ({code})")
            elif run.spec.respawn:
                run.restart_at = now + run.spec.respawn_delay
                LOG.info("respawning %s in %.1fs", run.spec.name, run.spec.respawn_delay)

    def _alive(self) -> list[_Running]:
        return [r for r in self.running if r.proc is not None and r.proc.poll() is None]

    def _teardown(self) -> None:
        """SIGINT everyone, escalate to SIGTERM then SIGKILL per each process's timeouts."""
        alive = self._alive()
        for run in alive:
            run.stopped_by_us = True
            self._signal(run, signal.SIGINT)
        for sig, timeout_of in ((signal.SIGTERM, "sigterm_timeout"),
                                (signal.SIGKILL, "sigkill_timeout")):
            deadline = time.monotonic() + max(
                (getattr(r.spec, timeout_of) for r in alive), default=0.0)
            while self._alive() and time.monotonic() < deadline:
                time.sleep(0.05)
            stuck = self._alive()
            if stuck and sig == signal.SIGTERM:
                self._dump_stacks(stuck)
            for run in stuck:
                LOG.warning("%s did not stop, sending %s", run.spec.name, sig.name)
                self._signal(run, sig)
        while self._alive():
            time.sleep(0.05)
        for run in self.running:
            # The group leader is gone; kill any grandchildren it left behind.
            if run.proc is not None:
                try:
                    os.killpg(run.proc.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
        self._reap()

    def run(self) -> int:
        """Start everything and supervise until done; returns the exit status."""
        self.prepare()
        handlers = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                handlers[sig] = signal.signal(
                    sig, lambda s, f: self.request_shutdown(f"received {signal.Signals(s).name}"))
        try:
            for run in self.running:
                if self._shutdown_reason is not None:
                    break
                self._start(run)
            while self._shutdown_reason is None:
                self._wake.wait(0.1)
                self._wake.clear()
                self._reap()
                if not self._alive() and not any(r.restart_at for r in self.running):
                    self.request_shutdown("all processes exited")
        except OSError as exc:  # e.g. a start that fails: report it, still tear down
            self._failed.append(f"could not start a process: {exc}")
            self.request_shutdown(str(exc))
        finally:
            self._teardown()
            shutil.rmtree(self._param_dir, ignore_errors=True)
            for sig, old in handlers.items():
                signal.signal(sig, old)
            for run in self.running:
                if run.log is not None:
                    run.log.close()
        for failure in self._failed:
            LOG.error("failure: %s", failure)
        LOG.info("logs in %s", self.log_dir)
        return 1 if self._failed else 0


def describe(desc: LaunchDescription) -> str:
    """Human-readable listing of the resolved graph (``--print``)."""
    lines = [f"launch file: {desc.file}", "arguments:"]
    for name, (default, help_) in desc.arguments.items():
        lines.append(f"  {name} = {desc.configs.get(name)!r}"
                     f"{'' if default is not None else ' (required)'}  {help_}")
    lines.append("processes:")
    for spec in desc.processes:
        flags = " [required]" if spec.required else ""
        flags += " [respawn]" if spec.respawn else ""
        lines.append(f"  {spec.name}{flags}: {' '.join(spec.cmd)}")
        if spec.namespace:
            lines.append(f"    namespace: {spec.namespace}")
        for p in spec.params:
            lines.append(f"    params: {p.path if isinstance(p, ParamFile) else p}")
        for src, dst in spec.remaps:
            lines.append(f"    remap: {src} -> {dst}")
    return "\n".join(lines)


def resolve_file(positional: list[str]) -> Path:
    """``FILE`` or ``PACKAGE FILE`` as ``ros2 launch`` accepts them."""
    if len(positional) == 1:
        return Path(positional[0])
    if len(positional) == 2:
        pkg, name = positional
        share = package_prefix(pkg) / "share" / pkg
        hits = sorted(share.rglob(name))
        if not hits:
            raise LaunchError(f"no launch file '{name}' in package '{pkg}' ({share})")
        return hits[0]
    raise LaunchError("expected FILE or PACKAGE FILE, then name:=value arguments")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="grrl-launch",
        usage="grrl-launch [options] FILE | PACKAGE FILE [name:=value ...]",
        description="Run a ROS 2 XML launch file (the same files `ros2 launch` runs) on a "
                    "pip-only ROS 2 install: each node in its own process.",
        epilog="examples:\n  grrl-launch launch/sim.launch.xml episodes:=3\n"
               "  grrl-launch grrl_trainer sim.launch.xml --print",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("target", nargs="+", metavar="ARG",
                        help="launch file (or package and file name), then name:=value "
                             "launch arguments")
    parser.add_argument("--print", "-p", action="store_true",
                        help="print the resolved graph and exit without starting anything")
    parser.add_argument("--show-args", "-s", action="store_true",
                        help="print the launch file's arguments and exit")
    parser.add_argument("--log-dir", type=Path, help="where per-process logs go "
                        "(default: $ROS_HOME/log/grrl-launch/<time>)")
    parser.add_argument("--quiet", "-q", action="store_true", help="only warnings from the launcher")
    args = parser.parse_intermixed_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="[grrl-launch] %(levelname)s: %(message)s")
    positional = [t for t in args.target if ":=" not in t]
    try:
        overrides = parse_cli_overrides([t for t in args.target if ":=" in t])
        file = resolve_file(positional)
        if args.show_args:
            # Resolve with defaults only to list the declared arguments.
            desc = load_launch_file(file, overrides)
            for name, (default, help_) in desc.arguments.items():
                print(f"'{name}': {help_}\n    (default: {default!r})" if default is not None
                      else f"'{name}': {help_}\n    (required)")
            return 0
        desc = load_launch_file(file, overrides)
    except LaunchError as exc:
        LOG.error("%s", exc)
        return 2
    if args.print:
        print(describe(desc))
        return 0
    if not desc.processes:
        LOG.error("%s starts no processes", desc.file)
        return 2
    return Launcher(desc, log_dir=args.log_dir).run()


if __name__ == "__main__":
    sys.exit(main())
