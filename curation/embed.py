"""Image and caption embeddings with open_clip, written as shards that ``ingest`` reads.

Inputs (a *pool of pairs*):

- a captions table (CSV / TSV / Parquet / JSONL) naming an image path and a caption per row,
  images resolved against an image folder (:class:`TablePairs`);
- WebDataset tar shards: members grouped by key (``0001.jpg``, ``0001.txt``, ``0001.json``), as
  PMC-derived sets such as Open-PMC are distributed (:class:`TarPairs`).

Models: any open_clip name with a pretrained tag (``ViT-B-16`` + ``laion2b_s34b_b88k``), a hub id
(``hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224``), a downloaded model folder
(``local-dir:/models/biomedclip``), or an architecture with a local checkpoint file
(``--pretrained /path/to/weights.pt``). ``--pretrained random`` gives random weights (benchmarks).

Output, the clip-retrieval layout :func:`curation.ingest.read_clip_retrieval` reads::

    OUT/embed_info.json            model, weights hash, input fingerprint, config, progress
    OUT/img_emb/img_emb_{i}.npy    (n_i, d) L2-normalised, float16 or float32
    OUT/text_emb/text_emb_{i}.npy
    OUT/metadata/metadata_{i}.parquet   id, image, caption, metadata columns (embedded rows only)
    OUT/skipped/skipped_{i}.csv    id, reason: pairs that could not be embedded

A shard is finished when its metadata file exists (written last, atomically); a rerun with the same
model and input skips finished shards. One unreadable image or empty caption is reported and
skipped, never a crash of the run.

torch and open_clip are imported inside functions: ``import curation`` stays light.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from curation import schema as S
from curation.atomic import atomic_write
from curation.errors import CurationError, PairError
from curation.models import (TINY_MODEL_CFG, load_model, resolve_device, save_model_dir, set_offline, weights_hash)
from curation.pairs import Shard, TablePairs, TarPairs

log = logging.getLogger(__name__)

INFO = "embed_info.json"
OUT_DTYPES = ("float16", "float32")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@dataclass
class EmbedConfig:
    """How to embed. ``workers=None`` and ``device``/``precision`` ``"auto"`` pick per machine."""

    model: str
    pretrained: str | None = None
    batch_size: int = 256
    workers: int | None = None
    device: str = "auto"
    precision: str = "auto"
    out_dtype: str = "float16"
    shard_size: int = 10_000

    def check(self) -> None:
        if self.batch_size < 1:
            raise CurationError(f"--batch-size {self.batch_size} must be >= 1.")
        if self.shard_size < 1:
            raise CurationError(f"--shard-size {self.shard_size} must be >= 1.")
        if self.workers is not None and self.workers < 0:
            raise CurationError(f"--workers {self.workers} must be 0 (load in the main process) or more.")
        if self.out_dtype not in OUT_DTYPES:
            raise CurationError(f"--dtype {self.out_dtype!r}: use one of {', '.join(OUT_DTYPES)}.")
        if self.precision not in PRECISIONS:
            raise CurationError(f"--precision {self.precision!r}: use one of {', '.join(PRECISIONS)}.")


# ---------------------------------------------------------------------------------------------
# the run
# ---------------------------------------------------------------------------------------------
def load_pair(pairs, item, handles: dict, transform):
    """(transform(image), caption, None) for one pair, or (None, None, reason) when it cannot be
    embedded: a missing, unreadable or undecodable image (:class:`PairError`, raised by the pair
    sources), or an image the transform cannot convert (PIL's OSError / ValueError while converting
    an odd mode). Anything else is a bug in the transform or the model and fails the run, which is
    then not marked complete."""
    try:
        img, caption = pairs.load(item, handles)
        if not isinstance(caption, str) or not caption.strip():
            raise PairError("empty caption")
    except PairError as e:
        return None, None, str(e)
    try:
        return transform(img), caption, None
    except (OSError, ValueError) as e:  # PIL decodes lazily and converts modes inside the transform
        return None, None, f"image could not be converted ({type(e).__name__}: {e})"


class _Dataset:
    """Map-style dataset over the items of the pending shards, in order (a torch ``Dataset`` by
    duck typing); :meth:`locate` maps a global index back to (shard, position in the shard)."""

    def __init__(self, pairs, shards, preprocess):
        self.pairs, self.shards, self.preprocess = pairs, shards, preprocess
        self.starts = np.cumsum([0] + [len(sh.items) for sh in shards])
        self._handles = {}

    def __len__(self):
        return int(self.starts[-1])

    def locate(self, i: int):
        k = int(np.searchsorted(self.starts, i, side="right")) - 1
        return self.shards[k], i - int(self.starts[k])

    def __getitem__(self, i):
        shard, pos = self.locate(i)
        return (i, *load_pair(self.pairs, shard.items[pos], self._handles, self.preprocess))


class _Collate:
    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def __call__(self, batch):
        import torch

        ok = [b for b in batch if b[3] is None]
        bad = [(b[0], b[3]) for b in batch if b[3] is not None]
        if not ok:
            return [], None, None, bad
        return ([b[0] for b in ok], torch.stack([b[1] for b in ok]),
                self.tokenizer([b[2] for b in ok]), bad)


def _shard_files(out: Path, i: int) -> dict:
    return {"image": out / "img_emb" / f"img_emb_{i:05d}.npy", "text": out / "text_emb" / f"text_emb_{i:05d}.npy",
            "meta": out / "metadata" / f"metadata_{i:05d}.parquet", "skipped": out / "skipped" / f"skipped_{i:05d}.csv"}


def plan(pairs, out, cfg: EmbedConfig, info: dict, overwrite: bool = False) -> tuple[list, dict]:
    """Check ``out`` against this run, return (pending shards, the info record)."""
    out = Path(out)
    shards = pairs.shards(cfg.shard_size)
    record = {"format": 1, "model": info["model"], "pretrained": info["pretrained"],
              "weights_sha256": info["weights_sha256"], "embed_dim": info["embed_dim"],
              "input": pairs.describe(), "input_fingerprint": pairs.fingerprint(),
              "shard_size": cfg.shard_size if pairs.kind == "table" else None,
              "out_dtype": cfg.out_dtype, "normalized": True, "n_shards": len(shards),
              "image_root": getattr(pairs, "image_root", None) and str(Path(pairs.image_root).resolve())}
    info_path = out / INFO
    if info_path.exists():
        old = json.loads(info_path.read_text())
        keys = ("model", "pretrained", "weights_sha256", "input_fingerprint", "shard_size", "out_dtype")
        diff = [k for k in keys if old.get(k) != record[k]]
        if diff and not overwrite:
            raise CurationError(f"{out} holds shards of a different run ({', '.join(diff)} differ: "
                                f"{old.get(diff[0])!r} there vs {record[diff[0]]!r} now). Fix: pass a new output "
                                "folder, or --overwrite to discard them.")
        if diff or overwrite:
            import shutil

            for sub in ("img_emb", "text_emb", "metadata", "skipped"):
                shutil.rmtree(out / sub, ignore_errors=True)
    elif out.exists() and any(out.iterdir()) and not overwrite:
        raise CurationError(f"{out} exists and is not an embed output folder. Fix: pass an empty or new folder.")
    for sub in ("img_emb", "text_emb", "metadata", "skipped"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    pending = [s for s in shards if not _shard_files(out, s.index)["meta"].exists()]
    return pending, record


def embed(pairs, out, cfg: EmbedConfig, *, overwrite: bool = False, progress=True,
          max_shards: int | None = None, model_bundle=None) -> dict:
    """Embed every pair of ``pairs`` into ``out`` (see the module docstring for the layout).

    Parameters
    ----------
    max_shards : int, optional
        Stop after this many shards (a controlled interruption: tests and staged runs).
    model_bundle : tuple, optional
        ``(model, preprocess, tokenizer, info)`` from :func:`load_model`, to reuse a loaded model.

    Returns
    -------
    dict : the ``embed_info.json`` record with counts and timings.
    """
    import torch

    cfg.check()
    out = Path(out)
    device = resolve_device(cfg.device)
    net, preprocess, tokenizer, info = model_bundle or load_model(cfg.model, cfg.pretrained, device)
    net = net.to(device)
    pending, record = plan(pairs, out, cfg, info, overwrite)
    if max_shards is not None:
        pending = pending[:max_shards]
    precision = resolve_precision(cfg.precision, device)
    workers = cfg.workers
    if workers is None:
        cpus = os.cpu_count() or 1
        workers = min(8, max(cpus - 2, 1)) if device.startswith("cuda") else max(1, min(4, cpus // 2))
    record.update(device=device, precision=precision, workers=workers, batch_size=cfg.batch_size)
    write_info(out, {**record, "complete": False})

    remaining = {s.index: len(s.items) for s in pending}
    bufs = {s.index: new_buffer(len(s.items), info["embed_dim"], cfg.out_dtype) for s in pending}
    n_ok = n_bad = 0
    t0 = time.time()
    for s in pending:
        if not s.items:
            n_bad += flush_shard(pairs, s, out, bufs.pop(s.index))
    data = _Dataset(pairs, [s for s in pending if s.items], preprocess)
    if len(data):
        from torch.utils.data import DataLoader

        loader = DataLoader(data, batch_size=cfg.batch_size, shuffle=False, num_workers=workers,
                            collate_fn=_Collate(tokenizer), pin_memory=device.startswith("cuda"),
                            persistent_workers=False, prefetch_factor=4 if workers else None)
        bar = _bar(len(data), progress)
        with torch.inference_mode(), autocast_for(precision, device):
            for idx, images, tokens, bad in loader:
                if idx:
                    im, tx = encode_batch(net, images, tokens, device)
                for g, r, why in [(g, r, None) for r, g in enumerate(idx)] + [(g, None, w) for g, w in bad]:
                    shard, local = data.locate(g)
                    img_buf, txt_buf, okmask, skipped = bufs[shard.index]
                    if why is None:
                        img_buf[local], txt_buf[local], okmask[local] = im[r], tx[r], True
                    else:
                        skipped.append((local, why))
                    remaining[shard.index] -= 1
                    if remaining[shard.index] == 0:
                        n_bad += flush_shard(pairs, shard, out, bufs.pop(shard.index))
                n_ok += len(idx)
                bar.update(len(idx) + len(bad))
                bar.set_postfix(skipped=n_bad + sum(len(b[3]) for b in bufs.values()), refresh=False)
        bar.close()
    return finish(pairs, out, cfg, record, n_ok, n_bad, time.time() - t0)


def finish(pairs, out: Path, cfg: EmbedConfig, record: dict, n_ok: int, n_bad: int, secs: float) -> dict:
    """Record counts and timings of a run in ``embed_info.json`` (complete when every shard is)."""
    all_done = all(_shard_files(out, s.index)["meta"].exists() for s in pairs.shards(cfg.shard_size))
    record.update(complete=all_done, seconds_last_run=round(secs, 2), embedded_last_run=n_ok,
                  pairs_per_s_last_run=round((n_ok + n_bad) / secs, 2) if secs > 0 else None, **_totals(out))
    write_info(out, record)
    return record


def write_info(out: Path, record: dict) -> None:
    """Write ``embed_info.json`` atomically."""
    atomic_write(out / INFO, lambda p: p.write_text(json.dumps(record, indent=1)))


def new_buffer(n: int, dim: int, dtype: str):
    """A shard's buffer before :func:`flush_shard`: (image vectors, text vectors, embedded mask, skipped
    (position, reason) list)."""
    return np.zeros((n, dim), dtype), np.zeros((n, dim), dtype), np.zeros(n, bool), []


def resolve_precision(precision: str, device: str) -> str:
    import torch

    if precision != "auto":
        return precision
    if device.startswith("cuda"):
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp32"


def autocast_for(precision: str, device: str):
    import torch

    if device.startswith("cuda") and precision in ("bf16", "fp16"):
        return torch.autocast("cuda", dtype=torch.bfloat16 if precision == "bf16" else torch.float16)
    return contextlib.nullcontext()


def encode_batch(net, images, tokens, device: str):
    """L2-normalised float32 numpy (image, text) embeddings of one batch (call in inference mode)."""
    import torch

    im = net.encode_image(images.to(device, non_blocking=True))
    tx = net.encode_text(tokens.to(device, non_blocking=True))
    return (torch.nn.functional.normalize(im.float(), dim=-1).cpu().numpy(),
            torch.nn.functional.normalize(tx.float(), dim=-1).cpu().numpy())


def _bar(total, progress):
    from tqdm import tqdm

    return tqdm(total=total, unit="pair", unit_scale=True, smoothing=0.1, disable=not progress,
                desc="embedding", dynamic_ncols=True)


def flush_shard(pairs, shard: Shard, out: Path, buf) -> int:
    """Write one finished shard (vectors, skipped report, then metadata). Returns pairs skipped."""
    import pyarrow as pa
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    img, txt, okmask, skipped = buf
    files = _shard_files(out, shard.index)
    ok_pos = np.flatnonzero(okmask)
    ids = pairs.shard_ids(shard)
    rows = [(ids[local], reason) for local, reason in sorted(skipped)] + list(shard.skipped)
    atomic_write(files["image"], lambda p: np.save(open(p, "wb"), img[ok_pos]))
    atomic_write(files["text"], lambda p: np.save(open(p, "wb"), txt[ok_pos]))
    if rows:
        for rid, reason in rows[:5]:
            log.info("skipped %s: %s", rid, reason)
        atomic_write(files["skipped"], lambda p: pcsv.write_csv(
            pa.table({S.ID: [str(r[0]) for r in rows], "reason": [r[1] for r in rows]}), p))
    meta = pairs.shard_meta(shard, pa.array(ok_pos, pa.int64()))
    atomic_write(files["meta"], lambda p: pq.write_table(meta, p))
    return len(rows)


def _totals(out: Path) -> dict:
    import pyarrow.parquet as pq

    n = sum(pq.read_metadata(f).num_rows for f in (out / "metadata").glob("metadata_*.parquet"))
    skipped = 0
    for f in (out / "skipped").glob("skipped_*.csv"):
        skipped += max(sum(1 for _ in open(f, encoding="utf-8")) - 1, 0)
    return {"embedded": n, "skipped": skipped}


def skipped_report(out) -> list[tuple[str, str]]:
    """(id, reason) of every pair an embed run into ``out`` skipped."""
    import pyarrow.csv as pcsv

    rows = []
    for f in sorted(Path(out, "skipped").glob("skipped_*.csv")):
        t = pcsv.read_csv(f, convert_options=pcsv.ConvertOptions(column_types={S.ID: "string"}))
        rows += list(zip(t.column(S.ID).to_pylist(), t.column("reason").to_pylist()))
    return rows


def read_info(out) -> dict | None:
    p = Path(out) / INFO
    return json.loads(p.read_text()) if p.exists() else None


__all__ = ["EmbedConfig", "TablePairs", "TarPairs", "embed", "load_model", "save_model_dir", "weights_hash",
           "skipped_report", "read_info", "TINY_MODEL_CFG"]
