"""Writing files safely: atomically, with the mode set before any content exists."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_file(path: Path, content: str | bytes, mode: int = 0o644) -> None:
    """Write atomically (temp file + rename); the file never exists with a wider mode."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    data = content.encode() if isinstance(content, str) else content
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_private(path: Path, content: str | bytes) -> None:
    """A file only its owner may read: secrets, keys, state."""
    write_file(path, content, 0o600)
