"""Which asyncio event loop ``ctxembed serve`` runs on: the standard one, or uvloop (opt-in).

grpc.aio runs unchanged on uvloop (libuv), which spends less Python per callback. It did not
pay reliably on the machines measured (README, "Measured choices"), so the standard loop stays
the default and ``--event-loop uvloop`` (``pip install 'ctxembed[uvloop]'``) is there to
measure on others.
"""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")
EVENT_LOOPS = ("asyncio", "uvloop")


class EventLoopUnavailable(RuntimeError):
    pass


def resolve(choice: str) -> str:
    """``choice`` if this machine can run it."""
    if choice not in EVENT_LOOPS:
        raise EventLoopUnavailable(f"--event-loop must be one of {', '.join(EVENT_LOOPS)}")
    if choice == "uvloop" and importlib.util.find_spec("uvloop") is None:
        raise EventLoopUnavailable(
            "--event-loop uvloop: uvloop is not installed (pip install 'ctxembed[uvloop]')"
        )
    return choice


def run(main: Coroutine[Any, Any, T], choice: str = "asyncio") -> T:
    if resolve(choice) == "uvloop":
        import uvloop

        return uvloop.run(main)
    return asyncio.run(main)


def running_loop_name() -> str:
    """For the start log line: 'uvloop' or 'asyncio'."""
    return type(asyncio.get_running_loop()).__module__.split(".")[0]
