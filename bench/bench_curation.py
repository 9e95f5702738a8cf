"""What the default selection does on real pools, measured the way a curator would: each measure of
the default subset against 10 seeded random subsets of the same size (mean +- std), CheXficient's
distance bands (the default before config version 3) and the issue-24 reference, at 10%, 25% and 50%.

    python bench/bench_curation.py [--datasets padchest,medpix,demo] [--budgets 0.1,0.25,0.5] [--work DIR]

- PadChest (160,745 real chest X-ray reports, text-only, ../shared/datasets/padchest): the share of
  "normal" reports (CheXficient's normal noise floor; lower keeps fewer of them), the number of
  distinct first labels, and the share of rare labels (held by <= 20 rows) the subset covers;
- MedPix (2,050 real CT/MR pairs): cluster and rare-cluster coverage, the diagnosis codes (acr_codes)
  covered, placeholder captions kept, in-case near-duplicates kept;
- the demo (20,000 synthetic pairs with planted truth): planted clusters and rare planted clusters
  covered, planted mismatched pairs and duplicate copies kept.

Datasets are ingested and analysed once into --work (default /tmp/curation-bench) and reused.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared" / "datasets"
N_RANDOM = 10


def _cli(*args) -> None:
    from curation.cli import main

    code = main([str(a) for a in args])
    if code:
        raise SystemExit(f"failed: python -m curation {' '.join(map(str, args))}")


def build(name: str, work: Path) -> Path:
    """The analysed dataset ``name`` under ``work`` (built on first use)."""
    db = work / f"{name}.duckdb"
    if db.exists():
        return db
    work.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    if name == "padchest":
        src = SHARED / "padchest"
        subprocess.run([sys.executable, str(src / "expand.py"), str(src), str(work)], check=True, capture_output=True)
        _cli("ingest", db, "--metadata", work / "metadata.csv", "--text-emb", work / "text.npy", "--id-column", "id",
             "--label-columns", "labels,label_major,is_normal")
        _cli("analyze", db, "--space", "text", "--seed", "0")
    elif name == "medpix":
        src = SHARED / "medpix"
        _cli("ingest", db, "--metadata", src / "metadata.csv", "--image-emb", src / "image_mobilenetv2.npy",
             "--text-emb", src / "text_minilm.npy", "--label-columns", "acr_codes,location_category")
        _cli("analyze", db, "--seed", "0")
    elif name == "demo":
        _cli("demo", "--db", db, "--no-images")
        _cli("analyze", db, "--seed", "0")
    print(f"[{name}: built in {time.perf_counter() - t:.0f} s]", file=sys.stderr)
    return db


def reference(inp, count: int) -> np.ndarray:
    """Issue 24's 20-line reference: 44% of the budget as the non-duplicate rows of highest global
    tail_score, the rest round-robin over prototypes in FPS order."""
    from curation.selection import _rank_within

    _, dup = inp.duplicates(0.05)
    ok = np.flatnonzero(~dup)
    t = int(0.44 * count)
    tail = ok[np.argsort(-inp.tail_score[ok], kind="stable")[:t]]
    rest = np.setdiff1d(ok, tail)
    rk = _rank_within(inp.prototype[rest].astype(np.int64), inp.fps_rank[rest].astype(np.int64) + 1, inp.n + 1)
    return np.concatenate([tail, rest[np.lexsort((inp.prototype[rest], rk))][: count - t]])


def measures(name: str, db: Path):
    """(inputs, {measure: function(rows) -> float}, {measure: "higher" | "lower"})."""
    from curation import selection, store
    from curation.metrics import LabelColumn

    with store.open_store(db) as s:
        inp = selection.load_inputs(s)
        meta = s.samples()
        truth = s.read_table("demo_truth") if s.has_table("demo_truth") else None
    n = inp.n

    def mask(rows):
        m = np.zeros(n, bool)
        m[rows] = True
        return m

    k = int(inp.prototype.max()) + 1
    from curation.prototypes import rare_clusters

    rare_cl = rare_clusters(np.bincount(inp.prototype, minlength=k))

    def coverage(rows):
        return float((np.bincount(inp.prototype[rows], minlength=k) > 0).mean())

    def rare_coverage(rows):
        return float((np.bincount(inp.prototype[rows], minlength=k) > 0)[rare_cl].mean())

    if name == "padchest":
        labels, major = LabelColumn("labels", meta["labels"]), LabelColumn("label_major", meta["label_major"])
        normal = meta["is_normal"].astype(bool).to_numpy()
        f = {"normal share": lambda r: float(normal[r].mean()),
             "distinct first labels": lambda r: float(major.impact(mask(r), len(r))["label_label_major_class_coverage"]
                                                      * len(major.names)),
             "rare labels covered": lambda r: labels.impact(mask(r), len(r))["label_labels_rare_class_coverage"]}
        better = {"normal share": "lower", "distinct first labels": "higher", "rare labels covered": "higher"}
    elif name == "medpix":
        acr = LabelColumn("acr_codes", meta["acr_codes"])
        _, dup = inp.duplicates(0.05)
        placeholder = np.asarray(inp.scores["caption"]) <= np.nanquantile(inp.scores["caption"], 0.02)
        f = {"clusters covered": coverage, "rare clusters covered": rare_coverage,
             "diagnosis codes covered": lambda r: acr.impact(mask(r), len(r))["label_acr_codes_class_coverage"],
             "rare codes covered": lambda r: acr.impact(mask(r), len(r))["label_acr_codes_rare_class_coverage"],
             "worst-2% captions": lambda r: float(placeholder[r].mean()),
             "near-duplicates": lambda r: float(dup[r].mean())}
        better = {"clusters covered": "higher", "rare clusters covered": "higher", "diagnosis codes covered": "higher",
                  "rare codes covered": "higher", "worst-2% captions": "lower", "near-duplicates": "lower"}
    else:
        tc = truth["true_cluster"].to_numpy()
        size = truth["cluster_size"].to_numpy()
        rare_true = np.unique(tc[size < 100])
        mis = truth["is_mismatched"].to_numpy().astype(bool)
        copy = truth["is_dup_copy"].to_numpy().astype(bool)
        f = {"planted clusters covered": lambda r: len(np.unique(tc[r])) / len(np.unique(tc)),
             "rare planted clusters covered": lambda r: float(np.isin(rare_true, tc[r]).mean()),
             "mismatched pairs": lambda r: float(mis[r].mean()),
             "duplicate copies": lambda r: float(copy[r].mean())}
        better = {"planted clusters covered": "higher", "rare planted clusters covered": "higher",
                  "mismatched pairs": "lower", "duplicate copies": "lower"}
    return inp, f, better


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", default="padchest,medpix,demo")
    p.add_argument("--budgets", default="0.1,0.25,0.5")
    p.add_argument("--work", default="/tmp/curation-bench")
    a = p.parse_args(argv)
    from curation import selection
    from curation.selection import V2_DEFAULTS, SelectionConfig

    work = Path(a.work)
    print("| dataset | budget | measure | random (10 seeds) | default | ratio | CheXficient bands | reference |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name in [d.strip() for d in a.datasets.split(",") if d.strip()]:
        if name in ("padchest", "medpix") and not (SHARED / name).is_dir():
            print(f"[{name}: {SHARED / name} not found; skipped]", file=sys.stderr)
            continue
        inp, f, better = measures(name, build(name, work))
        for b in [float(x) for x in a.budgets.split(",")]:
            count = int(round(b * inp.n))
            default = selection.select(inp, SelectionConfig(budget=b)).selected
            bands = selection.select(inp, SelectionConfig(budget=b, **V2_DEFAULTS)).selected
            ref = reference(inp, count)
            rnd = [np.random.default_rng(1000 + i).choice(inp.n, count, replace=False) for i in range(N_RANDOM)]
            for m, fn in f.items():
                r = np.array([fn(x) for x in rnd])
                d = fn(default)
                sd = r.std(ddof=1)
                mark = "" if not sd else f" ({(d - r.mean()) / sd:+.1f} sd)"
                ratio = d / r.mean() if r.mean() else float("nan")
                print(f"| {name} | {b:.0%} | {m} ({better[m]} is better) | {r.mean():.3f} +- {sd:.3f} | "
                      f"**{d:.3f}**{mark} | {ratio:.2f} | {fn(bands):.3f} | {fn(ref):.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
