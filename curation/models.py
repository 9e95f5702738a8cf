"""open_clip models for ``embed``: loading by name, hub id, local folder or checkpoint, with no
network at run time; the weights hash recorded beside the embeddings; random-weight folders for
tests and benchmarks; the device choice.

torch and open_clip are imported inside functions: ``import curation`` stays light.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from curation.errors import CurationError


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
    except Exception as e:  # a junk or foreign --pretrained file: torch.load raises whatever unpickling meets
        if pre and Path(str(pre)).is_file():
            raise CurationError(f"--pretrained {pre} is not an open_clip checkpoint of {model} ({type(e).__name__}: "
                                f"{str(e)[:120]}). Fix: pass the model's open_clip_pytorch_model.bin (or .safetensors) "
                                f"file, or a local-dir: folder.") from e
        raise
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


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise CurationError("--device cuda given but torch sees no GPU. Fix: use --device cpu, or check "
                            "the CUDA driver (`nvidia-smi`) and that torch was installed with CUDA.")
    return device
