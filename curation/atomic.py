"""One way to write a file so that no reader ever sees half of it.

The content goes to a temporary name beside the target (``.NAME.tmp-PID-RANDOM``, same folder,
so same file system) and is renamed over it with ``os.replace``. A failure (disk full, no
permission, Ctrl-C, a bug in ``write``) leaves the previous file as it was and removes the
temporary one; a kill -9 leaves a temporary file that :func:`remove_stale_temps`
recognises by its pid. Used by the dataset writer, the exports, the embed shards and every
record written beside them.
"""

from __future__ import annotations

import logging
import os
import re
import uuid
from pathlib import Path

from curation.errors import CurationError, InterruptedAfterWrite

log = logging.getLogger(__name__)


def temp_name(path: str | os.PathLike) -> Path:
    """The temporary name a write of ``path`` uses: hidden, in the same folder, with our pid."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def atomic_write(path: str | os.PathLike, write, *, what: str = "", fix: str | None = None,
                 exclusive: bool = False) -> Path:
    """Call ``write(tmp)`` and move ``tmp`` over ``path``. Returns ``path``.

    An ``OSError`` becomes one :class:`CurationError` naming the file ("cannot write ... Nothing was
    replaced."); any other exception propagates unchanged, and in every case the temporary file
    (and a DuckDB ``.wal`` beside it) is removed. With ``exclusive`` the file must not exist when
    the write completes: it is linked into place (create-exclusive), so of two processes creating
    one path only the first succeeds and the second gets :class:`FileExistsError`.
    """
    path = Path(path)
    tmp = temp_name(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(tmp)
        if exclusive:
            try:
                os.link(tmp, path)  # fails with FileExistsError when another writer got there first
            except FileExistsError:
                raise
            except OSError:  # a file system without hard links: claim the name exclusively, then move
                os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
                os.replace(tmp, path)
        else:
            os.replace(tmp, path)
    except FileExistsError:
        raise
    except OSError as e:
        raise CurationError(f"cannot write {what + ' ' if what else ''}{path}: {e.strerror or e}. Nothing was "
                            f"replaced. Fix: {fix or 'free disk space or choose a writable location.'}") from None
    finally:
        for leftover in (tmp, tmp.with_name(tmp.name + ".wal")):
            if leftover.exists():
                leftover.unlink()
    return path


def replace_set(files: dict, *, stale_first=()) -> None:
    """Move finished temporary files into place as one set, from a reader's point of view.

    ``files`` is {target: temporary file}, in the order they are moved; the last is the file that
    says the set is complete (an export's sidecar, which records the manifest's hash). Every
    ``stale_first`` target (the old marker) is removed before anything moves, so a kill -9 in
    between leaves either the old set, or new files without a marker (an incomplete export a
    reader recognises), never new data beside an old marker. Ctrl-C is held back while the files
    move (a few renames) and raised once they have: the set is then complete, and said to be.
    """
    import signal
    import threading

    held = []
    main = threading.current_thread() is threading.main_thread()
    old = signal.signal(signal.SIGINT, lambda *a: held.append(a)) if main else None
    try:
        for f in stale_first:
            if Path(f).exists() or Path(f).is_symlink():
                os.unlink(f)
        for target, tmp in files.items():
            os.replace(tmp, target)
    finally:
        if main:
            signal.signal(signal.SIGINT, old)
    if held and old is signal.default_int_handler:

        raise InterruptedAfterWrite(", ".join(Path(t).name for t in files) + " written before the interrupt took effect")
    if held and callable(old):
        old(signal.SIGINT, None)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def remove_stale_temps(path: str | os.PathLike) -> list[Path]:
    """Delete the temporary files an interrupted write of ``path`` left (``.NAME.tmp-PID-*`` and
    their ``.wal``) whose writing process is gone. Returns what was removed.

    Called by every write of that dataset, so a kill -9 costs disk space only until the next write.
    Files of a process still running (a concurrent writer) are left alone.
    """
    path = Path(path)
    removed = []
    for f in path.parent.glob(f".{path.name}.tmp-*"):
        m = re.match(rf"\.{re.escape(path.name)}\.tmp-(\d+)-", f.name)
        if m and _pid_alive(int(m.group(1))):
            continue  # (an old-style name without a pid is from an older version: stale)
        try:
            f.unlink()
            removed.append(f)
        except OSError:
            pass
    if removed:
        log.info("removed %d stale temporary file(s) of %s", len(removed), path)
    return removed
