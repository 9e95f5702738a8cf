"""``python -m curation embed ... --backend ray``: the embedding run on a Ray cluster (Ray Data).

Same inputs, same output layout and the same resume rule as :func:`curation.embed.embed`; the
work is spread as a Ray Data pipeline:

1. **read + decode** (CPU tasks, in parallel): each pending output shard becomes rows of
   resized, cropped uint8 pixels and captions; unreadable pairs carry their reason instead;
2. **embed** (``map_batches`` over an actor pool): one actor per GPU (``--gpus-per-actor``, default 1
   when the cluster has GPUs) or CPU actors when it has none, each holding the model; batch size
   and actor count (``--concurrency``) are the user's;
3. **write** (on the driver, streaming): the vectors come back to the driver, which writes a shard
   as soon as its last row is in, as ``img_emb_i.npy`` / ``text_emb_i.npy`` / ``skipped_i.csv`` /
   ``metadata_i.parquet`` (last). An interrupted run keeps every shard finished before it.

The inputs and a ``local-dir:`` model must be paths every node sees (a shared filesystem); ``OUT``
only needs to be writable by the driver. Without ``--address`` a local Ray instance is started (and
stopped afterwards). With one (or ``RAY_ADDRESS`` set), the driver's copy of the ``curation`` package
travels to the workers in the job's ``runtime_env`` (:func:`runtime_env`): the nodes need the pinned
requirements and Ray, not ``curation``.

The job records no usage for Ray's usage statistics (``RAY_USAGE_STATS_ENABLED=0`` for the driver
and in the runtime_env, unless the environment sets it): a local instance started by ``ray.init`` has
them off anyway; a driver connected to a cluster would otherwise record Ray Data usage. Whether a
cluster reports its own statistics is set where it starts (``ray start --disable-usage-stats``).

``ray`` is optional: nothing else in ``curation`` imports it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import warnings
from pathlib import Path

import numpy as np

from curation import embed as E
from curation.errors import CurationError

log = logging.getLogger(__name__)

INSTALL = "pip install 'ray[data]==2.60.0'"
#: set on the driver, needed on every node (``--offline`` sets HF_HUB_OFFLINE): passed in the runtime_env
FORWARD_ENV = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


def _import_ray():
    # No usage records from this job (the patient-data rule the app follows too): a driver connected
    # to a cluster otherwise has Ray Data record each run's library usage for Ray's usage statistics
    # (an extra actor per job). RAY_USAGE_STATS_ENABLED=1 in the environment opts back in. Whether the
    # cluster itself reports statistics is its own setting (`ray start --disable-usage-stats`).
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as e:
        raise CurationError(f"--backend ray needs Ray, which is not installed ({e}). Fix: `{INSTALL}` "
                            "in this environment (and on every cluster node), or use --backend local.") from None
    return ray


def runtime_env() -> dict:
    """The Ray ``runtime_env`` that lets workers on other nodes run this job: this ``curation``
    package (the driver's copy, uploaded once and unpacked on each node, ahead of site-packages on the
    workers' path), the hub-offline variables the driver has set, and the usage-statistics opt-out.
    Pass it to ``ray.init`` yourself when you connect before calling :func:`embed_ray` (it then
    leaves your connection as it is)."""
    import curation

    env = {"py_modules": [str(Path(curation.__file__).resolve().parent)], "excludes": ["__pycache__"]}
    env_vars = {k: os.environ[k] for k in FORWARD_ENV if k in os.environ}
    # with Ray Client (ray://) the dataset executes on the cluster, not here: the usage opt-out goes too
    env_vars["RAY_USAGE_STATS_ENABLED"] = os.environ.get("RAY_USAGE_STATS_ENABLED", "0")
    env["env_vars"] = env_vars
    return env


def split_preprocess(preprocess):
    """(PIL-side transform, tensor-side transform) of an open_clip preprocess ``Compose``.

    Read tasks apply the PIL side (resize, crop, mode) and ship uint8 HxWxC rows, 4x smaller than
    float32 tensors; actors apply the rest (to-tensor, normalise). The arithmetic is the same as the
    whole transform, so the vectors equal the local path's. The PIL side is a :class:`PilSteps` when
    its steps are the usual ones, so read tasks need no torch; else torchvision's own ``Compose``.
    Returns (None, None) when the transform has no to-tensor step to split at."""
    from torchvision import transforms as T

    steps = list(getattr(preprocess, "transforms", []))
    cut = next((i for i, t in enumerate(steps) if "ToTensor" in type(t).__name__), None)
    if cut is None:
        return None, None
    return PilSteps.from_transforms(steps[:cut]) or T.Compose(steps[:cut]), T.Compose(steps[cut:])


class PilSteps:
    """The PIL side of an open_clip preprocess in plain Pillow: torchvision's ``Resize``,
    ``CenterCrop`` and open_clip's RGB conversion on PIL images, step for step the arithmetic of
    ``torchvision.transforms.functional`` (output size, crop offsets, Pillow's own resampling), so
    the pixels are identical (tested). Unpickling it in a read task imports no torch, torchvision or
    open_clip: about 5 s of CPU and 0.5 GB less in every read worker."""

    def __init__(self, steps: list[tuple]):
        self.steps = steps

    @classmethod
    def from_transforms(cls, transforms) -> "PilSteps | None":
        """The equivalent of these torchvision/open_clip steps, or None for any step it does not know."""
        from torchvision.transforms.functional import pil_modes_mapping

        steps = []
        for t in transforms:
            name = type(t).__name__
            if name == "Resize" and t.size is not None and t.interpolation in pil_modes_mapping:
                size = [t.size] if isinstance(t.size, int) else list(t.size)
                if t.max_size is not None and (len(size) != 1 or t.max_size <= size[0]):
                    return None  # torchvision refuses these settings: its own Compose says how
                steps.append(("resize", size, int(pil_modes_mapping[t.interpolation]), t.max_size))
            elif name == "CenterCrop":
                steps.append(("crop", tuple(int(v) for v in t.size)))
            elif name == "MaybeConvertMode":
                steps.append(("mode", t.mode))
            elif getattr(t, "__name__", "") == "_convert_to_rgb":
                steps.append(("mode", "RGB"))
            else:
                return None
        return cls(steps)

    def __call__(self, img):
        for step in self.steps:
            if step[0] == "resize":
                img = self._resize(img, *step[1:])
            elif step[0] == "crop":
                img = self._crop(img, *step[1])
            else:
                img = img.convert(step[1])
        return img

    @staticmethod
    def _resize(img, size, resample, max_size):
        w, h = img.size
        if len(size) == 1:  # the shorter edge to size[0], as torchvision's _compute_resized_output_size
            short, long = (w, h) if w <= h else (h, w)
            new_short, new_long = size[0], int(size[0] * long / short)
            if max_size is not None and new_long > max_size:
                new_short, new_long = int(max_size * new_short / new_long), max_size
            new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
        else:
            new_h, new_w = size
        if (new_h, new_w) == (h, w):
            return img
        return img.resize((new_w, new_h), resample)

    @staticmethod
    def _crop(img, crop_h, crop_w):
        w, h = img.size
        if crop_w > w or crop_h > h:  # smaller than the crop: torchvision pads with zeros first (rare:
            from torchvision.transforms import functional as F  # a resize to the crop size comes first)

            return F.center_crop(img, [crop_h, crop_w])
        top, left = int(round((h - crop_h) / 2.0)), int(round((w - crop_w) / 2.0))
        return img.crop((left, top, left + crop_w, top + crop_h))


class _Embedder:
    """Ray Data actor: holds the model; embeds batches of preprocessed pixels and captions."""

    def __init__(self, model, pretrained, device, precision, tensor_side=None):
        self.tensor_side = tensor_side
        import torch

        self.device = E.resolve_device(device if device != "auto" else
                                        ("cuda" if torch.cuda.is_available() else "cpu"))
        self.net, _, self.tokenizer, info = E.load_model(model, pretrained, self.device)
        self.dim = info["embed_dim"]
        self.precision = E.resolve_precision(precision, self.device)

    def __call__(self, batch: dict) -> dict:
        import torch

        ok = np.flatnonzero(batch["error"] == "")
        n = len(batch["error"])
        img_out = np.zeros((n, self.dim), np.float32)
        txt_out = np.zeros((n, self.dim), np.float32)
        if len(ok):
            if self.tensor_side is not None:  # uint8 HxWxC rows from the read tasks
                from PIL import Image

                images = torch.stack([self.tensor_side(Image.fromarray(p)) for p in batch["pixels"][ok]])
            else:
                images = torch.from_numpy(np.ascontiguousarray(batch["pixels"][ok], np.float32))
            tokens = self.tokenizer([str(c) for c in batch["caption"][ok]])
            with torch.inference_mode(), E.autocast_for(self.precision, self.device):
                img_out[ok], txt_out[ok] = E.encode_batch(self.net, images, tokens, self.device)
        return {"shard": batch["shard"], "pos": batch["pos"], "error": batch["error"],
                "image_emb": img_out, "text_emb": txt_out}


def embed_ray(pairs, out, cfg: E.EmbedConfig, *, address: str | None = None, concurrency: int | None = None,
              gpus_per_actor: float | None = None, overwrite: bool = False, progress: bool = True,
              max_shards: int | None = None) -> dict:
    """Embed ``pairs`` into ``out`` with Ray Data. Returns the ``embed_info.json`` record.

    Parameters
    ----------
    address : str, optional
        A running cluster (``HEAD_IP:6379``, ``auto``, or ``ray://head:10001`` with ``ray[client]``
        installed); default: ``RAY_ADDRESS`` if set, else start Ray on this machine.
    concurrency : int, optional
        Number of model actors (default: the cluster's GPUs / ``gpus_per_actor``, or 1 without GPUs).
    gpus_per_actor : float, optional
        GPUs each actor reserves (default 1 when the cluster has GPUs, else 0: CPU actors).
    max_shards : int, optional
        Stop after this many shards (a controlled interruption, as in :func:`curation.embed.embed`).
    """
    ray = _import_ray()
    cfg.check()
    out = Path(out).resolve()
    # the driver loads the model once on CPU: weights hash, dimension and preprocessing for the record
    _, preprocess, _, info = E.load_model(cfg.model, cfg.pretrained, "cpu")
    pending, record = E.plan(pairs, out, cfg, info, overwrite)
    if max_shards is not None:
        pending = pending[:max_shards]
    target = address or os.environ.get("RAY_ADDRESS") or "local"
    started = False
    if not ray.is_initialized():
        if target != "local":
            # A cluster: ship the package with the job, always. Its workers may run on machines
            # without `curation`, and where it is pip-installed the shipped copy comes first, so
            # every node runs the code that planned these shards. A local instance started here gets
            # no runtime_env: its workers share this machine and this environment (Ray puts the
            # driver's working directory on their path), so there is nothing to ship.
            kw = {"address": address, "runtime_env": runtime_env()}
        else:
            kw = {"address": address, "include_dashboard": False}
        ray.init(logging_level=logging.ERROR, log_to_driver=False, ignore_reinit_error=True, **kw)
        started = True
    try:
        from ray.data import DataContext

        ctx = DataContext.get_current()
        ctx.enable_progress_bars = progress
        ctx.print_on_execution_start = False
        gpus = float(ray.cluster_resources().get("GPU", 0))
        if gpus_per_actor is None:
            gpus_per_actor = 1.0 if gpus else 0.0
        if gpus_per_actor and not gpus:
            raise CurationError(f"--gpus-per-actor {gpus_per_actor} but the Ray cluster has no GPUs. Fix: drop "
                                "--gpus-per-actor to run CPU actors, or add GPU nodes.")
        cpus = float(ray.cluster_resources().get("CPU", 1))
        if concurrency is None:
            concurrency = max(int(gpus // gpus_per_actor), 1) if gpus_per_actor else 1
        if not gpus_per_actor and concurrency > max(cpus - 1, 1):
            # CPU actors hold a core each; the read and write tasks need at least one more
            log.warning("--concurrency %s CPU actors on %s CPUs would leave no core for reading; using %s",
                        concurrency, cpus, int(max(cpus - 1, 1)))
            concurrency = int(max(cpus - 1, 1))
        device = cfg.device if cfg.device != "auto" else ("cuda" if gpus_per_actor else "cpu")
        record.update(device=f"ray:{device}", precision=E.resolve_precision(cfg.precision, "cpu" if
                                                                             device == "cpu" else "cuda"),
                      workers=concurrency, batch_size=cfg.batch_size, backend="ray",
                      ray_address=target, gpus_per_actor=gpus_per_actor)
        E.write_info(out, {**record, "complete": False})
        t0 = time.time()
        n_ok = n_bad = 0
        dim = info["embed_dim"]
        for s in pending:  # a tar with nothing embeddable still gets its (empty) shard files
            if not s.items:
                n_bad += E.flush_shard(pairs, s, out, E.new_buffer(0, dim, cfg.out_dtype))
        todo = [s for s in pending if s.items]
        if todo:
            by_index = {s.index: s for s in todo}
            pil_side, tensor_side = split_preprocess(preprocess)
            if pil_side is not None:
                def to_pixels(img):
                    return np.asarray(pil_side(img), np.uint8)
            else:
                def to_pixels(img):
                    return preprocess(img).numpy()
            blank = np.zeros_like(to_pixels(_blank()))

            def read_shard(row):
                shard = by_index[int(row["shard"])]
                handles = {}
                for pos, item in enumerate(shard.items):
                    pixels, caption, err = E.load_pair(pairs, item, handles, to_pixels)
                    yield {"shard": shard.index, "pos": pos, "caption": caption or "", "error": err or "",
                           "pixels": pixels if pixels is not None else blank}

            ds = ray.data.from_items([{"shard": s.index} for s in todo], override_num_blocks=len(todo))
            ds = ds.flat_map(read_shard)
            # max_restarts=0: Ray Data's default (-1, restart forever) makes Ray core log an
            # error-level "constructor arguments in the object store" line on every run (Ray Data
            # ray.puts its own context and transform for the actors: ray-project/ray#57733), and
            # retries a batch that crashes its actor (out of memory) forever. A dead actor now fails
            # the run with Ray's error instead; rerunning the command keeps the shards already written.
            # Ray 2.60 takes max_restarts only as a "ray_remote_args" keyword, which it warns will go
            # in Ray 2.64 (2.60 has no named parameter for it): the warning is silenced, ray is pinned.
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*ray_remote_args. is deprecated")
                ds = ds.map_batches(_Embedder, batch_size=cfg.batch_size,
                                    compute=ray.data.ActorPoolStrategy(size=concurrency),
                                    num_gpus=gpus_per_actor or None, batch_format="numpy", max_restarts=0,
                                    fn_constructor_kwargs={"model": cfg.model, "pretrained": cfg.pretrained,
                                                           "device": device, "precision": cfg.precision,
                                                           "tensor_side": tensor_side})
            # The driver writes each shard as soon as its last row comes back from the actors (rows
            # stream back in no particular order; a shard's buffer lives only until it is complete).
            # The vectors are small (2 x dim floats a pair) next to the pixels the workers move, an
            # interrupted run keeps every shard finished before it, and no group-by shuffle is paid.
            left = {s.index: len(s.items) for s in todo}
            bufs = {}
            with _batches(ds) as batches:
                for batch in batches:
                    shard_of = np.asarray(batch["shard"], np.int64)
                    pos_b, err_b = np.asarray(batch["pos"], np.int64), np.asarray(batch["error"], str)
                    img_b, txt_b = np.stack(batch["image_emb"]), np.stack(batch["text_emb"])
                    for idx in np.unique(shard_of).tolist():
                        rows = np.flatnonzero(shard_of == idx)
                        if idx not in bufs:
                            bufs[idx] = E.new_buffer(len(by_index[idx].items), dim, cfg.out_dtype)
                        img, txt, ok, skipped = bufs[idx]
                        good, bad = rows[err_b[rows] == ""], rows[err_b[rows] != ""]
                        img[pos_b[good]], txt[pos_b[good]], ok[pos_b[good]] = img_b[good], txt_b[good], True
                        skipped.extend((int(pos_b[j]), str(err_b[j])) for j in bad)
                        left[idx] -= len(rows)
                        if not left[idx]:
                            n_bad += E.flush_shard(pairs, by_index[idx], out, bufs.pop(idx))
                            n_ok += int(ok.sum())
            unfinished = sorted(i for i, n in left.items() if n)
            if unfinished:  # Ray lost or repeated rows: nothing of those shards is written
                raise CurationError(f"Ray returned the wrong number of rows for shard(s) {unfinished[:5]} "
                                    f"({len(unfinished)} in all); they were not written. Fix: run the same "
                                    "command again: finished shards are kept and these are redone.")
        return E.finish(pairs, out, cfg, record, n_ok, n_bad, time.time() - t0)
    finally:
        if started:
            ray.shutdown()


@contextlib.contextmanager
def _batches(ds):
    """Ray Data's batch iterator over ``ds`` (numpy, blocks as they come), closed on the way out,
    also on an error or Ctrl-C: closing it stops the pipeline (its tasks and actors) at once instead
    of whenever the iterator is garbage-collected. (``iter_batches`` returns an iterable without
    ``close``; its iterator has one.)"""
    it = iter(ds.iter_batches(batch_size=None, batch_format="numpy"))
    try:
        yield it
    finally:
        close = getattr(it, "close", None)
        if close is not None:
            close()


def _blank():
    from PIL import Image

    return Image.new("RGB", (8, 8))
