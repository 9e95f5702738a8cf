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
import hashlib
import json
import logging
import os
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from curation import schema as S
from curation.errors import CurationError, PairError, InputError

log = logging.getLogger(__name__)

INFO = "embed_info.json"
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff", "gif")
CAPTION_EXTS = ("txt", "caption", "cap")
JSON_CAPTION_KEYS = ("caption", "text", "title")
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
        if self.out_dtype not in OUT_DTYPES:
            raise CurationError(f"--dtype {self.out_dtype!r}: use one of {', '.join(OUT_DTYPES)}.")
        if self.precision not in PRECISIONS:
            raise CurationError(f"--precision {self.precision!r}: use one of {', '.join(PRECISIONS)}.")


# ---------------------------------------------------------------------------------------------
# inputs
# ---------------------------------------------------------------------------------------------
@dataclass
class Shard:
    """One unit of output: ``items`` to load and the metadata rows (pyarrow Table) they belong to."""

    index: int
    items: list
    meta: object
    skipped: list = field(default_factory=list)  # (id, reason) found while indexing


class TablePairs:
    """A captions table plus an image folder. Shards are consecutive row ranges of the table."""

    kind = "table"

    def __init__(self, table_path, image_root=None, *, id_column=None, image_column=None,
                 caption_column=None):
        from curation.ingest import read_table_file, standardize_columns

        self.path = Path(table_path)
        table = read_table_file(self.path, string_columns=[c for c in (id_column, *S.ID_CANDIDATES) if c])
        table = standardize_columns(table, self.path, id_column, image_column, caption_column)
        for col, opt in ((S.IMAGE, "--image-path-column"), (S.CAPTION, "--caption-column")):
            if col not in table.column_names:
                raise InputError(f"no {col} column.", file=self.path,
                                 fix=f"name it with {opt}; columns are: {', '.join(table.column_names)}.")
        self.table = table
        self.image_root = Path(image_root) if image_root else self.path.parent
        if not self.image_root.is_dir():
            raise InputError("image folder not found.", file=self.image_root,
                             fix="pass --image-root, the folder the image paths are relative to.")
        self.images = table.column(S.IMAGE).to_pylist()
        self.captions = table.column(S.CAPTION).to_pylist()

    def __len__(self) -> int:
        return self.table.num_rows

    def fingerprint(self) -> str:
        h = hashlib.blake2b(digest_size=12)
        for name in (S.ID, S.IMAGE, S.CAPTION):
            for chunk in self.table.column(name).chunks:
                for buf in chunk.buffers():
                    if buf is not None:
                        h.update(memoryview(buf))
        return h.hexdigest()

    def describe(self) -> dict:
        return {"kind": self.kind, "table": str(self.path.resolve()),
                "image_root": str(self.image_root.resolve()), "rows": len(self)}

    def shards(self, shard_size: int) -> list[Shard]:
        n = len(self)
        return [Shard(i, range(s, min(s + shard_size, n)), None)
                for i, s in enumerate(range(0, n, shard_size))]

    def shard_meta(self, shard: Shard, ok_pos):
        return self.table.slice(shard.items[0], len(shard.items)).take(ok_pos) if shard.items else \
            self.table.slice(0, 0)

    def shard_ids(self, shard: Shard) -> list:
        return self.table.column(S.ID).slice(shard.items[0], len(shard.items)).to_pylist()

    def load(self, item, _handles):
        from curation.store import resolve_image

        value = self.images[item]
        caption = self.captions[item]
        try:
            path = resolve_image(self.image_root, value)
        except CurationError as e:
            raise PairError(str(e)) from None
        return _open_image(path), caption


