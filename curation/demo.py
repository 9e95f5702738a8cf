"""The built-in demo dataset: a deterministic, synthetic medical image-text pool with ground truth.

Nothing here is real patient data. :func:`generate` builds, from one seed:

- ``n_clusters`` latent "findings" (anatomy region x finding) with Zipf-like sizes, so a few
  clusters hold most samples and the smallest hold ``min_cluster`` (a real long tail);
- image and text embeddings in one CLIP-like shared space (``shared_space=True``): each sample has
  a latent content vector near its cluster centre; the image vector adds a **site** and a
  **scanner** signature (planted confounders: site is also tied to clusters, scanner to site),
  the text vector is the content plus text noise;
- random columns with no planted signal: ``sex`` (with a few missing values), ``age``, ``view``;
- ``case_id`` (1-3 images per case) and a case-level ``split``; ``finding`` as a label column;
- near-duplicate groups: copies of a sample with tiny perturbations, same case, same caption;
- mismatched pairs: the caption (and text vector) of a sample from another cluster;
- templated captions and small generated grayscale images (one per sample) for thumbnails.

The ground truth goes into the ``demo_truth`` table (``row_idx``, ``id``, ``true_cluster``,
``cluster_size``, ``dup_group``, ``is_dup_copy``, ``is_mismatched``) and never into ``samples``.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from curation import store
from curation import schema as S
from curation.errors import CurationError
from curation.schema import check_seed

log = logging.getLogger(__name__)

REGIONS = ["chest", "abdomen", "brain", "knee", "spine", "pelvis", "shoulder", "neck", "hand",
           "foot"]
FINDINGS = ["normal study", "pneumonia", "pleural effusion", "fracture", "mass", "hemorrhage",
            "edema", "nodule", "cyst", "calcification", "atelectasis", "cardiomegaly",
            "pneumothorax", "degenerative change", "infarct", "abscess", "hernia",
            "foreign body", "dislocation", "lymphadenopathy"]
MODALITIES = ["CT", "MR", "X-ray"]
SITES = ["site_A", "site_B", "site_C", "site_D"]
SCANNERS = {"site_A": ["GE_Revolution", "GE_Optima"], "site_B": ["Siemens_Somatom", "Siemens_Avanto"],
            "site_C": ["Philips_Ingenuity", "Philips_Achieva"], "site_D": ["Canon_Aquilion", "GE_Optima"]}
VIEWS = ["AP", "PA", "lateral", "axial"]
TEMPLATES = [
    "{mod} of the {region} showing {finding}.",
    "{mod} {region}: findings consistent with {finding}.",
    "{view} {mod} image of the {region} demonstrates {finding}.",
    "{region} {mod}, {view} view. Impression: {finding}.",
]


@dataclass(frozen=True)
class DemoSpec:
    """Parameters of the generated demo (defaults: about 20k pairs, 512-d, built in seconds)."""

    n_rows: int = 20_000
    seed: int = 0
    dim: int = 512
    n_clusters: int = 40
    zipf_a: float = 1.5
    min_cluster: int = 15
    spread: float = 0.8          # within-cluster noise (cos to centre ~ 1/sqrt(1+spread^2))
    site_strength: float = 0.45  # norm of the site signature added to image vectors
    scanner_strength: float = 0.3
    site_affinity: float = 0.7   # probability a sample comes from its cluster's preferred site
    dup_fraction: float = 0.03   # fraction of rows that are near-duplicate copies
    dup_noise: float = 0.08      # perturbation of a copy (cos to its source ~ 0.997)
    mismatch_fraction: float = 0.02
    image_size: int = 64

    def validate(self) -> None:
        """One clear error for a parameter the generator cannot use (the CLI's flags land here)."""

        check_seed(self.seed)
        for name, low in (("dim", 8), ("n_clusters", 2), ("n_rows", self.n_clusters * self.min_cluster)):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < low:
                flag = {"dim": "--dim", "n_rows": "--rows"}.get(name, name)
                raise CurationError(f"{flag} {v!r}: the demo needs a whole number of at least {low}.")


def cluster_sizes(n: int, k: int, a: float, min_size: int) -> np.ndarray:
    """Zipf-like sizes (rank^-a) summing to ``n``, each at least ``min_size``, largest first."""
    if n < k * min_size:
        raise ValueError(f"n={n} too small for {k} clusters of at least {min_size}")
    w = 1.0 / np.arange(1, k + 1) ** a
    sizes = np.maximum(np.floor(w / w.sum() * n).astype(int), min_size)
    sizes[0] += n - sizes.sum()  # the head absorbs rounding
    if sizes[0] < sizes[1]:
        raise ValueError("zipf_a too flat for these sizes")
    return sizes


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def generate(spec: DemoSpec = DemoSpec()):
    """Generate the demo in memory.

    Returns
    -------
    samples : pyarrow.Table
        id, image (relative path), caption and metadata columns, n_rows rows.
    vectors : dict
        {"image": float32 (n_rows, dim), "text": float32 (n_rows, dim)}, L2-normalised.
    truth : pandas.DataFrame
        Ground truth per row (see the module docstring).
    draw : dict
        Per-row parameters for :func:`write_images`.
    """
    import pandas as pd
    import pyarrow as pa

    spec.validate()
    rng = np.random.default_rng(spec.seed)
    n, d, k = spec.n_rows, spec.dim, spec.n_clusters
    n_copies = int(round(spec.dup_fraction * n))
    n_base = n - n_copies
    sizes = cluster_sizes(n_base, k, spec.zipf_a, spec.min_cluster)

    centres = _unit(rng.standard_normal((k, d)))
    site_dirs = _unit(rng.standard_normal((len(SITES), d)))
    all_scanners = sorted({s for v in SCANNERS.values() for s in v})
    scanner_dirs = _unit(rng.standard_normal((len(all_scanners), d)))
    # distinct (region, finding) per cluster for up to len(REGIONS) * len(FINDINGS) clusters
    combos = [(REGIONS[i % len(REGIONS)], FINDINGS[(13 * (i // len(REGIONS)) + i) % len(FINDINGS)])
              for i in range(k)]
    cluster_mod = rng.integers(0, len(MODALITIES), k)
    cluster_site = np.arange(k) % len(SITES)  # preferred site of each cluster

    cl = np.repeat(np.arange(k), sizes)
    noise = rng.standard_normal((n_base, d)).astype(np.float32) / np.sqrt(d)
    content = centres[cl] + spec.spread * noise
    # site: preferred site of the cluster with probability site_affinity, else uniform
    site = np.where(rng.random(n_base) < spec.site_affinity, cluster_site[cl],
                    rng.integers(0, len(SITES), n_base))
    scanner = np.array([all_scanners.index(SCANNERS[SITES[s]][j])
                        for s, j in zip(site, rng.integers(0, 2, n_base))])

    # near-duplicate copies of random base samples (never of a copy)
    src = rng.choice(n_base, size=n_copies, replace=True)
    dup_noise = spec.dup_noise * rng.standard_normal((n_copies, d)).astype(np.float32) / np.sqrt(d)
    content = np.concatenate([content, content[src] + dup_noise])
    cl = np.concatenate([cl, cl[src]])
    site = np.concatenate([site, site[src]])
    scanner = np.concatenate([scanner, scanner[src]])
    origin = np.concatenate([np.arange(n_base), src])  # base sample each row copies (itself)

    img = content + spec.site_strength * site_dirs[site] + spec.scanner_strength * scanner_dirs[scanner]
    img = img + 0.3 * rng.standard_normal((n_base, d)).astype(np.float32)[origin] / np.sqrt(d)
    txt = content + 0.3 * rng.standard_normal((n_base, d)).astype(np.float32)[origin] / np.sqrt(d)

    # captions (copies share their source's caption), then mismatches swap in a foreign caption
    tmpl = rng.integers(0, len(TEMPLATES), n_base)[origin]
    view = rng.integers(0, len(VIEWS), n_base)[origin]
    captions = np.array([TEMPLATES[t].format(mod=MODALITIES[cluster_mod[c]], region=combos[c][0],
                                             finding=combos[c][1], view=VIEWS[v])
                         for t, c, v in zip(tmpl, cl, view)], dtype=object)
    is_copy = np.arange(n) >= n_base
    mismatched = np.zeros(n, dtype=bool)
    cand = np.flatnonzero(~is_copy & ~np.isin(np.arange(n), src))
    mm = rng.choice(cand, size=int(round(spec.mismatch_fraction * n)), replace=False)
    for i in mm:
        j = rng.integers(0, n_base)
        while cl[j] == cl[i]:
            j = rng.integers(0, n_base)
        txt[i] = txt[j]
        captions[i] = captions[j]
    mismatched[mm] = True

    # shuffle rows so clusters, copies and mismatches are interleaved as in a real pool
    perm = rng.permutation(n)
    inv = np.empty(n, dtype=np.int64)
    inv[perm] = np.arange(n)
    img, txt, cl, site, scanner, origin = img[perm], txt[perm], cl[perm], site[perm], scanner[perm], origin[perm]
    captions, view, is_copy, mismatched = captions[perm], view[perm], is_copy[perm], mismatched[perm]

    # cases: copies join their source's case; others form cases of 1-3 images per cluster
    case = np.full(n, -1, dtype=np.int64)
    next_case = 0
    base_rows = np.flatnonzero(~is_copy)
    for c in range(k):
        rows = base_rows[cl[base_rows] == c]
        i = 0
        while i < len(rows):
            m = int(rng.integers(1, 4))
            case[rows[i : i + m]] = next_case
            next_case += 1
            i += m
    src_row = inv[origin]  # row (after shuffling) of each row's base sample
    case[is_copy] = case[src_row[is_copy]]
    case_split = rng.choice(["train", "val", "test"], size=next_case, p=[0.7, 0.15, 0.15])
    sex = rng.choice(np.array(["F", "M"], dtype=object), size=n)
    sex[rng.random(n) < 0.01] = None
    age = rng.integers(18, 91, n)

    # duplicate groups: a base sample with copies, and its copies
    has_copy = np.zeros(n, dtype=bool)
    has_copy[src_row[is_copy]] = True
    dup_group = np.where(is_copy | has_copy, src_row, -1)

    ids = np.array([f"demo-{i:06d}" for i in range(n)], dtype=object)
    images = np.array([f"images/{i // 1000:03d}/{ids[i]}.png" for i in range(n)], dtype=object)
    samples = pa.table({
        "id": ids, "image": images, "caption": captions.astype(str),
        "case_id": np.array([f"case-{c:05d}" for c in case], dtype=object),
        "site": np.array(SITES, dtype=object)[site],
        "scanner": np.array(all_scanners, dtype=object)[scanner],
        "view": np.array(VIEWS, dtype=object)[view],
        "sex": pa.array(sex, type=pa.string()), "age": age.astype(np.int64),
        "split": case_split[case],
        "finding": np.array([f"{combos[c][0]} {combos[c][1]}" for c in range(k)], dtype=object)[cl],
    })
    truth = pd.DataFrame({
        "row_idx": np.arange(n), "id": ids, "true_cluster": cl, "cluster_size": sizes[cl],
        "dup_group": dup_group, "is_dup_copy": is_copy, "is_mismatched": mismatched,
    })
    draw = {"cluster": cl, "site": site, "origin": origin, "n_clusters": k}
    return samples, {"image": _unit(img), "text": _unit(txt)}, truth, draw


def write_images(folder: Path, samples, draw: dict, size: int = 64, seed: int = 0) -> None:
    """Write one small grayscale PNG per sample: an ellipse whose place and size depend on the
    cluster, brightness on the site, texture noise on the sample (copies look like their source).
    """
    from PIL import Image, ImageDraw

    k = draw["n_clusters"]
    crng = np.random.default_rng(seed + 1)
    shapes = crng.uniform(0.2, 0.8, (k, 4))
    paths = samples.column("image").to_pylist()
    made = set()
    for i, rel in enumerate(paths):
        p = folder / rel
        if p.parent not in made:
            p.parent.mkdir(parents=True, exist_ok=True)
            made.add(p.parent)
        r = np.random.default_rng(int(draw["origin"][i]) + seed * 1_000_003)
        base = (r.standard_normal((size, size)) * 12 + 40 + 12 * draw["site"][i]).clip(0, 255)
        im = Image.fromarray(base.astype(np.uint8), mode="L")
        cx, cy, w, h = shapes[draw["cluster"][i]] * size
        ImageDraw.Draw(im).ellipse([cx - w / 3, cy - h / 3, cx + w / 3, cy + h / 3],
                                   fill=int(150 + 80 * r.random()))
        im.save(p, optimize=False, compress_level=1)


def build(db: str | Path = "data/demo.duckdb", spec: DemoSpec = DemoSpec(), *, replace: bool = False,
          images: bool = True, vector_layout: str = "auto", vector_dtype: str = "auto") -> str:
    """Generate the demo and write it as the dataset ``db`` (images under ``<db stem>_images/``).

    Returns the dataset fingerprint.
    """

    db = Path(db)
    samples, vectors, truth, draw = generate(spec)
    img_dir = db.parent / f"{db.name.removesuffix(store.SUFFIX)}_images"
    if images:
        write_images(img_dir, samples, draw, size=spec.image_size, seed=spec.seed)
    meta = {"image_model": "synthetic (demo)", "text_model": "synthetic (demo)", "shared_space": True,
            "source": "demo", "image_root": img_dir.name if images else None,
            "label_column": "finding", "label_columns": ["finding"], "case_column": "case_id", "demo_spec": asdict(spec)}
    return store.create_dataset(db, samples, vectors, meta=meta, replace=replace,
                                extra_tables={S.TRUTH: truth}, vector_layout=vector_layout, vector_dtype=vector_dtype)


def planted_ratings(db, n: int | None = None, *, noise: float = 0.3, seed: int = 0):
    """Ratings a careful rater would give the demo's pairs, from the planted ground truth plus noise.

    The demo plants one quality defect, the mismatched pair (a caption from another cluster), so
    the truth behind both axes is binary: fidelity 1.0 for a mismatched pair and 4.5 otherwise,
    consistency 1.5 and 4.0; Gaussian rater noise (sd ``noise``) is added. With 2% mismatched pairs
    and noise 0.3 the best possible Pearson r is about 0.85 (fidelity) and 0.76 (consistency). ``n`` pairs are drawn
    uniformly at random (all when None). Returns a DataFrame ``id, fidelity, consistency`` in the
    CSV shape ``python -m curation reward train --ratings`` reads.
    """
    import pandas as pd


    with store.open_store(db) as s:
        if not s.has_table(S.TRUTH):
            raise ValueError(f"{db} is not a generated demo (no {S.TRUTH} table)")
        truth = s.read_table(S.TRUTH, ["id", "is_mismatched"])
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(len(truth), size=min(n or len(truth), len(truth)), replace=False))
    bad = truth["is_mismatched"].to_numpy()[rows]
    return pd.DataFrame({"id": truth["id"].to_numpy()[rows],
                         "fidelity": np.where(bad, 1.0, 4.5) + noise * rng.standard_normal(len(rows)),
                         "consistency": np.where(bad, 1.5, 4.0) + noise * rng.standard_normal(len(rows))})
