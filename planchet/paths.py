"""Where the server may touch files: inside the data directory, never in its private corner.

One rule, used twice: by ``spec`` when a request names a path, and by the formats each
time they open a file, because a path checked once can be swapped for a link later.
"""

from __future__ import annotations

from pathlib import Path

from .config import PRIVATE_DIR


def refusal(root: Path, path: Path) -> str | None:
    """Why the resolved ``path`` may not be used under ``root``, or None if it may."""
    root = root.resolve()
    if not path.is_relative_to(root):
        return "outside the data directory"
    if path.is_relative_to(root / PRIVATE_DIR):
        return f"in the server's own {PRIVATE_DIR} directory"
    return None


def resolve_parent(path: Path) -> Path:
    """``path`` with its directories resolved but not its last part, which is never followed."""
    path = Path(path)
    if path.name in ("", ".", ".."):
        return path.resolve()  # no last part of its own: nothing is left unfollowed
    return path.parent.resolve() / path.name
