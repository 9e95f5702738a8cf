"""Analysis in the background: one worker thread per dataset, with progress other threads can read.

The app starts an analysis here instead of running it in a page script, so the session that started
it keeps working and every other session keeps reading the last complete run: :func:`analyze
<curation.analysis.analyze>` reads the vectors, closes the dataset, computes, and writes all its
tables plus the run record in one transaction at the end. A second start for a dataset whose
analysis is running is refused with a :class:`~curation.errors.CurationError` naming the running job.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from curation import analysis
from curation.errors import CurationError

log = logging.getLogger(__name__)


@dataclass
class AnalysisJob:
    """State of one background analysis; read it with :meth:`snapshot` (thread-safe).

    ``status`` is "running", "done" or "failed"; ``error`` holds the message of a failure
    (a :class:`CurationError`'s text, or "internal error: ..." for a bug, whose traceback is logged).
    """

    db: str
    steps: tuple
    started: float = field(default_factory=time.time)
    status: str = "running"
    step: str = "starting"
    done: int = 0
    total: int = 0
    run_id: str | None = None
    error: str | None = None
    finished: float | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)

    def _progress(self, step: str, done: int, total: int) -> None:
        with self._lock:
            self.step, self.done, self.total = step, int(done), int(total)

    def snapshot(self) -> dict:
        """A consistent copy: status, step, done, total, fraction (0..1 over all steps), run_id,
        error, seconds."""
        with self._lock:
            steps = ("load",) + tuple(self.steps)
            i = steps.index(self.step) if self.step in steps else 0
            frac = (i + (self.done / self.total if self.total else 0)) / len(steps)
            end = self.finished or time.time()
            return {"status": self.status, "step": self.step, "done": self.done, "total": self.total,
                    "fraction": 1.0 if self.status == "done" else min(max(frac, 0.0), 1.0),
                    "run_id": self.run_id, "error": self.error, "seconds": end - self.started}

    def wait(self, timeout: float | None = None) -> dict:
        """Block until the job ends (or ``timeout``); returns :meth:`snapshot`."""
        if self._thread is not None:
            self._thread.join(timeout)
        return self.snapshot()


_JOBS: dict[str, AnalysisJob] = {}
_JOBS_LOCK = threading.Lock()


def _key(db) -> str:
    return str(Path(db).resolve())


def job_for(db) -> AnalysisJob | None:
    """The latest job started for ``db`` in this process (running or finished), or None."""
    with _JOBS_LOCK:
        return _JOBS.get(_key(db))


def start_analysis(db, config=None, steps=None, force: bool = False, backend: str = "local",
                   address: str | None = None) -> AnalysisJob:
    """Start :func:`curation.analysis.analyze` on ``db`` in a daemon thread and return its job
    (``backend``/``address``: where its tasks run, as ``analyze --backend ray --address``).

    Raises :class:`CurationError` when an analysis of ``db`` is already running in this process.
    """

    config = config or analysis.AnalysisConfig()
    steps = tuple(steps or analysis.STEPS)
    key = _key(db)
    with _JOBS_LOCK:
        running = _JOBS.get(key)
        if running is not None and running.status == "running":
            snap = running.snapshot()
            raise CurationError(f"an analysis of {Path(db).name} is already running (started "
                                f"{time.strftime('%H:%M:%S', time.localtime(running.started))}, now at step "
                                f"{snap['step']}). Fix: wait for it to finish; its progress is on the Overview page.")
        job = AnalysisJob(db=str(db), steps=steps)
        _JOBS[key] = job

    def work():
        try:
            run_id = analysis.analyze(db, config, steps=steps, progress=job._progress, force=force,
                                      backend=backend, address=address)
        except CurationError as e:
            with job._lock:
                job.status, job.error = "failed", str(e)
        except Exception as e:  # a bug: keep the traceback in the server log, a short line for the user
            log.exception("analysis of %s failed", db)
            with job._lock:
                job.status, job.error = "failed", f"internal error: {type(e).__name__}: {e} (details in the server log)"
        else:
            with job._lock:
                job.status, job.run_id = "done", run_id
        finally:
            with job._lock:
                job.finished = time.time()

    job._thread = threading.Thread(target=work, name=f"analysis-{Path(db).name}", daemon=True)
    job._thread.start()
    return job
