"""Print a hash of everything an installed mper is built from (used by scripts/setup.sh).

Covers the file names and contents under csrc/ and python/ (compiled caches left out),
CMakeLists.txt and pyproject.toml, so that any change to them makes setup.sh build
again (setup.sh compares the build switches itself).

    python scripts/source_hash.py [REPOSITORY_ROOT]
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

SOURCE_FOLDERS = ("csrc", "python")
SOURCE_FILES = ("CMakeLists.txt", "pyproject.toml")
SKIPPED_SUFFIXES = (".pyc", ".pyo", ".so", ".pyd")


def source_files(root: Path) -> list[Path]:
    """The build's input files under ``root``, sorted."""
    files = [root / name for name in SOURCE_FILES]
    for folder in SOURCE_FOLDERS:
        files += [
            path
            for path in (root / folder).rglob("*")
            if path.is_file() and "__pycache__" not in path.parts and not path.name.endswith(SKIPPED_SUFFIXES)
        ]
    return sorted(files)


def source_hash(root: Path) -> str:
    """SHA-256 over the relative paths and contents of :func:`source_files`."""
    digest = hashlib.sha256()
    for path in source_files(root):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()


if __name__ == "__main__":
    print(source_hash(Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent)))