class TarPairs:
    """WebDataset tar shards; one output shard per input tar (keys grouped as WebDataset does)."""

    kind = "webdataset"

    def __init__(self, paths):
        files = []
        for p in [Path(x) for x in (paths if isinstance(paths, (list, tuple)) else [paths])]:
            if p.is_dir():
                files += sorted(p.glob("*.tar"))
            elif any(ch in str(p) for ch in "*?["):
                import glob

                files += sorted(Path(f) for f in glob.glob(str(p)))
            elif p.is_file():
                files.append(p)
            else:
                raise InputError("tar shard not found.", file=p, fix="pass tar files, a glob or a folder of .tar shards.")
        if not files:
            raise InputError("no .tar shards found.", file=paths if not isinstance(paths, list) else paths[0],
                             fix="pass WebDataset .tar files or the folder holding them.")
        self.files = files
        self._index = None

    def _build_index(self):
        if self._index is None:
            self._index = [_index_tar(f) for f in self.files]
        return self._index

    def fingerprint(self) -> str:
        h = hashlib.blake2b(digest_size=12)
        for f in self.files:
            st = f.stat()
            h.update(f"{f.name}:{st.st_size}:{int(st.st_mtime)}\n".encode())
        return h.hexdigest()

    def describe(self) -> dict:
        return {"kind": self.kind, "tars": [str(f.resolve()) for f in self.files]}

    def shards(self, shard_size: int) -> list[Shard]:
        # the tar is the shard; shard_size does not apply
        return [Shard(i, x["items"], x["meta"], x["skipped"]) for i, x in enumerate(self._build_index())]

    def shard_meta(self, shard: Shard, ok_pos):
        return shard.meta.take(ok_pos)

    def shard_ids(self, shard: Shard) -> list:
        return shard.meta.column(S.ID).to_pylist() + [s[0] for s in shard.skipped]

    def load(self, item, handles):
        tar_path, offset, size, caption, key = item
        f = handles.get(tar_path)
        if f is None:
            f = handles[tar_path] = open(tar_path, "rb")
        try:
            f.seek(offset)
            data = f.read(size)
        except OSError as e:
            raise PairError(f"cannot read the image member from {Path(tar_path).name} ({e})") from None
        if len(data) != size:
            raise PairError(f"the image member is truncated in {Path(tar_path).name}") from None
        import io

        return _open_image(io.BytesIO(data)), caption


def _index_tar(path: Path) -> dict:
    """Group a tar's members by WebDataset key; read captions and JSON metadata, note image offsets."""
    import pyarrow as pa

    groups: dict[str, dict] = {}
    order = []
    try:
        with tarfile.open(path, "r:") as tf:
            for m in tf:
                if not m.isfile():
                    continue
                d, base = os.path.split(m.name)
                if base.startswith("."):
                    continue
                key, _, ext = base.partition(".")
                key = f"{d}/{key}" if d else key
                if key not in groups:
                    groups[key] = {}
                    order.append(key)
                ext = ext.lower()
                if ext in IMAGE_EXTS:
                    groups[key].setdefault("image", (m.name, m.offset_data, m.size))
                elif ext in CAPTION_EXTS or ext == "json":
                    groups[key][ext] = tf.extractfile(m).read()
    except tarfile.ReadError as e:
        raise InputError(f"not a readable uncompressed tar ({e}).", file=path,
                         fix="WebDataset shards must be plain .tar files (decompress .tar.gz first).") from e
    items, skipped, rows = [], [], []
    for key in order:
        g = groups[key]
        meta = {}
        if "json" in g:
            try:
                obj = json.loads(g["json"].decode("utf-8"))
                meta = {k: v for k, v in obj.items() if isinstance(v, (str, int, float, bool)) or v is None} \
                    if isinstance(obj, dict) else {}
            except (UnicodeDecodeError, json.JSONDecodeError):
                skipped.append((key, f"{key}.json is not valid UTF-8 JSON"))
                continue
        caption = None
        for ext in CAPTION_EXTS:
            if ext in g:
                try:
                    caption = g[ext].decode("utf-8").strip()
                except UnicodeDecodeError:
                    caption = None
                    skipped.append((key, f"{key}.{ext} is not UTF-8 text"))
                break
        else:
            caption = next((str(meta[k]).strip() for k in JSON_CAPTION_KEYS if meta.get(k)), None)
        if skipped and skipped[-1][0] == key:
            continue
        if "image" not in g:
            skipped.append((key, "no image member (" + ", ".join(IMAGE_EXTS) + ")"))
            continue
        if not caption:
            skipped.append((key, "no caption (.txt member or 'caption' in .json)"))
            continue
        name, off, size = g["image"]
        items.append((str(path), off, size, caption, key))
        meta.pop(S.ID, None)
        rows.append({S.ID: key, S.CAPTION: caption, "source_tar": path.name, "image_member": name,
                     **{k: v for k, v in meta.items() if k not in (S.ID, S.CAPTION, S.IMAGE, S.ROW)}})
    table = pa.Table.from_pylist(rows) if rows else pa.table({S.ID: pa.array([], pa.string()),
                                                             S.CAPTION: pa.array([], pa.string())})
    return {"items": items, "skipped": skipped, "meta": table}


