"""``ctxembed serve``: its flags are generated from ``ServerSettings`` and ``ProcessSettings``.

A setting is one field there; its flag, environment variable and help follow (``flags.py``).
"""

from __future__ import annotations

import argparse
import sys

from ctxembed.cli.flags import Binding, add_flags, build
from ctxembed.service.settings import ProcessSettings, ServerSettings


def add_serve(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "serve",
        help="serve a model folder over gRPC",
        description="Serve a model folder over gRPC. Every flag can also be set by the"
        " environment variable in brackets; a flag given here wins over it.",
    )
    server = add_flags(p, ServerSettings())
    process = add_flags(p, ProcessSettings())
    p.set_defaults(bindings=(server, process))


def settings_from(args: argparse.Namespace) -> tuple[ServerSettings, ProcessSettings]:
    """The settings the parsed flags (and environment variables) describe."""
    server: list[Binding]
    process: list[Binding]
    server, process = args.bindings
    return build(ServerSettings(), args, server), build(ProcessSettings(), args, process)


def run_serve(args: argparse.Namespace) -> int:
    from ctxembed.service import event_loop, logs
    from ctxembed.service.server import serve

    settings, process = settings_from(args)
    logs.configure(process.log_level, process.log_format)
    try:
        if process.workers > 1:
            from ctxembed.service.workers import Supervisor

            event_loop.resolve(process.event_loop)
            return Supervisor(settings, process.workers, process.event_loop).run()
        return event_loop.run(serve(settings), process.event_loop)
    except event_loop.EventLoopUnavailable as exc:
        print(f"ctxembed serve: {exc}", file=sys.stderr)
        return 2
