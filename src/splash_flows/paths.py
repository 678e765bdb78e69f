"""The one place a tier root and a tier-relative path are joined and checked.

A tier-relative path is POSIX-style, relative, valid UTF-8 (it travels through JSON, the ledger and catalogues),
and never leaves the root: no ``..`` component, not absolute, no NUL byte, and no symlink on the way that resolves
outside the root. Everything that touches a local tier goes through
``safe_join`` so a hostile or odd name cannot make us read or write elsewhere.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

from splash_flows.errors import PathEscapeError


def normalize_relpath(relpath: str, *, tier: str = "?") -> str:
    """Validate a tier-relative path and return it in canonical form (``a/b/c.edf``)."""
    if not relpath or (relpath.strip() != relpath and not relpath.strip()):
        raise PathEscapeError(f"{tier}: empty path")
    if "\x00" in relpath:
        raise PathEscapeError(f"{tier}:{relpath!r}: path contains a NUL byte")
    try:
        relpath.encode("utf-8")
    except UnicodeEncodeError:  # a name read from disk that is not UTF-8 (os.fsdecode's surrogates)
        raise PathEscapeError(f"{tier}:{ascii(relpath)[1:-1]}: name is not valid UTF-8; rename it") from None
    pure = PurePosixPath(relpath)
    if pure.is_absolute() or relpath.startswith("\\") or (len(relpath) > 1 and relpath[1] == ":"):
        raise PathEscapeError(f"{tier}:{relpath}: absolute paths are refused; give a path relative to the tier root")
    parts = [p for p in pure.parts if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise PathEscapeError(f"{tier}:{relpath}: '..' would leave the tier root")
    if not parts:
        raise PathEscapeError(f"{tier}:{relpath}: path names the tier root itself, not a file")
    return "/".join(parts)


def display_path(path: str) -> str:
    """``path`` as printable, storable text: itself when it is valid UTF-8 without a NUL byte; else bytes that are
    not UTF-8 (held as surrogate escapes by ``os.fsdecode``) become ``\\xNN`` and a NUL byte ``\\x00``, so a
    refused name never breaks the ledger or the terminal that reports it. The one rendering of a raw name."""
    try:
        shown = path.encode("utf-8", "strict").decode("utf-8")
    except UnicodeEncodeError:
        shown = path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return shown.replace("\x00", "\\x00")


def safe_join(root: Path, relpath: str, *, tier: str = "?") -> Path:
    """Join ``root`` and ``relpath``; refuse anything that would end up outside ``root``.

    Symlinks are resolved (for the part of the path that exists) and the result must still lie under the
    resolved root. The returned path is the unresolved join, so the caller works on the name it was given.
    """
    clean = normalize_relpath(relpath, tier=tier)
    joined = root / clean
    real_root = os.path.realpath(root)
    real = os.path.realpath(joined)
    if real != real_root and not real.startswith(real_root.rstrip(os.sep) + os.sep):
        raise PathEscapeError(f"{tier}:{clean}: resolves to {real}, outside the tier root {real_root}")
    return joined


def relpath_under(root: Path, path: Path, *, tier: str = "?") -> str:
    """The tier-relative path of an absolute ``path`` under ``root`` (refusing one outside it)."""
    try:
        rel = Path(os.path.abspath(path)).relative_to(os.path.abspath(root))
    except ValueError:
        raise PathEscapeError(f"{tier}: {path} is not under the tier root {root}") from None
    return normalize_relpath(rel.as_posix(), tier=tier)
