"""Export failures that the command line reports as one line, without a stack trace."""

from ctxembed.runtime.errors import CtxembedError


class ExportError(CtxembedError):
    """The export cannot proceed; the message says why and, where possible, what to do."""
