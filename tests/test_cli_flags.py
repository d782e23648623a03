"""`ctxembed serve`'s flags come from the settings fields: every field has a flag and an
environment variable (or is declared internal), each reaches the settings the server gets, a
flag wins over its variable, and every flag name users and deploy files rely on still exists."""

from __future__ import annotations

import argparse
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any

import pytest

from ctxembed.cli import build_parser, main
from ctxembed.cli.flags import Binding, env_name
from ctxembed.cli.serve import settings_from
from ctxembed.service.settings import ModelSetting, NamedModel, ProcessSettings, ServerSettings

# Not flags, on purpose: set by the supervisor for its workers, or derived from another flag.
INTERNAL = {("metrics_shared",), ("reuse_port",), ("batcher", "max_response_bytes")}
# Every serve flag that existed before they were generated (deploy files and users use them).
KNOWN = [
    "--model-dir",
    "--host",
    "--port",
    "--provider",
    "--variant",
    "--threads",
    "--spinning",
    "--no-spinning",
    "--spin-after-run-us",
    "--parallel-runs",
    "--stride",
    "--max-batch-tokens",
    "--run-batch-tokens",
    "--cuda-graphs",
    "--max-padding",
    "--batch-int8-rows",
    "--max-wait-ms",
    "--max-queue",
    "--max-queued-tokens",
    "--grace",
    "--event-loop",
    "--max-inputs",
    "--max-chars",
    "--max-words",
    "--max-spans",
    "--max-tokens-per-request",
    "--tls-cert",
    "--tls-key",
    "--tls-client-ca",
    "--auth-token-file",
    "--open-reflection",
    "--health-port",
    "--metrics-port",
    "--metrics-host",
    "--workers",
    "--log-level",
    "--log-format",
    "--access-log",
]
# TLS files go in pairs (the settings refuse one alone)
COMPANIONS = {
    "--tls-cert": ["--tls-key", "/tmp/k"],
    "--tls-key": ["--tls-cert", "/tmp/c"],
    "--tls-client-ca": ["--tls-cert", "/tmp/c", "--tls-key", "/tmp/k"],
}


def _serve_parser() -> tuple[argparse.ArgumentParser, list[Binding]]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    serve = sub.choices["serve"]
    server, process = serve.get_default("bindings")
    return parser, [*server, *process]


