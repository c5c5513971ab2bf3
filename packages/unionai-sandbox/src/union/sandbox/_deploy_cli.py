"""``unionai-sandbox-deploy``: deploy the default sandbox environments with ``flyte deploy``.

Installed with the facade so that, without the Flyte layer, it still says what to install
(exit 127). The work is in :mod:`union.sandbox.flyte._deploy`.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    try:
        from union.sandbox.flyte._deploy import main as deploy
    except ImportError as exc:
        print(
            "unionai-sandbox-deploy needs the Flyte layer: pip install 'unionai-sandbox[deploy]' "
            f"({exc})",
            file=sys.stderr,
        )
        return 127
    return deploy(argv)


if __name__ == "__main__":
    sys.exit(main())
