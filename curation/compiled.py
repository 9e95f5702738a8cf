"""Code compiled by numba: where its cache lives and one way to compile a plain-Python kernel.

Kernels are written as plain Python functions (readable, testable as they are) and compiled on
first use, with numba imported inside the function like the other heavy libraries."""

from __future__ import annotations

import functools
import os
from pathlib import Path


def numba_cache_dir() -> Path:
    """Where numba keeps compiled code across processes: ``$NUMBA_CACHE_DIR`` when set, else
    ``$XDG_CACHE_HOME/curation/numba`` or ``~/.cache/curation/numba``. Set before umap (and so
    numba) is first imported; site-packages is often read-only, where numba caches nothing."""
    if os.environ.get("NUMBA_CACHE_DIR"):
        return Path(os.environ["NUMBA_CACHE_DIR"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    d = base / "curation" / "numba"
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError:  # an unwritable home: numba then compiles in memory, as before
        return d
    os.environ["NUMBA_CACHE_DIR"] = str(d)
    return d


def njit(*fns):
    """``fns`` compiled by numba (cached on disk in :func:`numba_cache_dir`, the GIL released)."""
    numba_cache_dir()
    import numba

    jit = numba.njit(cache=True, nogil=True)
    return tuple(jit(f) for f in fns)


@functools.cache
def kernel(fn):
    """``fn`` compiled by :func:`njit`, once per process (numba's disk cache spares the compile)."""
    return njit(fn)[0]
