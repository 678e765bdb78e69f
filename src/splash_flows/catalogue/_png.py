"""PNG checks shared by the catalogue implementations (both refuse anything that is not a PNG)."""

from __future__ import annotations

from splash_flows.errors import CatalogueError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def require_png(png: bytes, pid: str) -> None:
    """Raise ``CatalogueError`` unless ``png`` starts with the PNG signature.

    A thumbnail is shown in a browser as ``data:image/png``; storing other bytes under that type would only
    show a broken image, so it is refused where it is attached rather than where it is viewed."""
    if not png.startswith(PNG_SIGNATURE):
        raise CatalogueError(f"thumbnail for dataset {pid} is not a PNG (first bytes {png[:8]!r})")
