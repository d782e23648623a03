"""``python -m ctxembed.cli``: the ``ctxembed`` command."""

import sys

from ctxembed.cli import main

sys.exit(main())
