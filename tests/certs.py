"""Test certificates made at test time with the openssl command: a CA, a server certificate for
127.0.0.1/localhost and a client certificate, both signed by the CA, and a stranger's client
certificate signed by another CA."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass(frozen=True)
class Certs:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    stranger_cert: Path
    stranger_key: Path


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def _ca(folder: Path, name: str) -> tuple[Path, Path]:
    cert, key = folder / f"{name}.pem", folder / f"{name}.key"
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-keyout", str(key),
             "-out", str(cert), "-subj", f"/CN={name}")  # fmt: skip
    return cert, key


def _signed(folder: Path, name: str, ca: tuple[Path, Path], san: str | None) -> tuple[Path, Path]:
    cert, key, csr = folder / f"{name}.pem", folder / f"{name}.key", folder / f"{name}.csr"
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr),
             "-subj", f"/CN={name}")  # fmt: skip
    extra = folder / f"{name}.ext"
    extra.write_text(f"subjectAltName={san}\n" if san else "basicConstraints=CA:FALSE\n")
    sign = ["-CA", str(ca[0]), "-CAkey", str(ca[1]), "-CAcreateserial", "-days", "1"]
    _openssl("x509", "-req", "-in", str(csr), *sign, "-out", str(cert), "-extfile", str(extra))
    return cert, key


def make_certs(folder: Path) -> Certs:
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is needed to make test certificates")
    ca = _ca(folder, "ca")
    server = _signed(folder, "server", ca, "IP:127.0.0.1,DNS:localhost")
    client = _signed(folder, "client", ca, None)
    stranger = _signed(folder, "stranger", _ca(folder, "other-ca"), None)
    return Certs(ca[0], *server, *client, *stranger)
