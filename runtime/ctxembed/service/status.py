"""The one place that maps engine errors to gRPC status codes (with rich details)."""

from __future__ import annotations

import grpc
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from ctxembed.runtime.errors import Abandoned, InvalidInput


class Overloaded(Exception):
    """The request queue is full (the message says which limit)."""


class DeadlineExpired(Exception):
    """The request's deadline passed before its results were ready."""


class Cancelled(Exception):
    """The caller cancelled the request while it ran."""


class UnknownModel(Exception):
    """A request named a model this server does not serve (the message lists those it does)."""


def invalid_argument(exc: InvalidInput, prefix: str = "") -> grpc.Status:
    detail = error_details_pb2.BadRequest()
    violation = detail.field_violations.add()
    violation.field = exc.field
    violation.description = exc.description
    status = status_pb2.Status(code=code_pb2.INVALID_ARGUMENT, message=prefix + str(exc))
    status.details.add().Pack(detail)
    return rpc_status.to_status(status)


def plain(code: grpc.StatusCode, message: str) -> grpc.Status:
    status = status_pb2.Status(code=code.value[0], message=message)
    return rpc_status.to_status(status)


def status_for(exc: BaseException, prefix: str = "") -> grpc.Status | None:
    """The status for an expected failure, or None for a bug (the caller reports INTERNAL)."""
    if isinstance(exc, InvalidInput):
        return invalid_argument(exc, prefix)
    if isinstance(exc, Overloaded):
        return plain(
            grpc.StatusCode.RESOURCE_EXHAUSTED, f"server overloaded: {exc}; retry with backoff"
        )
    if isinstance(exc, DeadlineExpired):
        return plain(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline passed before the results")
    if isinstance(exc, UnknownModel):
        return plain(grpc.StatusCode.NOT_FOUND, str(exc))
    if isinstance(exc, (Cancelled, Abandoned)):
        return plain(grpc.StatusCode.CANCELLED, "cancelled by the caller")
    return None
