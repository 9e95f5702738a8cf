"""The store's Arrow side: vectors in and out as fixed-size lists (one contiguous float buffer a
batch, numpy arrays wrapped without a copy) and the content fingerprint of samples + vectors."""

from __future__ import annotations

import hashlib
from typing import Mapping

import numpy as np

from curation import schema as S
from curation.errors import StateError


def release_unused_memory() -> None:
    """Hand memory Arrow's pool freed back to the system. mimalloc and jemalloc keep it for reuse,
    so it stays in the process's resident size: after an ingest's id check (100 MB at 1M ids), and
    after each analysis step's table reads and checkpoint writes (in a 10M analysis at 7 GB, 1.5 GB
    lay in the pool's regions by ``/proc/PID/smaps``)."""
    import pyarrow as pa

    try:
        pa.default_memory_pool().release_unused()
    except (AttributeError, NotImplementedError):  # older pyarrow, or a pool that cannot
        pass


def fixed_list_to_numpy(arr, dim: int) -> np.ndarray:
    """Zero-copy (n, dim) float32 view of an Arrow fixed_size_list<float> array without nulls."""
    if arr.null_count:
        raise StateError("embeddings table holds a missing vector; re-ingest the dataset.")
    if arr.type.list_size != dim:
        raise StateError(f"embeddings have {arr.type.list_size} values, {dim} were recorded.")
    return arr.flatten().to_numpy(zero_copy_only=True).reshape(len(arr), dim)


def vectors_to_arrow(vecs: np.ndarray):
    """Zero-copy Arrow fixed_size_list<float32> array over a C-contiguous (n, d) float32 array."""
    import pyarrow as pa

    vecs = np.ascontiguousarray(vecs, dtype=np.float32)
    n, d = vecs.shape
    values = pa.Array.from_buffers(pa.float32(), n * d, [None, pa.py_buffer(vecs)])
    return pa.FixedSizeListArray.from_arrays(values, d)


def fingerprint_hasher(samples):
    """A blake2b hasher fed the schema version and the samples table (Arrow IPC bytes); the
    vectors follow (:func:`compute_fingerprint`, or :func:`curation.vector_io.write_shards` while
    it writes them)."""
    import pyarrow as pa

    h = hashlib.blake2b(digest_size=16)
    h.update(f"schema{S.SCHEMA_VERSION}".encode())
    # the IPC bytes go straight into the hash as they are written (the same bytes as writing the
    # stream to a buffer first, without the buffer: a copy of the whole samples table at ingest)
    with pa.ipc.new_stream(pa.PythonFile(_HashWriter(h), mode="w"), samples.schema) as w:
        w.write_table(samples)
    return h


class _HashWriter:
    """A write-only file object that feeds a hasher."""

    closed = False

    def __init__(self, h):
        self.h = h

    def write(self, data) -> int:
        self.h.update(data)
        return len(data) if not isinstance(data, memoryview) else data.nbytes

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    def writable(self) -> bool:
        return True


def compute_fingerprint(samples, vectors: Mapping[str, np.ndarray | None]) -> str:
    """Content hash of a dataset: the samples table (Arrow IPC bytes) and every vector byte.

    Two datasets with equal ids, metadata and embeddings have equal fingerprints; any change to a
    value changes it. blake2b runs at about 1 GB/s, so 1M x 512 x 2 costs about 4 s at ingest.
    Vectors stored as float32 shards hash to the same value as inline ones (same bytes); float16
    shards hash their float16 bytes, so they are a different dataset (their results differ).
    """
    h = fingerprint_hasher(samples)
    for kind in S.EMB_KINDS:
        v = vectors.get(kind)
        h.update(kind.encode())
        if v is not None:
            h.update(str(v.shape).encode() + str(v.dtype).encode())
            flat = np.ascontiguousarray(v).reshape(-1).view(np.uint8)
            step = 1 << 26
            for i in range(0, len(flat), step):
                h.update(flat[i : i + step])
    return h.hexdigest()
