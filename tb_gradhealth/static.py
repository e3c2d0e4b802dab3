"""Locates the frontend's files and maps a request path to one of them, refusing anything outside the folder."""

from __future__ import annotations

import pathlib
import re

_PACKAGE_DIR = pathlib.Path(__file__).resolve().parent

# Inside the wheel the frontend ships as tb_gradhealth/frontend; in a
# checkout (editable install) it is the top-level frontend/ folder.
_CANDIDATE_DIRS = (_PACKAGE_DIR / "frontend", _PACKAGE_DIR.parent / "frontend")

# The only file types served, with the content type each is served as; any
# other file in the folder (Python files, editor backups) stays private.
CONTENT_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".html": "text/html; charset=utf-8",
    ".json": "application/json",
    ".map": "application/json",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".woff2": "font/woff2",
    ".txt": "text/plain; charset=utf-8",
}

# One path segment: no leading dot (so no `.`, `..` or hidden file), no
# backslash, percent sign, colon or other character a traversal could use.
_SAFE_SEGMENT = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*")


def frontend_dir() -> pathlib.Path | None:
    """Returns the folder holding the frontend's files, or None if there is none."""
    for candidate in _CANDIDATE_DIRS:
        if candidate.is_dir():
            return candidate
    return None


def resolve(root: pathlib.Path, relative: str) -> pathlib.Path | None:
    """Returns the file under `root` that `relative` names, or None if it is unsafe or absent.

    Args:
      root: the asset folder.
      relative: the already URL-decoded path below the plugin's prefix, such
        as `index.js` or `vendor/chart.js`.
    """
    if not relative or len(relative) > 255:
        return None
    segments = relative.split("/")
    if not all(_SAFE_SEGMENT.fullmatch(segment) for segment in segments):
        return None
    root = root.resolve()
    candidate = root.joinpath(*segments).resolve()
    # Resolving follows symlinks: a link pointing out of the folder is refused.
    if not candidate.is_relative_to(root) or not candidate.is_file():
        return None
    if candidate.suffix.lower() not in CONTENT_TYPES:
        return None
    return candidate


def content_type(path: pathlib.Path) -> str:
    """Returns the content type a file resolved by `resolve` is served as."""
    return CONTENT_TYPES[path.suffix.lower()]
