"""Helpers for the 7.3.3 reader tests (imported by name: pytest puts this folder on ``sys.path``)."""

from __future__ import annotations

from pathlib import Path

#: A copy of shared/reference/bl733/sample_scan_2m.txt (a real sidecar's layout), kept in the repo so the
#: tests do not depend on where shared/ is checked out.
SAMPLE_SIDECAR = Path(__file__).resolve().parents[2] / "data" / "sample_scan_2m.txt"


def put(root: Path, rel: str, data: bytes | str) -> Path:
    """Write ``data`` at ``root/rel`` (creating folders) and return the path."""
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        path.write_text(data, encoding="utf-8")
    else:
        path.write_bytes(data)
    return path
