"""Decoding image files into RGB PIL images with errors that name the file and the fix."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, UnidentifiedImageError

from pyro_clip.errors import DataError

#: file extensions treated as images (lower case, with the dot)
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff"})
#: what PIL raises on unreadable, truncated or malformed files
DECODE_ERRORS = (
    UnidentifiedImageError,
    OSError,
    SyntaxError,
    ValueError,
    Image.DecompressionBombError,
)


def is_image_file(path: Path) -> bool:
    """True for a visible regular file with an image extension."""
    visible = not path.name.startswith(".")
    return visible and path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file()


def decode_rgb(path: Path, hint: str = "") -> Image.Image:
    """Fully decode ``path`` as RGB; a corrupt file raises ``DataError`` naming it."""
    try:
        with Image.open(path) as img:
            img.load()
            return img.convert("RGB")
    except DECODE_ERRORS as exc:
        raise DataError(f"cannot decode image {path}: {exc}.{hint}") from exc


def verify_image(path: Path) -> str | None:
    """Decode ``path`` fully; returns the problem, or None if it decodes.

    A full decode rather than PIL's structural ``verify``: ``verify`` passes truncated JPEGs,
    which would then stop the run when they are encoded."""
    try:
        with Image.open(path) as img:
            img.load()
    except DECODE_ERRORS as exc:
        return f"{type(exc).__name__}: {exc}"
    return None
