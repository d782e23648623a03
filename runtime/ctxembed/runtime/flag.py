"""How a settings field appears on the command line: field metadata, read by ``ctxembed.cli``.

A setting is one dataclass field; its flag, environment variable (``CTXEMBED_<FLAG>``), type,
limits, choices and help are generated from this metadata (the way infinity builds its CLI from
``EngineArgs`` and TEI gives every flag an environment variable). Fields without it are
internal, or a nested settings object whose own fields are walked.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

FLAG = "ctxembed.flag"


@dataclass(frozen=True)
class Flag:
    help: str
    name: str | None = None  # default: --field-name
    # switch: --x; toggle: --x/--no-x; append: repeatable, its variable comma-separated
    kind: Literal["value", "switch", "toggle", "append"] = "value"
    type: Callable[[str], Any] | None = None  # default: the field's int/float/str
    minimum: float | None = None
    maximum: float | None = None
    choices: Sequence[str] | None = None
    required: bool = False
    to_setting: Callable[[Any], Any] | None = None  # the flag's value -> the field's value
    from_setting: Callable[[Any], Any] | None = None  # the field's default -> the flag's
    default_text: str | None = None  # for --help, where the default is not a literal


def flag(help: str, **options: Any) -> dict[str, Flag]:
    """``field(metadata=flag("..."))``."""
    return {FLAG: Flag(help, **options)}
