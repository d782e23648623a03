"""Flags and environment variables generated from the settings dataclasses (``runtime/flag.py``).

Every flag can also come from ``CTXEMBED_<FLAG>`` (``--max-queue`` from ``CTXEMBED_MAX_QUEUE``),
the way containers and Kubernetes manifests configure servers; a flag given on the command line
wins over the variable. ``--help`` names each variable.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Iterator
from dataclasses import Field, dataclass, fields, is_dataclass, replace
from typing import Any, TypeVar

from ctxembed.runtime.flag import FLAG, Flag

T = TypeVar("T")
ENV_PREFIX = "CTXEMBED_"
TRUE, FALSE = frozenset({"1", "true", "yes", "on"}), frozenset({"0", "false", "no", "off", ""})


class EnvValue(str):
    """A default read from the environment: errors name the variable, not the flag."""

    variable: str


@dataclass(frozen=True)
class Binding:
    """One generated flag: the settings field it sets (a path of field names) and how."""

    path: tuple[str, ...]
    dest: str
    option: str
    env: str
    flag: Flag


def env_name(option: str) -> str:
    return ENV_PREFIX + option.lstrip("-").upper().replace("-", "_")


def at_least(
    low: float, high: float | None = None, *, integer: bool = True
) -> Callable[[str], float]:
    """An argparse type: a number in [low, high]; argparse names the flag in the error."""

    def parse(text: str) -> float:
        try:
            value = int(text) if integer else float(text)
        except ValueError:
            kind = "an integer" if integer else "a number"
            raise argparse.ArgumentTypeError(f"expected {kind}, got {text!r}") from None
        if not low <= value <= (high if high is not None else value):
            bound = f"between {low} and {high}" if high is not None else f"at least {low}"
            raise argparse.ArgumentTypeError(f"must be {bound}, got {text}")
        return value

    return parse


def _env_value(text: str, variable: str) -> EnvValue:
    value = EnvValue(text)
    value.variable = variable
    return value


Walked = tuple[tuple[str, ...], Field[Any], Any]


def _walk(obj: Any, prefix: tuple[str, ...] = ()) -> Iterator[Walked]:
    """(path, field, current value) of every flagged field, nested settings walked."""
    for f in fields(obj):
        value = getattr(obj, f.name)
        if FLAG in f.metadata:
            yield (*prefix, f.name), f, value
        elif is_dataclass(value) and not isinstance(value, type):
            yield from _walk(value, (*prefix, f.name))


def value_parser(meta: Flag) -> Callable[[str], Any]:
    parse: Callable[[str], Any]
    if meta.minimum is not None or meta.maximum is not None:
        parse = at_least(meta.minimum or 0, meta.maximum, integer=meta.type is not float)
    else:
        parse = meta.type or str

    def convert(text: str) -> Any:
        try:
            value: Any = parse(text)
        except (argparse.ArgumentTypeError, ValueError) as exc:
            if isinstance(text, EnvValue):
                raise argparse.ArgumentTypeError(f"from ${text.variable}: {exc}") from None
            if meta.kind == "append":  # the parsers of repeatable flags explain their errors
                raise argparse.ArgumentTypeError(str(exc)) from None
            raise
        if isinstance(text, EnvValue) and meta.choices and value not in meta.choices:
            raise argparse.ArgumentTypeError(
                f"from ${text.variable}: {value!r} is not one of {', '.join(meta.choices)}"
            )
        return value

    convert.__name__ = getattr(parse, "__name__", "value")  # argparse's "invalid <name> value"
    return convert


def add_flags(parser: argparse.ArgumentParser, root: Any) -> list[Binding]:
    """Add a flag for every flagged field of ``root`` (defaults: its values); returns how each
    maps back. Errors in boolean variables are kept in ``parser``'s ``env_errors`` default."""
    bindings = []
    errors: list[str] = list(parser.get_default("env_errors") or [])
    for path, f, value in _walk(root):
        meta: Flag = f.metadata[FLAG]
        option = meta.name or "--" + f.name.replace("_", "-")
        env = env_name(option)
        dest = "__".join(path)
        default = meta.from_setting(value) if meta.from_setting else value
        shown = meta.default_text or ("" if default is None else str(default))
        text = meta.help + (f" (default: {shown})" if shown and meta.kind == "value" else "")
        raw = os.environ.get(env)
        kwargs: dict[str, Any] = {"dest": dest, "help": f"{text} [env: {env}]"}
        if meta.kind == "append":
            # Given flags replace the variable's list (argparse would append to a default).
            items = tuple(value)
            if raw is not None:
                parse = value_parser(meta)
                try:
                    items = tuple(parse(_env_value(item.strip(), env)) for item in raw.split(","))
                except argparse.ArgumentTypeError as exc:
                    errors.append(str(exc))
            parser.set_defaults(**{f"{dest}__default": items})
            parser.add_argument(
                option,
                action="append",
                type=value_parser(meta),
                metavar=option.lstrip("-").upper().replace("-", "_"),
                default=None,
                **kwargs,
            )
        elif meta.kind in ("switch", "toggle"):
            if raw is not None:
                if raw.strip().lower() not in TRUE | FALSE:
                    errors.append(f"${env}={raw!r}: expected true or false")
                default = raw.strip().lower() in TRUE
            action = "store_true" if meta.kind == "switch" else argparse.BooleanOptionalAction
            parser.add_argument(option, action=action, default=default, **kwargs)
        else:
            if raw is not None:
                default = _env_value(raw, env)
            parser.add_argument(
                option,
                type=value_parser(meta),
                metavar=None if meta.choices else option.lstrip("-").upper().replace("-", "_"),
                choices=meta.choices,
                default=default,
                required=meta.required and raw is None,
                **kwargs,
            )
        bindings.append(Binding(path, dest, option, env, meta))
    parser.set_defaults(env_errors=errors)
    return bindings


def build(root: T, args: argparse.Namespace, bindings: list[Binding]) -> T:
    """``root`` with every bound field set from the parsed arguments."""
    values = {}
    for b in bindings:
        value = getattr(args, b.dest)
        if b.flag.kind == "append":
            value = tuple(value) if value is not None else getattr(args, f"{b.dest}__default")
        values[b.path] = b.flag.to_setting(value) if b.flag.to_setting else value
    return _rebuild(root, (), values)


def _rebuild(obj: T, prefix: tuple[str, ...], values: dict[tuple[str, ...], Any]) -> T:
    changes = {}
    for f in fields(obj):  # type: ignore[arg-type]
        path = (*prefix, f.name)
        current = getattr(obj, f.name)
        if path in values:
            changes[f.name] = values[path]
        elif is_dataclass(current) and not isinstance(current, type):
            changes[f.name] = _rebuild(current, path, values)
    return replace(obj, **changes)  # type: ignore[type-var]
