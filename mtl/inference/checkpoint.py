"""Safe checkpoint loading: weights_only=True, and a clear error for missing, corrupt or foreign files."""

from __future__ import annotations

import logging
import pickle
import re
import warnings
import zipfile
from pathlib import Path

import torch

from mtl.errors import CheckpointError, MTLError, first_line

log = logging.getLogger(__name__)


_HPARAM_KEYS = ("config", "tasks", "backbone_config")


def load_checkpoint(path: str | Path, *, mtl_only: bool = True, mmap: bool = False) -> dict:
    """`torch.load(weights_only=True)` with a clear error for missing, corrupt and foreign files.

    The one loader for every checkpoint mtl opens; `weights_only=True` is passed explicitly, so
    TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD cannot turn it off. `mtl_only=False` skips the check that
    the file holds an mtl model (for reading a counter such as `global_step`); `mmap` reads
    tensors lazily."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"Checkpoint not found: {path}. Pass a run folder's fold_<k>/best.ckpt or last.ckpt."
        )
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive; its index comes last
        raise CheckpointError(
            f"Cannot read checkpoint {path}: the file is truncated, corrupt or not a PyTorch "
            f"checkpoint (not a complete zip archive). Re-copy it, or use the fold's other "
            f"checkpoint (best.ckpt / last.ckpt)."
        )
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        detail = re.search(r"WeightsUnpickler error:\s*([^\n]+)", str(err))
        raise CheckpointError(
            f"Checkpoint {path} was refused by the safe loader (weights_only=True): it holds "
            f"objects other than tensors and plain containers, so it was not written by mtl "
            f"training ({detail.group(1).strip() if detail else first_line(err)})."
        ) from None
    except Exception as err:  # a damaged archive member, wrong format: many exception types
        raise CheckpointError(
            f"Cannot read checkpoint {path}: the file is truncated, corrupt or not a PyTorch "
            f"checkpoint ({type(err).__name__}: {first_line(err)}). Re-copy it, or use the "
            f"fold's other checkpoint (best.ckpt / last.ckpt)."
        ) from None
    if not mtl_only:
        return ckpt
    hparams = ckpt.get("hyper_parameters") if isinstance(ckpt, dict) else None
    missing = (
        list(_HPARAM_KEYS)
        if not isinstance(hparams, dict)
        else [k for k in _HPARAM_KEYS if not isinstance(hparams.get(k), dict)]
    )
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict):
        missing = ["state_dict"] + missing
    if missing:
        found = (
            f"a dict with keys {sorted(map(str, ckpt))[:8]}"
            if isinstance(ckpt, dict)
            else f"a {type(ckpt).__name__}"
        )
        raise CheckpointError(
            f"{path} is not an mtl checkpoint: it holds {found} and lacks "
            f"{', '.join('hyper_parameters.' + k if k in _HPARAM_KEYS else k for k in missing)}. "
            f"Pass fold_<k>/best.ckpt or last.ckpt from a run folder written by scripts/train.py."
        )
    return ckpt


def clean_state_dict(state: dict) -> dict:
    """Weights as the plain module names them: `trainer.compile=true` wraps the encoder in
    torch.compile, whose `_orig_mod.` prefix appears in the checkpoint's keys; metric states of
    runs from before metrics were gathered as arrays (a `thresholds` buffer) are not weights."""
    return {
        key.replace("._orig_mod.", ".").removeprefix("_orig_mod."): value
        for key, value in state.items()
        if not key.startswith("val_metrics.")
    }


def build_model(ckpt: dict, path: str | Path) -> tuple[torch.nn.Module, dict, dict]:
    """The checkpoint's network in eval mode, its TaskMeta dicts, and its resolved config dict.

    The encoder is built empty from the stored architecture (no download) and filled from the
    state dict; the global RNG is left as it was.
    """
    from mtl.model.module import MultiTaskModule

    hparams = ckpt["hyper_parameters"]
    stored = hparams["backbone_config"]
    try:
        with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            module = MultiTaskModule(hparams["config"], hparams["tasks"], stored)
    except MTLError as err:  # e.g. an encoder this transformers cannot build: says what failed
        raise CheckpointError(f"Checkpoint {path}: {err}") from None
    except (RuntimeError, KeyError, TypeError, ValueError, AttributeError, ImportError) as err:
        raise CheckpointError(
            f"Checkpoint {path}: its model ({stored.get('model_type', 'unknown model type')}, "
            f"attention {stored.get('attn_implementation') or 'unrecorded'}) cannot be rebuilt "
            f"with the installed libraries: {type(err).__name__}: {first_line(err)}"
        ) from None
    try:
        module.load_state_dict(clean_state_dict(ckpt["state_dict"]))
    except (RuntimeError, KeyError, TypeError, ValueError) as err:
        raise CheckpointError(
            f"Checkpoint {path} does not describe a model its weights fit: "
            f"{type(err).__name__}: {first_line(err)}"
        ) from None
    return module.model.eval(), hparams["tasks"], hparams["config"]
