"""Command-line entry points; the only module that calls ``sys.exit``.

* ``quictun-server`` / ``quictun-client``: quic-tun's commands with quic-tun's flags and
  meanings, so its README quickstart runs unchanged.  Where quic-tun's default is insecure
  (client not verifying the server, server reaching any destination) the behaviour is kept for
  these commands only, with a WARNING saying how to turn the protection on.
* ``quictund``: the daemon's own command (``run`` and friends); its command line is defined
  in ``cli_parser.py`` (also read by packaging/deb/mkman.py for the man page).

Exit codes: 0 ok, 78 (EX_CONFIG) for a bad configuration, 2 for bad usage.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import resource
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import ValidationError

from quictund import allocator, memory
from quictund._tasks import spawn
from quictund.cli import inspect_cli, reload_cli
from quictund.cli.cli_parser import build_parser
from quictund.config import files as config_files
from quictund.config.compat import client_parser, compat_config, server_parser
from quictund.config.files import Config
from quictund.errors import ConfigError
from quictund.logs import setup_logging

if TYPE_CHECKING:
    from quictund.quic.steering import SharedSockets

EX_CONFIG = 78
logger = logging.getLogger("quictund")


def _run_compat(role: str, argv: Sequence[str] | None) -> int:
    parser = server_parser() if role == "server" else client_parser()
    args = parser.parse_args(argv)
    chosen = _allocator(parser.prog)
    if chosen is None:
        return EX_CONFIG
    try:
        setup_logging(args.log_level, args.log_format)
        config = compat_config(role, args)
        return _serve(config, loader=None, open_by_default=True, note=chosen)
    except ValidationError as exc:
        for err in exc.errors():
            loc = ".".join(str(x) for x in err["loc"])
            msg = str(err["msg"]).removeprefix("Value error, ")
            got = "" if "(got " in msg else f" (got {err.get('input')!r})"
            print(f"{parser.prog}: --{loc}: {msg}{got}", file=sys.stderr)
        return EX_CONFIG
    except ConfigError as exc:
        print(f"{parser.prog}: {exc}", file=sys.stderr)
        return EX_CONFIG


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    """uvloop, or asyncio's own loop when ``QUICTUND_EVENT_LOOP=asyncio``: the two loops
    report socket errors differently (docs/design.md, "Datagram I/O"), so the tests run the
    daemon's error paths on both."""
    if os.environ.get("QUICTUND_EVENT_LOOP") == "asyncio":
        return asyncio.new_event_loop
    import uvloop

    return uvloop.new_event_loop


def _serve(
    config: Config,
    *,
    loader: Callable[[], Config] | None,
    open_by_default: bool,
    worker: tuple[int, int] | None = None,
    worker_api: str | None = None,
    shared: SharedSockets | None = None,
    note: allocator.Plan | None = None,
) -> int:
    from quictund.daemon.daemon import Daemon

    _raise_fd_limit()

    async def main() -> None:
        daemon = Daemon(
            config,
            loader=loader,
            open_by_default=open_by_default,
            worker=worker,
            worker_api=worker_api,
            shared=shared,
        )
        told = spawn(_tell_when_ready(daemon.ready, note), name="when-ready")
        try:
            await daemon.run()
        finally:
            told.cancel()

    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        try:
            runner.run(main())
        except KeyboardInterrupt:
            return 130
        except BaseExceptionGroup as group:
            # A listener that cannot bind fails inside the daemon's TaskGroup.
            raise _first_config_error(group) from None
    logger.info("stopped")
    return 0


