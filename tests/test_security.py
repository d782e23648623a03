"""Bearer tokens, mutual TLS, the plaintext health port and `ctxembed health`, over real calls
to a real server with the fake model (no export needed)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from certs import Certs, make_certs
from fake_model import FakeModel
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ctxembed.client import Client
from testkit.servers import ThreadServer

TOKENS = ["first-secret-token", "second-secret-token"]


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture()
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "tokens"
    path.write_text("# accepted tokens\n" + "\n".join(TOKENS) + "\n")
    return path


@pytest.fixture()
def authed(token_file: Path) -> Iterator[ThreadServer]:
    server = ThreadServer(FakeModel(), auth_token_file=token_file)
    yield server
    server.stop()


def _code(call: object) -> grpc.StatusCode:
    try:
        call()  # type: ignore[operator]
    except grpc.RpcError as error:
        return error.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


@pytest.mark.parametrize("token", [None, "wrong", "first-secret-tokenX", ""])
def test_missing_or_wrong_token_is_unauthenticated(authed: ThreadServer, token: str | None) -> None:
    with Client(authed.address, token=token) as client:
        assert _code(lambda: client.embed(["bank"])) == grpc.StatusCode.UNAUTHENTICATED
        assert _code(client.info) == grpc.StatusCode.UNAUTHENTICATED
        assert _code(lambda: list(client.embed_stream([["bank"]]))) == (
            grpc.StatusCode.UNAUTHENTICATED
        )
        try:
            client.info()
        except grpc.RpcError as error:
            assert "first-secret" not in str(error.details())  # no hint of a valid token


@pytest.mark.parametrize("token", TOKENS)
def test_each_accepted_token_works(authed: ThreadServer, token: str) -> None:
    with Client(authed.address, token=token) as client:
        assert client.embed(["river bank"])[0].words[1].text == "bank"
        assert len(list(client.embed_stream([["a"], ["b"]]))) == 2


def test_health_is_open_and_reflection_is_not(authed: ThreadServer, token_file: Path) -> None:
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
        ProtoReflectionDescriptorDatabase,
    )

    with Client(authed.address) as client:  # no token
        assert client.health() == "SERVING"
    with grpc.insecure_channel(authed.address) as channel, pytest.raises(grpc.RpcError) as info:
        ProtoReflectionDescriptorDatabase(channel).get_services()
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    open_server = ThreadServer(FakeModel(), auth_token_file=token_file, open_reflection=True)
    try:
        with grpc.insecure_channel(open_server.address) as channel:
            services = ProtoReflectionDescriptorDatabase(channel).get_services()
        assert "ctxembed.v1.WordEmbedder" in services
    finally:
        open_server.stop()


def test_tokens_rotate_on_reload(authed: ThreadServer, token_file: Path) -> None:
    auth = authed.running.auth
    assert auth is not None
    token_file.write_text("third-token\n")
    auth.reload()
    with Client(authed.address, token="third-token") as client:
        assert client.info().name == "fake"
    with Client(authed.address, token=TOKENS[0]) as client:
        assert _code(client.info) == grpc.StatusCode.UNAUTHENTICATED
    token_file.write_text("")  # an empty file keeps the tokens in force
    auth.reload()
    with Client(authed.address, token="third-token") as client:
        assert client.info().name == "fake"


def test_mutual_tls(certs: Certs) -> None:
    server = ThreadServer(
        FakeModel(),
        tls_cert=certs.server_cert,
        tls_key=certs.server_key,
        tls_client_ca=certs.ca,
        health_port=0,
    )
    try:
        good = {"tls_ca": certs.ca, "tls_cert": certs.client_cert, "tls_key": certs.client_key}
        with Client(server.address, **good) as client:  # type: ignore[arg-type]
            assert client.embed(["bank"])[0].words[0].text == "bank"
        with Client(server.address, timeout=3) as plain:
            assert _code(plain.info) == grpc.StatusCode.UNAVAILABLE  # plaintext refused
        with Client(server.address, tls_ca=certs.ca, timeout=3) as no_cert:
            assert _code(no_cert.info) == grpc.StatusCode.UNAVAILABLE  # no client certificate
        stranger = {
            "tls_ca": certs.ca,
            "tls_cert": certs.stranger_cert,
            "tls_key": certs.stranger_key,
        }
        with Client(server.address, timeout=3, **stranger) as other:  # type: ignore[arg-type]
            assert _code(other.info) == grpc.StatusCode.UNAVAILABLE  # signed by another CA
        # probes: health alone, in plaintext, on its own port
        health_address = f"127.0.0.1:{server.running.health_port}"
        with grpc.insecure_channel(health_address) as channel:
            response = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service="ctxembed.v1.WordEmbedder"), timeout=5
            )
            assert response.status == health_pb2.HealthCheckResponse.SERVING
        with Client(health_address, timeout=3) as probe:
            assert _code(probe.info) == grpc.StatusCode.UNIMPLEMENTED  # nothing else there
    finally:
        server.stop()


def test_health_command_exit_codes(authed: ThreadServer) -> None:
    run = [sys.executable, "-m", "ctxembed.cli", "health"]
    ok = subprocess.run([*run, authed.address], capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0 and ok.stdout.strip() == "SERVING"
    down = subprocess.run(
        [*run, "127.0.0.1:1", "--timeout", "1"], capture_output=True, text=True, timeout=60
    )
    assert down.returncode == 1 and down.stderr.startswith("error: ")
    assert "Traceback" not in down.stderr


def test_serve_reloads_tokens_on_sighup(model_dir: Path, token_file: Path) -> None:
    """The real command: SIGHUP re-reads the token file without dropping the server."""
    from testkit.servers import ProcessServer

    server = ProcessServer(model_dir, "--auth-token-file", str(token_file))
    try:
        with Client(server.address, token=TOKENS[0]) as client:
            assert client.info().dimension == 384
        token_file.write_text("rotated\n")
        server.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while not any("reloaded 1 accepted token" in line for line in server.lines):
            assert time.monotonic() < deadline, "".join(server.lines)
            time.sleep(0.05)
        with Client(server.address, token="rotated") as client:
            assert client.embed(["bank"])[0].vectors.shape == (1, 384)
        with Client(server.address, token=TOKENS[0]) as client:
            assert _code(client.info) == grpc.StatusCode.UNAUTHENTICATED
    finally:
        server.proc.send_signal(signal.SIGTERM)
    code, log = server.finish()
    assert code == 0 and "rotated" not in log and TOKENS[0] not in log  # tokens never logged


def test_token_file_comments_are_never_tokens(tmp_path: Path) -> None:
    from ctxembed.service.auth import read_tokens

    path = tmp_path / "tokens"
    path.write_text("# a comment\n   # an indented comment\n\tsecret-1  \n\n  secret-2\n")
    assert read_tokens(path) == (b"secret-1", b"secret-2")
