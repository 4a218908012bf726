"""The optional-dependency groups ("extras") of the installed mper, for scripts/setup.sh.

setup.sh builds mper without extras and installs the extras' requirements on their own,
so that asking for another extra does not build mper again.

    python scripts/extras.py missing EXTRAS STAMP   # the extras in EXTRAS not listed in STAMP
    python scripts/extras.py requirements EXTRAS    # their requirements, one per line

EXTRAS is comma-separated, e.g. "test,lint"; STAMP a file of extras already installed,
one per line (absent: none).
"""

from __future__ import annotations

import importlib.metadata
import re
import sys
from pathlib import Path

EXTRA_MARKER = re.compile(r"""extra\s*==\s*["']([^"']+)["']""")


def requirements_by_extra() -> dict[str, list[str]]:
    """Each extra of the installed mper and its requirements, markers left out."""
    declared = importlib.metadata.metadata("mper").get_all("Provides-Extra") or []
    extras: dict[str, list[str]] = {name: [] for name in declared}
    for requirement in importlib.metadata.requires("mper") or []:
        spec, _, marker = requirement.partition(";")
        found = EXTRA_MARKER.search(marker)
        if found:
            extras.setdefault(found.group(1), []).append(spec.strip())
    return extras


def asked(extras: str, known: dict[str, list[str]]) -> list[str]:
    """The extras named in ``extras``; exits with a message on one not in ``known``."""
    names = [name.strip() for name in extras.split(",") if name.strip()]
    unknown = [name for name in names if name not in known]
    if unknown:
        sys.exit(
            f"setup: MPER_EXTRAS names {', '.join(unknown)}, which mper does not have; "
            f"its extras are {', '.join(sorted(known))}"
        )
    return names


def main(argv: list[str]) -> None:
    known = requirements_by_extra()
    if len(argv) == 3 and argv[0] == "missing":
        stamp = Path(argv[2])
        installed = set(stamp.read_text().split()) if stamp.exists() else set()
        print(",".join(name for name in asked(argv[1], known) if name not in installed))
    elif len(argv) == 2 and argv[0] == "requirements":
        print("\n".join(sorted({spec for name in asked(argv[1], known) for spec in known[name]})))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
