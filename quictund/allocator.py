"""Run the daemon on jemalloc, so memory a hostile peer made it allocate goes back after.

Issue 13 asks that a server pushed up by hostile connections returns within 10 % of its
baseline once they left.  Under CPython's own small-object allocator (pymalloc) it could not:
every object of those connections is freed, but pymalloc returns a 1 MiB arena only when it
is completely empty, and a few long-lived objects made during the attack (library freelists,
counters, cached names) pin ~20 of them: 140 % of the baseline, whatever the daemon frees
(docs/security.md, "Why memory stays").  With ``PYTHONMALLOC=malloc`` every object comes from
the C allocator, where a live object pins one page, not an arena; glibc's malloc is 3-10 %
slower per packet, jemalloc is as fast as pymalloc (``bench/engine_cpu.py``) and, with a
background thread purging freed pages after a second, gives them back without any call from
us: 103-107 % in the ``hostile`` bench.

The allocator is chosen when the interpreter starts, so the daemon re-executes itself (same
PID, so systemd's MAINPID and sd_notify are unaffected) with ``PYTHONMALLOC=malloc`` and
libjemalloc in ``LD_PRELOAD``.  Python's ``-I`` (the Debian wrappers' isolation) would ignore
``PYTHONMALLOC``: it becomes ``-s -P`` and every other ``PYTHON*`` variable is dropped, which
keeps what ``-I`` protects against (without ``-I`` or ``-E`` the environment is kept as is).
``QUICTUND_ALLOCATOR=pymalloc`` keeps CPython's allocator, with a WARNING.  Without
libjemalloc2 the daemon runs on pymalloc and says how to fix that.

:func:`plan` is the whole decision, pure; :func:`ensure` does what it says.
"""

from __future__ import annotations

import ctypes
import glob
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import cast

ENV = "QUICTUND_ALLOCATOR"
CHOICES = ("jemalloc", "pymalloc")
_MARK = "QUICTUND_ALLOCATOR_EXEC"  # set for the re-executed process: never loop
# Purge freed pages after 1 s, in jemalloc's own thread (the daemon may stay idle for hours
# after an attack, and an idle process makes no calls that would purge them).
MALLOC_CONF = "background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0"
_LIBRARY_GLOBS = (
    "/usr/lib/*-linux-gnu*/libjemalloc.so.2",
    "/usr/lib64/libjemalloc.so.2",
    "/usr/lib/libjemalloc.so.2",
    "/usr/local/lib/libjemalloc.so.2",
)


@dataclass(frozen=True)
class Plan:
    """What to do: exec ``argv`` with ``env``, or go on and log ``message`` at ``level``."""

    argv: list[str] | None = None
    env: dict[str, str] = field(default_factory=dict)
    level: str = "info"
    message: str = ""


def find_jemalloc() -> str | None:
    for pattern in _LIBRARY_GLOBS:
        for path in sorted(glob.glob(pattern)):
            if os.path.isfile(path):
                return path
    return None


def plan(
    environ: Mapping[str, str],
    orig_argv: Sequence[str],
    *,
    library: str | None,
    jemalloc_mapped: bool,
    pymalloc: bool,
) -> Plan:
    """Decide from the environment, the interpreter's command line and what is loaded."""
    choice = environ.get(ENV, "jemalloc") or "jemalloc"
    if choice not in CHOICES:
        raise ValueError(
            f"{ENV}={choice!r}: unknown allocator; use jemalloc (the default) or pymalloc"
        )
    if choice == "pymalloc":
        return Plan(
            level="warning",
            message=f"{ENV}=pymalloc: CPython's own allocator; memory that hostile "
            "connections made the daemon allocate is not all returned after they leave "
            "(~140 % of the baseline instead of ~105 %; docs/security.md)",
        )
    if jemalloc_mapped and not pymalloc:
        return Plan(message=f"allocator: jemalloc ({environ.get('MALLOC_CONF', 'defaults')})")
    if library is None:
        return Plan(
            level="warning",
            message="libjemalloc2 not found: running on CPython's allocator, which keeps "
            "memory after hostile connections leave; install it (apt install libjemalloc2), "
            f"or set {ENV}=pymalloc to say this is intended",
        )
    if environ.get(_MARK):
        return Plan(
            level="warning",
            message=f"could not start on jemalloc ({library}): still on CPython's allocator; "
            f"check LD_PRELOAD and PYTHONMALLOC, or set {ENV}=pymalloc",
        )
    argv = _without_isolation(orig_argv)
    env = dict(environ)
    if argv != list(orig_argv):  # -I or -E: the variables it ignored must stay ignored
        env = {k: v for k, v in environ.items() if not k.startswith("PYTHON")}
    env["PYTHONMALLOC"] = "malloc"
    preload = environ.get("LD_PRELOAD", "")
    env["LD_PRELOAD"] = f"{library} {preload}".strip() if library not in preload else preload
    env.setdefault("MALLOC_CONF", MALLOC_CONF)
    env[_MARK] = "1"
    return Plan(argv=argv, env=env)


def _without_isolation(orig_argv: Sequence[str]) -> list[str]:
    """The interpreter's command line with ``-I``/``-E`` replaced by what keeps isolation but
    lets ``PYTHONMALLOC`` through (``-I`` is ``-E -s -P``; the environment is scrubbed)."""
    out = [orig_argv[0]]
    rest = list(orig_argv[1:])
    while rest:
        arg = rest.pop(0)
        if arg in ("-c", "-m") or not arg.startswith("-") or arg in ("-", "--"):
            out += [arg, *rest]
            break
        if arg in ("-X", "-W") or arg[1:2] in ("X", "W"):
            out.append(arg)
            if arg in ("-X", "-W") and rest:
                out.append(rest.pop(0))
            continue
        letters, last = arg[1:], ""
        for i, letter in enumerate(letters):
            if letter in "cm":  # "-Im quictund": what follows -c/-m is its argument
                letters, last = letters[:i], letters[i:]
                break
        isolated = "I" in letters
        letters = letters.replace("I", "").replace("E", "")
        if isolated:
            letters += "".join(x for x in "sP" if x not in letters)
        if letters:
            out.append("-" + letters)
        if last:
            out += ["-" + last, *rest]
            break
    return out


def _jemalloc_mapped() -> bool:
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            return any("libjemalloc" in line for line in maps)
    except OSError:
        return False


def ensure() -> Plan:
    """Re-execute on jemalloc if needed (does not return then); otherwise the plan to log."""
    decided = plan(
        os.environ,
        sys.orig_argv,
        library=find_jemalloc(),
        jemalloc_mapped=_jemalloc_mapped(),
        pymalloc=sys.getallocatedblocks() > 0,  # 0 when every object comes from malloc
    )
    if decided.argv is not None:
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(sys.executable, decided.argv, decided.env)
    return decided


def _load_purge() -> Callable[..., int] | None:
    try:
        mallctl = ctypes.CDLL(None).mallctl  # only there when jemalloc is loaded
    except (OSError, AttributeError):
        return None
    mallctl.argtypes = [ctypes.c_char_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                        ctypes.c_size_t]  # fmt: skip
    mallctl.restype = ctypes.c_int
    return cast(Callable[..., int], mallctl)


_mallctl = _load_purge()


def purge() -> bool:
    """Give jemalloc's freed pages back now (every arena: ``MALLCTL_ARENAS_ALL`` is 4096)."""
    if _mallctl is None:
        return False
    return int(_mallctl(b"arena.4096.purge", None, None, None, 0)) == 0
