"""``python -m union.sandbox.server``: the same as the ``sandbox-server`` command."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from .cli import main as _main

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    return _main(argv)


if __name__ == "__main__":
    sys.exit(main())