def _open_image(src):
    from PIL import Image, UnidentifiedImageError

    try:
        img = Image.open(src)
        img.load()
    except FileNotFoundError:
        raise PairError("image file is missing") from None
    except UnidentifiedImageError:
        raise PairError("not a readable image (unknown or corrupt format)") from None
    except Image.DecompressionBombError as e:
        raise PairError(f"image too large ({e})") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise PairError(f"image could not be decoded ({e})") from None
    return img


# ---------------------------------------------------------------------------------------------
# model
# ---------------------------------------------------------------------------------------------
def no_weights_fix(model: str) -> str:
    return ("weights could not be fetched (no network, or not on the hub). Fix: on a machine with "
            "internet, download the model folder (e.g. `huggingface-cli download "
            "microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224 --local-dir models/biomedclip`) and "
            "pass `--model local-dir:models/biomedclip`, or pass an open_clip architecture with a "
            f"checkpoint file: `--model {model.split(':')[-1] if not model.startswith('hf-hub:') else 'ViT-B-16'} "
            "--pretrained /path/to/open_clip_pytorch_model.bin`.")


def set_offline() -> None:
    """Never contact the model hub in this process (``HF_HUB_OFFLINE=1``), even if it was imported."""
    import sys

    os.environ["HF_HUB_OFFLINE"] = "1"
    if "huggingface_hub" in sys.modules:
        import huggingface_hub.constants as hc

        hc.HF_HUB_OFFLINE = True


def load_model(model: str, pretrained: str | None = None, device: str = "cpu"):
    """Build an open_clip model, its image transform and tokenizer, and describe the weights.

    Returns
    -------
    model, preprocess, tokenizer, info : info has ``model``, ``pretrained``, ``weights_sha256``,
    ``embed_dim``, ``n_params``.
    """
    import open_clip
    import torch

    pre = pretrained
    if pre in ("random", "none", ""):
        pre = None
        torch.manual_seed(0)
    elif pre is None and not model.startswith(("hf-hub:", "local-dir:")):
        raise CurationError(f"model {model!r} needs weights. Fix: pass --pretrained TAG (one of: "
                            f"{', '.join(t for m, t in open_clip.list_pretrained() if m == model)[:300] or 'none known'}), "
                            "--pretrained /path/to/checkpoint, or --pretrained random for a benchmark.")
    if model.startswith("local-dir:") and not Path(model[len("local-dir:"):]).is_dir():
        raise CurationError(f"model folder {model[len('local-dir:'):]} not found. Fix: pass the folder that holds "
                            "open_clip_config.json and the weights file.")
    if not model.startswith(("hf-hub:", "local-dir:")) and open_clip.get_model_config(model) is None:
        raise CurationError(f"unknown open_clip architecture {model!r}. Fix: use one of "
                            f"{', '.join(open_clip.list_models()[:12])}..., an hf-hub: id or local-dir: folder.")
    try:
        net, _, preprocess = open_clip.create_model_and_transforms(model, pretrained=pre, device=device)
        tokenizer = open_clip.get_tokenizer(model)
    except RuntimeError as e:
        msg = str(e)
        if "download" in msg.lower() or "hub" in msg.lower() or "connection" in msg.lower():
            raise CurationError(f"model {model!r}: {no_weights_fix(model)}") from e
        if "not a known tag" in msg:
            raise CurationError(f"--pretrained {pretrained!r} is neither a known tag of {model} nor a file. "
                                f"Fix: pass an existing checkpoint path or a tag from "
                                f"`python -c \"import open_clip; print(open_clip.list_pretrained())\"`.") from e
        raise CurationError(f"model {model!r} could not be built: {msg}") from e
    except (OSError, ValueError) as e:
        raise CurationError(f"model {model!r} could not be loaded ({e}). {no_weights_fix(model)}") from e
    net.eval()
    info = {"model": model, "pretrained": pretrained, "weights_sha256": weights_hash(net),
            "embed_dim": int(_embed_dim(net)), "n_params": int(sum(p.numel() for p in net.parameters()))}
    return net, preprocess, tokenizer, info


