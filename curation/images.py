"""Image files of a dataset: a path read only from inside the dataset's image root (``..``, an
absolute path elsewhere, a symlink out are refused; URLs are never fetched), with the fix when the
images were never unpacked."""

from __future__ import annotations

import os
from pathlib import Path

from curation.errors import CurationError


def resolve_image(root: Path | None, value) -> Path:
    """The image file of ``value``: an absolute path as it is (clip-retrieval and ``embed`` write
    absolute ``image_path`` values), a relative one under ``root``, refused when it leaves ``root``
    (``..``, a symlink out) or the file does not exist. URLs are never fetched."""
    if not isinstance(value, str) or not value:
        raise CurationError("this sample has no image path.")
    if "://" in value:
        raise CurationError(f"the image is a URL ({value[:80]}); remote images are not fetched (no network, "
                            f"patient data).")
    def resolved(path: Path) -> Path:
        try:
            return path.resolve()
        except (OSError, RuntimeError) as e:  # a symlink loop, a path too long
            raise CurationError(f"image path {value!r} cannot be resolved ({e}).") from None

    if os.path.isabs(value):
        p = resolved(Path(value))
        if not p.is_file():
            raise CurationError(f"image file {p} is missing.")
        return p
    if root is None:
        raise CurationError("this dataset has no image root (it was ingested without images).")
    base = resolved(Path(root))
    p = resolved(base / value)
    if p != base and base not in p.parents:
        raise CurationError(f"image path {value!r} leaves the dataset's image root {base}; refused.")
    if not p.is_file():
        raise CurationError(f"image file {p} is missing." + _archive_hint(base, value))
    return p


def _archive_hint(base: Path, value: str) -> str:
    """When the images were never unpacked (MedPix ships ``images.tgz`` beside its metadata): how."""
    parts = Path(value).parts
    top = parts[0] if len(parts) > 1 else ""  # a folder the path goes through (not the file itself)
    if top and (base / top).exists():
        return ""
    for name in (f"{top}.tgz", f"{top}.tar.gz", f"{top}.tar", f"{top}.zip"):
        if top and (base / name).is_file():
            how = f"unzip {base / name} -d {base}" if name.endswith(".zip") else f"tar -xzf {base / name} -C {base}"
            return f" The folder {base / top} does not exist, but {name} does: unpack it ({how})."
    return f" The folder {base / top} does not exist: unpack or copy the images there." if top else ""
