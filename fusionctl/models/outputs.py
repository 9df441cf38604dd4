"""The tensors a model's output holds, however it packs them: a tensor, a tuple, list or dict of
them, or a dataclass (the output objects of libraries that are not dicts)."""

from __future__ import annotations

import dataclasses
from typing import Iterator

import torch


def tensors_in(out) -> Iterator[torch.Tensor]:
    if torch.is_tensor(out):
        yield out
        return
    if isinstance(out, dict):
        items = out.values()
    elif isinstance(out, (tuple, list)):
        items = out
    elif dataclasses.is_dataclass(out) and not isinstance(out, type):
        items = (getattr(out, f.name) for f in dataclasses.fields(out))
    else:
        return
    for item in items:
        yield from tensors_in(item)
