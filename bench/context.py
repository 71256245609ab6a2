"""The scenario contract: ``Row`` (one measured number) and ``BenchContext`` (what a scenario
gets), plus ``Procs``, the registry that guarantees every child process is stopped.

A scenario is a module ``bench/scenarios/<name>.py`` with ``def run(ctx) -> list[Row]``.  It
starts what it needs through ``ctx`` (paths, the load app, load clients), so everything it
starts is registered in ``ctx.procs`` and stopped even when the scenario raises or the run is
interrupted.  See bench/README.md.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

from topology import LOOPBACK, Topology

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
NOFILE = 200_000  # 10,000 idle tunnels need two sockets per tunnel in some daemons


@dataclass
class Row:
    """One measured number: ``value`` of ``metric`` in ``unit`` for ``path`` in ``scenario``.

    ``path`` names what carried the traffic: "direct", "stunnel", "ssh", "quictund",
    "quictund-qh3", "tcp-cubic", "tcp-bbr", ...  ``extra`` holds anything else worth keeping
    (all repetitions, the side a CPU figure belongs to, the link's loss rate, ...).
    ``value`` is None when the measurement failed; ``extra["error"]`` then says why.
    """

    scenario: str
    path: str
    metric: str
    value: float | None
    unit: str
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def netns_argv(ns: str | None, argv: Sequence[str]) -> list[str]:
    """``argv`` run inside network namespace ``ns`` (``ip netns exec`` execs, so the PID
    we get is the program's own)."""
    return ["ip", "netns", "exec", ns, *argv] if ns else list(argv)


def _child_setup() -> None:
    """In the child before exec: die with the bench (PR_SET_PDEATHSIG), no terminal signals
    (we stop it ourselves, in order), and enough file descriptors."""
    os.setsid()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    with contextlib.suppress(ValueError, OSError):
        import resource

        resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE, NOFILE))


