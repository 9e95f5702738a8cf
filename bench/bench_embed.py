"""Embedding throughput: image-text pairs per second through ``curation.embed`` (JPEG decoding,
preprocessing, tokenising, both encoders, writing shards), against the obvious alternative in the
same process: the same batches with decoding in the main process (no DataLoader workers).

    python bench/bench_embed.py [--pairs 512] [--model ViT-B-16] [--batch-size 256] [--device auto]
                                [--backends local,ray]

Input: the real MedPix images (256x256 JPEG, ``../shared/datasets/medpix/images.tgz``) with their
captions, repeated to ``--pairs``; without them, generated 256x256 JPEGs. Weights are random
(``--pretrained random``): speed does not depend on them. Target (DESIGN section 7): >= 2,000 pairs/s
for ViT-B-16 on one H100 with image decoding included. On a 2-core CPU expect a few pairs/s.
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
MEDPIX = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "medpix"


def make_pairs(folder: Path, n: int) -> Path:
    """captions.csv + images/ with n pairs (MedPix images repeated, or generated ones)."""
    img_dir = folder / "images"
    img_dir.mkdir(parents=True)
    if (MEDPIX / "images.tgz").exists():
        with tarfile.open(MEDPIX / "images.tgz") as tf:
            tf.extractall(folder, filter="data")
        rows = list(csv.DictReader(open(MEDPIX / "metadata.csv", encoding="utf-8")))
        src = "MedPix 256x256 JPEG"
    else:
        from PIL import Image

        rng = np.random.default_rng(0)
        rows = []
        for i in range(64):
            Image.fromarray((rng.random((256, 256)) * 255).astype("uint8")).save(img_dir / f"g{i}.jpg")
            rows.append({"id": f"g{i}", "image": f"images/g{i}.jpg", "caption": f"generated image {i}"})
        src = "generated 256x256 JPEG"
    with open(folder / "captions.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["id", "image", "caption"])
        for i in range(n):
            r = rows[i % len(rows)]
            w.writerow([f"{i:07d}", r["image"], r["caption"]])
    return folder / "captions.csv", src


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=512)
    ap.add_argument("--model", default="ViT-B-16",
                    help="open_clip architecture (random weights); 'tiny' = a 32-d toy model that makes "
                         "the run bound by image decoding, to measure the data pipeline alone")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--backends", default="local", help="comma list of local, ray")
    ap.add_argument("--skip-alternative", action="store_true")
    a = ap.parse_args()

    import torch

    from curation import embed

    dev = embed.resolve_device(a.device)
    tmp = Path(tempfile.mkdtemp(prefix="bench_embed_"))
    try:
        table, src = make_pairs(tmp / "in", a.pairs)
        if a.model == "tiny":
            a.model = embed.save_model_dir(tmp / "tiny", {**embed.TINY_MODEL_CFG,
                                                          "vision_cfg": {**embed.TINY_MODEL_CFG["vision_cfg"],
                                                                         "image_size": 224, "patch_size": 32}})
        t = time.time()
        bundle = embed.load_model(a.model, "random", dev)
        load_s = time.time() - t
        name = torch.cuda.get_device_name() if dev.startswith("cuda") else f"CPU ({os.cpu_count()} cores, " \
            f"{torch.get_num_threads()} torch threads)"
        print(f"model {a.model} (random weights, {bundle[3]['n_params'] / 1e6:.0f}M params, built in {load_s:.1f} s); "
              f"device {name}; {a.pairs} pairs of {src}; batch {a.batch_size}")
        pairs = embed.TablePairs(table, tmp / "in")
        results = []

        def run(label, **kw):
            cfg = embed.EmbedConfig(model=a.model, pretrained="random", batch_size=a.batch_size,
                                    device=dev, shard_size=max(a.pairs // 2, 1), **kw)
            out = tmp / label.replace(" ", "_")
            # warm-up on one batch (CUDA context, kernels) kept out of the timing
            embed.embed(embed.TablePairs(table, tmp / "in"), tmp / "warm", cfg, progress=False,
                        max_shards=1, model_bundle=bundle, overwrite=True) if dev.startswith("cuda") else None
            t0 = time.time()
            if label.startswith("ray"):
                from curation import embed_ray

                rec = embed_ray.embed_ray(pairs, out, cfg, progress=False)
            else:
                rec = embed.embed(pairs, out, cfg, progress=False, model_bundle=bundle)
            secs = time.time() - t0
            results.append((label, rec["embedded"], secs, rec["workers"], rec["precision"]))
            print(f"  {label:<34} {rec['embedded']:>7,} pairs {secs:8.1f} s {rec['embedded'] / secs:9.1f} pairs/s "
                  f"(workers {rec['workers']}, {rec['precision']})", flush=True)

        for b in a.backends.split(","):
            if b == "local":
                run("curation.embed (DataLoader workers)", workers=a.workers)
            elif b == "ray":
                run("ray backend (local Ray instance)", workers=a.workers)
        if not a.skip_alternative:
            run("alternative: decode in main process", workers=0)
        base = results[0][1] / results[0][2]
        print("\n| path | pairs | seconds | pairs/s | ratio to first |\n| --- | --- | --- | --- | --- |")
        for label, n, secs, _, _ in results:
            print(f"| {label} | {n:,} | {secs:.1f} | {n / secs:.1f} | {(n / secs) / base:.2f} |")
        if dev.startswith("cuda"):
            print(f"target: >= 2,000 pairs/s on one H100 -> {'met' if base >= 2000 else 'missed'} ({base:.0f})")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
