"""Where the analysis's per-block and per-cluster work runs: in this process
(:class:`LocalRunner`) or as Ray tasks on a cluster (:class:`RayRunner`).

The analysis steps (:mod:`curation.analysis_steps`) cut their heavy work into tasks that each read
only their own vectors (a range of rows of the shards, or one cluster of a by-cluster partition)
and call the same module-level functions either way:

- k-means assignment and the probed prototypes: one task per block of 65,536 rows
  (:func:`curation.prototypes.nearest_block`);
- farthest-point order: one task per prototype (:func:`curation.prototypes.fps_cluster`);
- kNN: one task per prototype list, its queries against its members
  (:func:`curation.density.list_candidates`; lists above 2,000 rows cut into fine lists first).

The driver keeps what needs the whole pool at once and is small: the k-means and UMAP fits on their
seeded samples, writing the by-cluster partitions, merging the candidates, HDBSCAN on the 2-D
points, and the tables. A task's result lands in the driver's arrays only when it is complete, so
a lost worker or a retried task (``max_retries``) cannot leave half a result; merges are
independent of the order tasks finish in (each task writes its own rows, and kNN candidates are
merged under one total order: similarity, then row), so a run on Ray gives the tables of a run
here, bit for bit where the numerics are the same code on the same CPU type.

Vectors never travel through Ray: a task reads them from the dataset's shards and the run's
partition files, which every node must see at the same path (a shared file system, as for
``embed --backend ray``'s inputs). Ray Data is not used here: its ``map_batches`` over the shards
would move every vector through the object store, and ``groupby``/``map_groups`` holds a whole
hash partition in one task (DESIGN section 9); plain tasks over row ranges and partition offsets
read the same bytes with one ``pread`` each.
"""

from __future__ import annotations

import logging
import os
import re

from curation.errors import CurationError

log = logging.getLogger(__name__)

BACKENDS = ("local", "ray")


class LocalRunner:
    """Run every task here, one after another, in task order."""

    backend = "local"
    workers = 1

    def put(self, obj):
        return obj

    def map(self, fn, tasks, shared=()):
        """Yield ``(i, fn(*shared, *tasks[i]))`` for every task (here: in order)."""
        for i, t in enumerate(tasks):
            yield i, fn(*shared, *t)

    def close(self) -> None:
        pass


