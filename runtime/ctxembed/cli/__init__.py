"""The ``ctxembed`` command: export, serve, embed, embed-file, info, health.

Subcommands import what they need when they run, so ``ctxembed serve`` works on a runtime-only
install and ``ctxembed export`` says which extra is missing instead of failing with a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ctxembed.cli.client import (
    add_client_commands,
    run_embed,
    run_embed_file,
    run_health,
    run_info,
)
from ctxembed.cli.export import add_export, conflicting_int8_flags, run_export
from ctxembed.cli.serve import add_serve, run_serve
from ctxembed.runtime.errors import CtxembedError

HANDLERS = {
    "export": run_export,
    "serve": run_serve,
    "embed": run_embed,
    "info": run_info,
    "health": run_health,
    "embed-file": run_embed_file,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ctxembed", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    add_export(sub)
    add_serve(sub)
    add_client_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "env_errors", None):
        parser.error("; ".join(args.env_errors))
    if args.command == "export" and conflicting_int8_flags(args):
        parser.error("--int8-activations is shorthand for --int8-scheme: give one of them")
    if args.command == "serve" and (args.tls_cert is None) != (args.tls_key is None):
        parser.error("--tls-cert and --tls-key go together: give both, or neither for plaintext")
    try:
        return HANDLERS[args.command](args)
    except (CtxembedError, OSError) as exc:  # expected failures: one line, no traceback
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
