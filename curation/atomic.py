"""One way to write a file so that no reader ever sees half of it.

The content goes to a temporary name beside the target (``.NAME.tmp-PID-RANDOM``, same folder,
so same file system) and is renamed over it with ``os.replace``. A failure (disk full, no
permission, Ctrl-C, a bug in ``write``) leaves the previous file as it was and removes the
temporary one; a kill -9 leaves a temporary file that :func:`curation.store.remove_stale_temps`
recognises by its pid. Used by the dataset writer, the exports, the embed shards and every
record written beside them.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from curation.errors import CurationError


def temp_name(path: str | os.PathLike) -> Path:
    """The temporary name a write of ``path`` uses: hidden, in the same folder, with our pid."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def atomic_write(path: str | os.PathLike, write, *, what: str = "", fix: str | None = None) -> Path:
    """Call ``write(tmp)`` and move ``tmp`` over ``path``. Returns ``path``.

    An ``OSError`` becomes one :class:`CurationError` naming the file ("cannot write ... Nothing was
    replaced."); any other exception propagates unchanged, and in every case the temporary file
    (and a DuckDB ``.wal`` beside it) is removed.
    """
    path = Path(path)
    tmp = temp_name(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(tmp)
        os.replace(tmp, path)
    except OSError as e:
        raise CurationError(f"cannot write {what + ' ' if what else ''}{path}: {e.strerror or e}. Nothing was "
                            f"replaced. Fix: {fix or 'free disk space or choose a writable location.'}") from None
    finally:
        for leftover in (tmp, tmp.with_name(tmp.name + ".wal")):
            if leftover.exists():
                leftover.unlink()
    return path
