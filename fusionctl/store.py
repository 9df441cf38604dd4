"""The hashed model store, atomic writes and safe checkpoint loading.

A trained model lives at <store_dir>/<dataset>/<model>-<hash>/seed<k>/, where the hash covers
everything that determines it except the seed, so `fuse` finds the models `train` made from
the same config, and re-running `train` finds its own work.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from fusionctl.errors import FusionctlError
from fusionctl.versions import versions

FORMAT = "fusionctl.model/1"


def _non_default(part: Any) -> Any:
    """A config dataclass as the fields that differ from their defaults.

    Adding a field with a default then leaves every existing hash, and so every stored model,
    where it was; the price is that changing a default value must come with a new field name.
    """
    if not hasattr(part, "__dataclass_fields__"):
        return part
    default = asdict(type(part)())
    return {k: v for k, v in asdict(part).items() if v != default.get(k, object())}


def config_hash(*parts: Any) -> str:
    blob = json.dumps([_non_default(p) for p in parts], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def model_dir(store_dir: str | Path, dataset, model, optim, train, seed: int, client: int | None = None) -> Path:
    """client: which share of a heterogeneous split the model trains on (None: the whole split)."""
    # train.checkpoint only selects which file fuse reads, and train.amp only the rounding of the
    # same recipe: neither makes a different model.
    train_key = {k: v for k, v in _non_default(train).items() if k not in ("checkpoint", "amp")}
    key = config_hash(dataset, model, optim, train_key)
    leaf = f"seed{seed}" if client is None or dataset.split == "none" else f"seed{seed}-client{client}"
    return Path(store_dir) / dataset.name / f"{model.name}-{key}" / leaf


def _file_mode() -> int:
    """The mode open() gives a new file under the process's umask."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


_FILE_MODE = _file_mode()


@contextlib.contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary path in the target's folder; rename it over the target on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, _FILE_MODE)  # mkstemp's 0600 would hide results and checkpoints from the user's group
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save_atomic(obj: Any, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def write_text_atomic(text: str, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_csv_atomic(frame, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


@contextlib.contextmanager
def locked(folder: Path):
    """Exclusive lock on a store entry: a second process training the same model waits."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def make_checkpoint(state_dict, model_cfg, dataset: str, input_shape, num_classes: int, **meta) -> dict:
    return {
        "format": FORMAT,
        "model": asdict(model_cfg),
        "dataset": dataset,
        "input_shape": list(input_shape),
        "num_classes": int(num_classes),
        "state_dict": {k: v.detach().cpu() for k, v in state_dict.items()},
        "versions": dict(versions()),
        **meta,
    }



# where training scripts keep a model's weights in what they save (torch.save({"model_state_dict": ...}))
STATE_KEYS = ("state_dict", "model_state_dict", "model", "module", "net", "weights")
# name prefixes a wrapper adds to every key: DataParallel / DDP, torch.compile
WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def load_checkpoint(path: str | Path, plain: bool = False) -> dict:
    """Load a fusionctl model checkpoint with weights_only=True; one clear error otherwise.

    plain=True also takes a state dict saved elsewhere (`plain_state`), returned as
    {"format": "plain", "state_dict": ...}: the caller says which model it is."""
    path = Path(path)
    if not path.is_file():
        raise FusionctlError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, pickle with code, random bytes, ...
        reason = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise FusionctlError(f"checkpoint {path} cannot be loaded safely ({reason}); it is damaged or not a fusionctl checkpoint") from exc
    if isinstance(ckpt, dict) and ckpt.get("format") == FORMAT:
        return ckpt
    state = plain_state(ckpt) if plain else None
    if state is None:
        raise FusionctlError(f"{path} is not a fusionctl checkpoint (expected format {FORMAT})" +
                             (" nor a state dict; pass models made by `fusionctl train` or saved with torch.save(model.state_dict())"
                              if plain else "; pass models made by `fusionctl train`"))
    return {"format": "plain", "state_dict": state}


def plain_state(obj: Any) -> dict[str, torch.Tensor] | None:
    """The weights in what a training script saved: a state dict itself or under one of
    STATE_KEYS (nested too), without a wrapper's prefix on every key; None if there is none."""
    while isinstance(obj, dict) and not (obj and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())):
        obj = next((obj[k] for k in STATE_KEYS if isinstance(obj.get(k), dict)), None)
    if not isinstance(obj, dict):
        return None
    for prefix in WRAPPER_PREFIXES:
        if all(k.startswith(prefix) for k in obj):
            obj = {k[len(prefix):]: v for k, v in obj.items()}
    return dict(obj)
