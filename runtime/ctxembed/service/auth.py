"""Bearer-token authentication: an interceptor in front of every method but the open ones.

Like TEI's ``--api-key``: a call must carry ``authorization: Bearer <token>`` metadata with one
of the accepted tokens, or it gets ``UNAUTHENTICATED`` with no hint of what is accepted. The
health service stays open (Kubernetes probes cannot send credentials), as do the open inference
protocol's live/ready/metadata calls, and reflection when asked. Tokens come from a file, one
per line (several, for rotation), re-read on SIGHUP; comparison is constant-time and tokens never
reach the log.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

import grpc

from ctxembed.service.interceptors import (
    HEALTH_PREFIX,
    INFERENCE_OPEN,
    Handler,
    Interceptor,
    refusal,
)
from ctxembed.service.settings import ServeError

log = logging.getLogger("ctxembed.service")
REFLECTION_PREFIXES = (
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)


def read_tokens(path: Path) -> tuple[bytes, ...]:
    """Accepted tokens: non-empty lines, surrounding whitespace removed; a line whose first
    non-blank character is '#' is a comment (an indented one too: never a token)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ServeError(f"--auth-token-file {path}: cannot read it: {exc}") from None
    stripped = (line.strip() for line in lines)
    tokens = tuple(line.encode() for line in stripped if line and not line.startswith("#"))
    if not tokens:
        raise ServeError(f"--auth-token-file {path} holds no token (one per line)")
    return tokens


class TokenAuth(Interceptor):
    def __init__(self, path: Path, open_reflection: bool = False) -> None:
        self.path = path
        self.tokens = read_tokens(path)
        self.open_prefixes = (
            HEALTH_PREFIX,
            *INFERENCE_OPEN,
            *(REFLECTION_PREFIXES if open_reflection else ()),
        )
        self.rejected = 0

    def reload(self) -> None:
        """Re-read the token file (SIGHUP); a bad file keeps the tokens in force."""
        try:
            self.tokens = read_tokens(self.path)
        except ServeError as exc:
            log.error("%s; keeping the %d tokens in force", exc, len(self.tokens))
            return
        log.info("reloaded %d accepted token(s) from %s", len(self.tokens), self.path)

    def accepts(self, metadata: Iterable[tuple[str, Any]] | None) -> bool:
        presented = b""
        for key, value in metadata or ():
            if key == "authorization":
                text = value.decode() if isinstance(value, bytes) else str(value)
                scheme, _, token = text.partition(" ")
                if scheme.lower() == "bearer":
                    presented = token.strip().encode()
        # Every token is compared (no early exit), each in constant time.
        matches = [hmac.compare_digest(presented, token) for token in self.tokens]
        return bool(presented) and any(matches)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler]],
        details: grpc.HandlerCallDetails,
    ) -> Handler:
        handler = await continuation(details)
        method = details.method
        if method.startswith(self.open_prefixes) or self.accepts(details.invocation_metadata):
            return handler
        self.rejected += 1
        message = "missing or invalid bearer token (authorization metadata)"
        return refusal(handler, grpc.StatusCode.UNAUTHENTICATED, message)
