"""``ctxembed serve``: its flags are generated from ``ServerSettings`` and ``ProcessSettings``.

A setting is one field there; its flag, environment variable and help follow (``flags.py``).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace

from ctxembed.cli.flags import FALSE, TRUE, Binding, add_flags, build, value_parser
from ctxembed.service.settings import ModelSetting, ProcessSettings, ServerSettings


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
    settings = build(ServerSettings(), args, server)
    typed = tuple(_typed(item, server) for item in settings.model_settings)
    return replace(settings, model_settings=typed), build(ProcessSettings(), args, process)


PER_MODEL = ("engine", "batcher")  # the settings a --model-setting may set


def _typed(item: ModelSetting, bindings: list[Binding]) -> ModelSetting:
    """``item`` with its value converted, and checked, by the setting's own flag."""
    known = {b.path[-1]: b for b in bindings if b.path[0] in PER_MODEL}
    binding = known.get(item.setting)
    if binding is None:
        raise argparse.ArgumentTypeError(
            f"--model-setting {item.model}.{item.setting}: not a per-model setting; those are"
            f" {', '.join(sorted(known))}"
        )
    text = str(item.value)
    try:
        if binding.flag.kind in ("switch", "toggle"):
            if text.strip().lower() not in TRUE | FALSE:
                raise ValueError(f"expected true or false, got {text!r}")
            value: object = text.strip().lower() in TRUE
        else:
            value = value_parser(binding.flag)(text)
    except (argparse.ArgumentTypeError, ValueError) as exc:
        raise argparse.ArgumentTypeError(
            f"--model-setting {item.model}.{item.setting}: {exc}"
        ) from None
    if binding.flag.to_setting is not None:
        value = binding.flag.to_setting(value)
    return replace(item, value=value, path=binding.path)


def run_serve(args: argparse.Namespace) -> int:
    from ctxembed.service import event_loop, logs
    from ctxembed.service.server import serve

    try:
        settings, process = settings_from(args)
    except argparse.ArgumentTypeError as exc:
        print(f"ctxembed serve: {exc}", file=sys.stderr)
        return 2
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