def _embed_dim(net) -> int:
    import torch

    size = getattr(getattr(net, "visual", None), "image_size", 224)
    size = size if isinstance(size, (tuple, list)) else (size, size)
    with torch.inference_mode():
        dev = next(net.parameters()).device
        return net.encode_image(torch.zeros(1, 3, *size, device=dev)).shape[1]


def weights_hash(net) -> str:
    """sha256 over the state dict (names, dtypes, shapes and bytes), recorded with the embeddings."""
    import torch

    h = hashlib.sha256()
    for name, t in sorted(net.state_dict().items()):
        a = t.detach().cpu().contiguous()
        h.update(f"{name}:{a.dtype}:{tuple(a.shape)}".encode())
        h.update(a.view(-1).view(dtype=torch.uint8).numpy().tobytes() if a.numel() else b"")
    return h.hexdigest()


def save_model_dir(folder, model_cfg: dict, *, seed: int = 0, image_size: int | None = None) -> str:
    """Write a ``local-dir:`` model folder (config + random weights) for an architecture dict.

    Used by tests and benchmarks to exercise the real loading path without a download.
    Returns the ``local-dir:...`` model name.
    """
    import open_clip
    import torch

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    net = open_clip.CLIP(**model_cfg)
    size = image_size or model_cfg["vision_cfg"]["image_size"]
    cfg = {"model_cfg": model_cfg,
           "preprocess_cfg": {"size": size, "mean": list(open_clip.OPENAI_DATASET_MEAN),
                              "std": list(open_clip.OPENAI_DATASET_STD)}}
    (folder / "open_clip_config.json").write_text(json.dumps(cfg, indent=1))
    torch.save(net.state_dict(), folder / "open_clip_pytorch_model.bin")
    return f"local-dir:{folder}"


TINY_MODEL_CFG = {"embed_dim": 32,
                  "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
                  "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}


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


def _atomic_save(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    os.replace(tmp, path)


def _shard_files(out: Path, i: int) -> dict:
    return {"image": out / "img_emb" / f"img_emb_{i:05d}.npy", "text": out / "text_emb" / f"text_emb_{i:05d}.npy",
            "meta": out / "metadata" / f"metadata_{i:05d}.parquet", "skipped": out / "skipped" / f"skipped_{i:05d}.csv"}


def _resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise CurationError("--device cuda given but torch sees no GPU. Fix: use --device cpu, or check "
                            "the CUDA driver (`nvidia-smi`) and that torch was installed with CUDA.")
    return device


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
    device = _resolve_device(cfg.device)
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
            n_bad += _flush(pairs, s, out, bufs.pop(s.index))
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
                        n_bad += _flush(pairs, shard, out, bufs.pop(shard.index))
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
    _atomic_save(out / INFO, lambda p: p.write_text(json.dumps(record, indent=1)))


def new_buffer(n: int, dim: int, dtype: str):
    """A shard's buffer before :func:`_flush`: (image vectors, text vectors, embedded mask, skipped
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


def _flush(pairs, shard: Shard, out: Path, buf) -> int:
    """Write one finished shard (vectors, skipped report, then metadata). Returns pairs skipped."""
    import pyarrow as pa
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    img, txt, okmask, skipped = buf
    files = _shard_files(out, shard.index)
    ok_pos = np.flatnonzero(okmask)
    ids = pairs.shard_ids(shard)
    rows = [(ids[local], reason) for local, reason in sorted(skipped)] + list(shard.skipped)
    _atomic_save(files["image"], lambda p: np.save(open(p, "wb"), img[ok_pos]))
    _atomic_save(files["text"], lambda p: np.save(open(p, "wb"), txt[ok_pos]))
    if rows:
        for rid, reason in rows[:5]:
            log.info("skipped %s: %s", rid, reason)
        _atomic_save(files["skipped"], lambda p: pcsv.write_csv(
            pa.table({S.ID: [str(r[0]) for r in rows], "reason": [r[1] for r in rows]}), p))
    meta = pairs.shard_meta(shard, pa.array(ok_pos, pa.int64()))
    _atomic_save(files["meta"], lambda p: pq.write_table(meta, p))
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