def descendants(pid: int) -> list[int]:
    """PIDs of ``pid``'s children, grandchildren, ... (sshd forks one per session)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        parents.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


class Procs:
    """Every process the bench starts, stopped newest first by ``stop_all`` (and each with
    PR_SET_PDEATHSIG, so even a killed bench leaves nothing behind)."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.live: list[subprocess.Popen[bytes]] = []
        self._names: dict[int, str] = {}

    def spawn(
        self,
        name: str,
        argv: Sequence[str],
        *,
        ns: str | None = None,
        stdin: int | IO[Any] | None = subprocess.DEVNULL,
        stdout: int | IO[Any] | None = None,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start ``argv`` (in ``ns``); stderr (and stdout unless given) go to
        ``<log_dir>/<name>.log``."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_dir / f"{name}.log", "ab")  # the child keeps it open
        try:
            proc = subprocess.Popen(
                netns_argv(ns, argv),
                stdin=stdin,
                stdout=log if stdout is None else stdout,
                stderr=log,
                env=env,
                cwd=cwd,
                preexec_fn=_child_setup,  # the bench is single-threaded
            )
        finally:
            log.close()
        self.live.append(proc)
        self._names[proc.pid] = name
        return proc

    def log_path(self, name: str) -> Path:
        return self.log_dir / f"{name}.log"

    def stop(self, proc: subprocess.Popen[bytes], grace: float = 5.0) -> None:
        """SIGTERM ``proc`` and its descendants, SIGKILL what is left after ``grace``."""
        if proc in self.live:
            self.live.remove(proc)
        if proc.poll() is not None:
            return
        family = [proc.pid, *descendants(proc.pid)]
        for pid in family:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            pass
        for pid in family:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(grace)

    def stop_all(self) -> None:
        for proc in reversed(list(self.live)):
            self.stop(proc, grace=3.0)

    @contextlib.contextmanager
    def scope(self) -> Iterator[None]:
        """Stop whatever was started inside the ``with`` block when it ends."""
        before = set(map(id, self.live))
        try:
            yield
        finally:
            for proc in reversed([p for p in self.live if id(p) not in before]):
                self.stop(proc)


# -- process statistics ------------------------------------------------------------------

_TCK = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and its live descendants (0 if gone)."""
    total = 0.0
    for p in (pid, *descendants(pid)):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / _TCK
    return total


def rss_kib(pid: int) -> int:
    """Resident memory of ``pid`` and its live descendants, in KiB."""
    total = 0
    for p in (pid, *descendants(pid)):
        try:
            text = Path(f"/proc/{p}/status").read_text()
        except OSError:
            continue
        for line in text.splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total


# -- the load tool (bench/load.py) ---------------------------------------------------------


@dataclass
class App:
    """The target application (bench/load.py serve): sink, source and echo on one port."""

    proc: subprocess.Popen[bytes]
    host: str
    port: int


@dataclass
class BenchContext:
    """What every scenario gets.

    ``paths`` are the path names to compare, in table order (``direct``, ``stunnel``,
    ``ssh``, each quictund variant, ``quictun-go`` when ``QUICTUN_BIN`` is set);
    ``variants`` maps each quictund variant name to its extra TOML lines.  ``topo`` says
    where the client side and the server side run (bench/topology.py): ``spec``,
    ``start_app`` and ``load`` place their processes by it unless told otherwise, so a
    scenario written against them runs unchanged on loopback and on the veth pair.
    """

    quick: bool
    duration: float
    reps: int
    out_dir: Path
    procs: Procs
    paths: list[str]
    variants: dict[str, list[str]]
    python: str = sys.executable
    scale: float = 1.0  # multiplies request counts (the smoke test uses a small one)
    sources: dict[str, Path] = field(default_factory=dict)  # variant -> its quictund tree
    topo: Topology = LOOPBACK
    _factory: Any = None

    def log(self, msg: str) -> None:
        print(f"  [{time.strftime('%H:%M:%S')}] {msg}", flush=True)

    def workdir(self, name: str) -> Path:
        d = self.out_dir / name
        d.mkdir(parents=True, exist_ok=True)
        return d

    def start_path(self, name: str, spec: Any) -> Any:
        """Start path ``name`` (see bench/paths.py) for ``spec`` (a ``paths.PathSpec``);
        returns a ``paths.RunningPath``, stopped with ``ctx.stop_path`` or at scope end."""
        from paths import PathFactory

        if self._factory is None:
            self._factory = PathFactory(
                self.procs, self.out_dir, self.python, self.variants, self.sources
            )
        return self._factory.start(name, spec)

    def start_paths(self, scenario: str, spec: Any) -> tuple[dict[str, Any], list[Row]]:
        """Start every path of ``self.paths`` for ``spec``; a path that fails to start gives
        an error row instead (the others still run)."""
        running: dict[str, Any] = {}
        errors: list[Row] = []
        for name in self.paths:
            try:
                running[name] = self.start_path(name, spec)
            except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
                self.log(f"{name}: could not start: {exc}")
                errors.append(Row(scenario, name, "start", None, "", {"error": str(exc)}))
        return running, errors

    def spec(self, target: tuple[str, int]) -> Any:
        """A ``paths.PathSpec`` to ``target`` across ``topo``: the app connects to a port on
        the client side's 127.0.0.1, the tunnel's server end listens on ``topo.server_ip``."""
        from paths import PathSpec

        t = self.topo
        return PathSpec(
            target, wire=(t.server_ip, 0), client_ns=t.client_ns, server_ns=t.server_ns
        )

    def stop_path(self, running: Any) -> None:
        for proc in reversed(running.procs):
            self.procs.stop(proc)

    def start_app(
        self, host: str | None = None, port: int = 0, ns: str | None = None,
        extra: Sequence[str] = (),
    ) -> App:  # fmt: skip
        """Start bench/load.py's target app (sink 'U', source 'D', echo 'E') and wait for it;
        by default on the server side of ``topo``."""
        if host is None:
            host, ns = self.topo.server_ip, ns or self.topo.server_ns
        proc = self.procs.spawn(
            f"app-{ns or 'root'}-{port}",
            [self.python, str(BENCH / "load.py"), "serve", "--host", host, "--port", str(port),
             *extra],  # fmt: skip
            ns=ns,
            stdout=subprocess.PIPE,
        )
        assert proc.stdout is not None
        line = proc.stdout.readline().decode().strip()
        if not line.isdigit():
            raise RuntimeError(f"load app did not start: {line!r}")
        return App(proc, host, int(line))

    def load(
        self, args: Sequence[str], *, ns: str | None = None, timeout: float = 600.0
    ) -> dict[str, Any]:
        """Run one bench/load.py client command and return the JSON it prints (in ``ns``, by
        default on the client side of ``topo``)."""
        proc = self.procs.spawn(
            "load-client",
            [self.python, str(BENCH / "load.py"), *args],
            ns=ns or self.topo.client_ns,
            stdout=subprocess.PIPE,
        )
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"load.py {' '.join(args)} took over {timeout} s") from None
        finally:
            self.procs.stop(proc)
        if proc.returncode != 0:
            raise RuntimeError(
                f"load.py {' '.join(args)} failed ({proc.returncode}); see "
                f"{self.procs.log_path('load-client')}"
            )
        result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
        return result
