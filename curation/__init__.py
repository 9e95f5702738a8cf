"""curation: curate medical image-text datasets from precomputed embeddings.

The library is usable without the app: open a dataset with :func:`curation.store.open_store`,
analyse it with :mod:`curation.analysis`, select with :mod:`curation.selection`.
Importing this package is cheap: duckdb, faiss, umap, hdbscan and torch are imported inside
the functions that need them.
"""

__version__ = "0.1.0"

from curation.errors import CurationError, InputError  # noqa: E402,F401