def _leaf_paths(obj: Any, prefix: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    paths = set()
    for f in fields(obj):
        value = getattr(obj, f.name)
        if is_dataclass(value) and not isinstance(value, type):
            paths |= _leaf_paths(value, (*prefix, f.name))
        else:
            paths.add((*prefix, f.name))
    return paths


def _get(obj: Any, path: tuple[str, ...]) -> Any:
    for name in path:
        obj = getattr(obj, name)
    return obj


def _sample(b: Binding, default: Any) -> tuple[str, Any]:
    """A command-line value other than the default, and what the setting becomes."""
    meta = b.flag
    if b.option == "--model":
        return "small=/tmp/m", (NamedModel("small", Path("/tmp/m")),)
    if b.option == "--model-setting":
        return "small.max_queue=5", (
            ModelSetting("small", "max_queue", 5, ("batcher", "max_queue")),
        )
    if meta.kind == "toggle":
        return ("false", False) if default else ("true", True)
    if meta.kind == "switch":
        return "true", meta.to_setting(True) if meta.to_setting else True
    if meta.choices:
        choice = next(c for c in meta.choices if c != default)
        return choice, choice
    if meta.type is Path:
        return "/tmp/some-file", Path("/tmp/some-file")
    if meta.minimum is not None:
        value = int(meta.minimum) + 3 if meta.maximum is None else int(meta.maximum) - 1
        if value == default:
            value += 1
        return str(value), float(value) if meta.type is float else value
    return "example.internal", "example.internal"


def test_every_field_is_a_flag_or_declared_internal() -> None:
    _, bindings = _serve_parser()
    bound = {b.path for b in bindings}
    everything = _leaf_paths(ServerSettings()) | _leaf_paths(ProcessSettings())
    assert everything - bound == INTERNAL, "a new setting needs flag metadata (runtime/flag.py)"
    options = {b.option for b in bindings}
    assert {k for k in KNOWN if not k.startswith("--no-")} <= options
    assert len(options) == len(bindings), "two fields share a flag"


def test_each_flag_and_variable_reaches_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    _, bindings = _serve_parser()
    for b in bindings:
        of_process = hasattr(ProcessSettings(), b.path[0])
        root: Any = ProcessSettings() if of_process else ServerSettings()
        current = _get(root, b.path)
        text, expected = _sample(
            b, b.flag.from_setting(current) if b.flag.from_setting else current
        )
        assert expected != current, b.option  # the test changes something
        extra = [] if b.option in ("--model-dir", "--model") else ["--model-dir", "/models/x"]
        extra += COMPANIONS.get(b.option, [])
        as_flag = {"value": [b.option, text], "append": [b.option, text], "switch": [b.option]}.get(
            b.flag.kind, [b.option if text == "true" else "--no-" + b.option[2:]]
        )
        with monkeypatch.context() as env:
            for how, argv in (("flag", as_flag), ("variable", [])):
                if how == "variable":
                    env.setenv(b.env, text)
                server, process = settings_from(build_parser().parse_args(["serve", *extra, *argv]))
                got = _get(process if of_process else server, b.path)
                assert got == expected, (b.option, how)


def test_several_models_by_flag_and_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["serve", "--model", "a=/m/1", "--model", "b=/m/2", "--model-setting", "b.threads=1"]
    server, _ = settings_from(build_parser().parse_args(argv))
    assert server.models == (NamedModel("a", Path("/m/1")), NamedModel("b", Path("/m/2")))
    assert server.model_settings == (ModelSetting("b", "threads", 1, ("engine", "threads")),)
    argv = ["serve", "--model-setting", "b.max_inputs_per_request=8"]
    monkeypatch.setenv("CTXEMBED_MODEL", "a=/m/1, b=/m/2")
    server, _ = settings_from(build_parser().parse_args(argv))
    assert [m.name for m in server.models] == ["a", "b"]
    [limit] = server.model_settings
    assert limit.path == ("engine", "limits", "max_inputs_per_request") and limit.value == 8
    # a given flag replaces the variable's list
    server, _ = settings_from(build_parser().parse_args(["serve", "--model", "c=/m/3"]))
    assert [m.name for m in server.models] == ["c"]
    for bad, message in (
        (["--model-setting", "b.colour=red"], "not a per-model setting"),
        (["--model-setting", "b.threads=zero"], "b.threads: expected an integer"),
    ):
        assert main([*argv[:1], *bad]) == 2
        assert message in capsys.readouterr().err
    for bad in (["--model", "no-equals-sign"], ["--model", "bad/name=/m"]):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["serve", *bad])
        assert "--model" in capsys.readouterr().err
    assert main(["serve", "--model", "a=/m/1", "--model", "a=/m/2"]) == 1
    assert "each --model needs its own name" in capsys.readouterr().err
    monkeypatch.setenv("CTXEMBED_MODEL", "a=/m/1,=/m/2")
    with pytest.raises(SystemExit):
        main(["serve"])
    assert "from $CTXEMBED_MODEL" in capsys.readouterr().err


def test_a_flag_wins_over_its_variable_and_bad_values_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CTXEMBED_MAX_QUEUE", "7")
    monkeypatch.setenv("CTXEMBED_MODEL_DIR", "/models/from-env")  # satisfies the required flag
    server, _ = settings_from(build_parser().parse_args(["serve"]))
    assert server.batcher.max_queue == 7 and server.model_dir == Path("/models/from-env")
    server, _ = settings_from(build_parser().parse_args(["serve", "--max-queue", "9"]))
    assert server.batcher.max_queue == 9
    monkeypatch.setenv("CTXEMBED_PORT", "70000")
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["serve"])
    assert info.value.code == 2
    assert "from $CTXEMBED_PORT: must be between 0 and 65535" in capsys.readouterr().err


def test_help_names_every_variable() -> None:
    parser, bindings = _serve_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    text = " ".join(sub.choices["serve"].format_help().split())
    for b in bindings:
        assert f"[env: {b.env}]" in text.replace(" ]", "]"), b.env
        assert b.env == env_name(b.option)