def _raise_fd_limit() -> None:
    """Each tunnel holds a socket: take the whole hard RLIMIT_NOFILE, as daemons do."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _first_config_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    match: BaseException | None = group.subgroup(ConfigError)
    while isinstance(match, BaseExceptionGroup):
        match = match.exceptions[0]
    return match if match is not None else group


def server_main(argv: Sequence[str] | None = None) -> None:
    sys.exit(_run_compat("server", argv))


def client_main(argv: Sequence[str] | None = None) -> None:
    sys.exit(_run_compat("client", argv))


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if argv and argv[0] in ("server", "client"):
        sys.exit(_run_compat(argv[0], argv[1:]))
    if argv and argv[0] == "convert":
        sys.exit(_convert(argv[1:]))
    args = parser.parse_args(argv)
    if args.command == "demo":
        sys.exit(_demo(args))
    commands = {
        "run": _run,
        "check": _check,
        "dump-config": _dump,
        "fingerprint": _fingerprint,
        "token": _token,
        "tunnels": inspect_cli.tunnels,
        "status": inspect_cli.status,
        "reload": reload_cli.reload,
    }
    sys.exit(commands[args.command](args))


def _load(args: argparse.Namespace) -> Config:
    dirs = [*args.config_dir, *(d for d in args.drop_in_dir if Path(d).is_dir())]
    config = config_files.load(config_files.find_files(args.config, dirs))
    if getattr(args, "api_socket", None):
        config.api = config.api.model_copy(update={"socket": args.api_socket})
    if getattr(args, "api_group", None) and config.api.group is None:
        config.api = config.api.model_copy(update={"group": args.api_group})
    return config


def _report(exc: ConfigError) -> int:
    lines = exc.lines if isinstance(exc, config_files.ConfigProblems) else [str(exc)]
    for line in lines:
        print(line, file=sys.stderr)
    return EX_CONFIG


def _allocator(prog: str) -> allocator.Plan | None:
    """Re-execute on jemalloc (quictund/allocator.py) before anything else is set up."""
    try:
        return allocator.ensure()
    except ValueError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return None


async def _tell_when_ready(ready: asyncio.Event, note: allocator.Plan | None) -> None:
    """Once the daemon is up: settle the cyclic collector (``memory.settle_collector``) and
    say which allocator runs (after the start, so that a configuration error stays the one
    line it is)."""
    await ready.wait()
    memory.settle_collector()
    if note is not None and note.message:
        getattr(logger, note.level)("%s", note.message)


def _run(args: argparse.Namespace) -> int:
    chosen = _allocator("quictund")
    if chosen is None:
        return EX_CONFIG
    try:
        config = _load(args)
        setup_logging(config.log.level, config.log.format)
        if args.worker:
            from quictund.quic.steering import SharedSockets

            index, _, count = args.worker.partition("/")
            slot = (int(index), int(count))
            return _serve(
                config,
                loader=lambda: _load(args),
                open_by_default=False,
                worker=slot,
                worker_api=args.worker_api,
                shared=SharedSockets(SharedSockets.parse(args.udp_socket), *slot),
                note=chosen,
            )
        workers = args.workers or config.daemon.workers
        if workers > 1:
            return _supervise(config, args, workers)
        return _serve(config, loader=lambda: _load(args), open_by_default=False, note=chosen)
    except ConfigError as exc:
        return _report(exc)


def _supervise(config: Config, args: argparse.Namespace, count: int) -> int:
    """Run ``count`` worker processes under one supervisor (quictund/daemon/workers.py)."""
    from quictund.daemon.daemon import Daemon
    from quictund.daemon.workers import Supervisor, check_workers

    check_workers(config, count)
    Daemon(config, dry_run=True)  # refuse a bad configuration before starting anything
    run_args = [x for f in args.config for x in ("--config", f)]
    run_args += [x for d in args.config_dir for x in ("--config-dir", d)]
    run_args += [x for d in args.drop_in_dir for x in ("--drop-in-dir", d)]
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        try:
            code = runner.run(Supervisor(config, run_args, count).run())
        except KeyboardInterrupt:
            return 130
    logger.info("stopped")
    return code


def _check(args: argparse.Namespace) -> int:
    from quictund.daemon.daemon import Daemon

    try:
        config = _load(args)
    except config_files.ConfigProblems as exc:
        lines = list(exc.lines)
        if exc.partial is not None:  # also check what did validate (plugins, certificates)
            try:
                Daemon(exc.partial, dry_run=True)
            except config_files.ConfigProblems as more:
                lines.extend(more.lines)
        return _report(config_files.ConfigProblems(lines))
    try:
        Daemon(config, dry_run=True)
    except ConfigError as exc:
        return _report(exc)
    problems, warnings = _group_lines(config)
    if problems:
        return _report(config_files.ConfigProblems(problems))
    for line in warnings:
        print(line, file=sys.stderr)
    names = ", ".join(config.origins) or "no listeners"
    print(f"ok: {len(config.files)} file(s), {names}")
    return 0


def _group_lines(config: Config) -> tuple[list[str], list[str]]:
    """Groups that sockets are handed to: (problems, warnings), one line each."""
    from quictund.tunnel.groups import gid_of, membership_warning

    wanted: list[tuple[str, str]] = []
    if config.api.group:
        wanted.append((config.api.group, "[api] group"))
    wanted += [
        (c.unix_socket_group, f"{config.origins[c.name]}.unix-socket-group")
        for c in config.clients
        if c.unix_socket_group
    ]
    problems, warnings = [], []
    for group, what in wanted:
        try:
            gid_of(group, what)
        except ConfigError as exc:
            problems.append(str(exc))
            continue
        warning = membership_warning(group, what)
        if warning:
            warnings.append(warning)
    return problems, warnings


def _dump(args: argparse.Namespace) -> int:
    try:
        print(config_files.dump(_load(args)), end="")
    except ConfigError as exc:
        return _report(exc)
    return 0


def _token(args: argparse.Namespace) -> int:
    import time

    from quictund.policy.addresses import parse_stream_address
    from quictund.tokens.signed import read_secret, sign

    try:
        parse_stream_address(args.destination)
        secret = read_secret(args.secret_file)
        print(
            sign(
                args.destination,
                secret=secret,
                audience=args.audience,
                expires_at=int(time.time() + args.ttl),
            )
        )
    except (ValueError, ConfigError) as exc:
        print(f"quictund token sign: {exc}", file=sys.stderr)
        return EX_CONFIG
    return 0


def _fingerprint(args: argparse.Namespace) -> int:
    from quictund.policy.tls import fingerprint_file

    try:
        print(fingerprint_file(args.file))
    except (OSError, ValueError, ConfigError) as exc:
        print(f"quictund fingerprint: {args.file}: {exc}", file=sys.stderr)
        return EX_CONFIG
    return 0


def _convert(argv: list[str]) -> int:
    if argv and argv[0] == "--":
        argv = argv[1:]
    commands = {
        "quictun-client": "client",
        "quictun-server": "server",
        "client": "client",
        "server": "server",
    }
    if not argv or argv[0].rsplit("/", 1)[-1] not in commands:
        print(
            "usage: quictund convert -- quictun-client|quictun-server [flags...]", file=sys.stderr
        )
        return 2
    role = commands[argv[0].rsplit("/", 1)[-1]]
    parser = server_parser() if role == "server" else client_parser()
    args = parser.parse_args(argv[1:])
    try:
        config = compat_config(role, args)
    except ValidationError as exc:
        for line in config_files.validation_lines(exc):
            print(f"{parser.prog}: {line}", file=sys.stderr)
        return EX_CONFIG
    if role == "server" and not args.allow:
        config.servers = [config.servers[0].model_copy(update={"allow": ["*"]})]
    print(config_files.dump(config, minimal=True), end="")
    return 0


def _demo(args: argparse.Namespace) -> int:
    import tempfile

    from quictund.cli.demo import run_demo

    setup_logging("info", "console")
    if args.state_dir is None:  # nothing left behind, even as root (no /var/lib/quictund)
        with tempfile.TemporaryDirectory(prefix="quictund-demo-") as tmp:
            args.state_dir = tmp
            return _demo(args)
    state = Path(args.state_dir)
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        try:
            ok = runner.run(
                run_demo(
                    client_port=args.client_port,
                    server_port=args.server_port,
                    state_dir=state,
                    once=args.once,
                )
            )
        except KeyboardInterrupt:
            return 0
        except ConfigError as exc:
            print(f"quictund demo: {exc}", file=sys.stderr)
            return EX_CONFIG
    return 0 if ok else 1
