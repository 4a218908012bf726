"""The targets of the console scripts (``mper-train`` and the others).

Importing :mod:`mper.cli` imports torch, which takes a second or two; Ctrl-C in that
time ends the command as quietly as Ctrl-C later does (one line, exit status 130), not
in a traceback of the import.
"""

from __future__ import annotations

import signal
import sys
from types import ModuleType


def _cli() -> ModuleType:
    try:
        from mper import cli
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        sys.exit(128 + signal.SIGINT.value)
    return cli


def train_main() -> None:
    """``mper-train``."""
    _cli().train_main()


def eval_main() -> None:
    """``mper-eval``."""
    _cli().eval_main()


def predict_main() -> None:
    """``mper-predict``."""
    _cli().predict_main()


def data_main() -> None:
    """``mper-data``."""
    _cli().data_main()


def experiment_main() -> None:
    """``mper-experiment``."""
    _cli().experiment_main()