class RayRunner:
    """Run tasks on a Ray cluster: ``address`` (``HOST:PORT``, ``auto``, ``ray://...``), else
    ``RAY_ADDRESS``, else a Ray instance started on this machine (stopped by :meth:`close`). A
    connection this process already holds (``ray.init`` before the call) is used as it is.

    On a cluster, the driver's ``curation`` package travels with the job (``runtime_env`` with
    ``py_modules``, as ``embed --backend ray`` does): the nodes need the pinned requirements, not
    ``curation``. Tasks take one CPU each and are retried ``max_retries`` times when their worker
    dies; at most ``2 x CPUs`` are in flight, so the driver's memory for results stays bounded.
    """

    backend = "ray"

    def __init__(self, address: str | None = None, max_retries: int = 3):
        from curation.embed_ray import _import_ray, runtime_env

        ray = _import_ray()
        self.ray, self.max_retries, self.started = ray, max_retries, False
        target = address or os.environ.get("RAY_ADDRESS")
        if not ray.is_initialized():
            if target:
                check_reachable(target)
            kw = ({"address": target, "runtime_env": runtime_env()} if target
                  else {"include_dashboard": False})
            try:
                ray.init(logging_level=logging.ERROR, log_to_driver=False, ignore_reinit_error=True, **kw)
            except (ConnectionError, RuntimeError, ValueError, TimeoutError) as e:
                raise CurationError(f"could not connect to the Ray cluster at {target}: {str(e).splitlines()[0]}. "
                                    "Fix: start it (`ray start --head`, then `ray start --address HEAD:PORT` on "
                                    "the other nodes) and pass the head's address, or drop --address to run "
                                    "Ray on this machine.") from None
            self.started = True
        self.address = target or "local"
        cpus = float(ray.cluster_resources().get("CPU", 0))
        if cpus < 1:
            self.close()
            raise CurationError(f"the Ray cluster at {self.address} has no CPUs to run tasks on. Fix: start its "
                                "nodes with CPUs (`ray start ... --num-cpus N`).")
        self.workers = int(cpus)
        self.in_flight = max(2 * int(cpus), 2)
        self._remotes: dict = {}

    def put(self, obj):
        """Put a large shared argument (the vectors' reader, a partition's maps) in the object
        store once; tasks receive it without a copy per task."""
        return self.ray.put(obj)

    def _remote(self, fn):
        if fn not in self._remotes:
            self._remotes[fn] = self.ray.remote(num_cpus=1, max_retries=self.max_retries)(fn)
        return self._remotes[fn]

    def map(self, fn, tasks, shared=()):
        """Yield ``(i, fn(*shared, *tasks[i]))`` as tasks finish (any order)."""
        ray = self.ray
        remote = self._remote(fn)
        shared = [s if isinstance(s, ray.ObjectRef) else ray.put(s) for s in shared]
        pending: dict = {}
        todo = iter(enumerate(tasks))
        exhausted = False
        while True:
            while not exhausted and len(pending) < self.in_flight:
                nxt = next(todo, None)
                if nxt is None:
                    exhausted = True
                    break
                pending[remote.remote(*shared, *nxt[1])] = nxt[0]
            if not pending:
                return
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                i = pending.pop(ref)
                yield i, self._get(ref)

    def _get(self, ref):
        ray = self.ray
        try:
            return ray.get(ref)
        except ray.exceptions.RayTaskError as e:
            cause = getattr(e, "cause", None)
            missing = cause.name if isinstance(cause, ModuleNotFoundError) else None
            if missing is None and "failed to import on the worker" in str(e):  # the task's own module
                found = re.search(r"No module named '([^']+)'", str(e))
                missing = found.group(1) if found else "?"
            if missing is not None:
                raise CurationError(f"a Ray worker lacks the package {missing!r}. Fix: install the pinned "
                                    "requirements (requirements.txt) on every node of the cluster.") from None
            if isinstance(cause, CurationError):
                raise cause from None
            raise
        except ray.exceptions.WorkerCrashedError:
            raise CurationError(f"a Ray worker died {self.max_retries + 1} times on one task. Fix: check the "
                                "nodes' memory and logs, then run the same command again: finished steps "
                                "are kept and the run resumes there.") from None

    def close(self) -> None:
        if self.started and self.ray.is_initialized():
            self.ray.shutdown()
        self.started = False


def check_reachable(address: str, timeout: float = 5.0) -> None:
    """A clear error at once when ``HOST:PORT`` does not answer (``ray.init`` would retry for
    minutes). ``auto`` and ``ray://`` addresses are left to Ray."""
    import socket

    if address == "auto" or "://" in address:
        return
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise CurationError(f"--address {address!r} is not HOST:PORT. Fix: pass the head node's address as "
                            "`ray start --head` printed it (e.g. 10.0.0.5:6379).")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as e:
        raise CurationError(f"could not reach the Ray cluster at {address} ({e.strerror or e}). Fix: start it "
                            "(`ray start --head --port PORT`, then `ray start --address HEAD:PORT` on the other "
                            "nodes), check the address and the firewall, or drop --address to run Ray on this "
                            "machine.") from None


def runner(backend: str = "local", address: str | None = None):
    """A runner for ``backend`` (``local`` or ``ray``)."""
    if backend not in BACKENDS:
        raise CurationError(f"unknown backend {backend!r}. Fix: use one of {', '.join(BACKENDS)}.")
    if address and backend != "ray":
        raise CurationError("--address goes with --backend ray.")
    return RayRunner(address) if backend == "ray" else LocalRunner()

