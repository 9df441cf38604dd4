"""Evaluate many parameter points at once: theta_p = origin + coords[p] @ directions.

One description serves the interpolation lines (one direction) and the 2-D plane (two).
Points are materialised a chunk at a time and run through torch.func.vmap over
functional_call, so a chunk of models shares every data batch.
"""

from __future__ import annotations

import logging
import sys
from typing import Callable

import torch
from torch.func import functional_call, vmap
from tqdm import tqdm

from fusionctl.data import Split
from fusionctl.eval.metrics import logits_of, token_hits, token_loss
from fusionctl.fusion.post import bn_layers
from fusionctl.models import load_state

log = logging.getLogger(__name__)


def flatten(state: dict[str, torch.Tensor], keys: list[str]) -> torch.Tensor:
    return torch.cat([state[k].reshape(-1).to(torch.float32) for k in keys])


def float_keys(state: dict[str, torch.Tensor]) -> list[str]:
    return [k for k, v in state.items() if v.is_floating_point()]


def unflatten(flat: torch.Tensor, template: dict[str, torch.Tensor], keys: list[str]) -> dict[str, torch.Tensor]:
    """(P, D) rows -> {key: (P, *shape)}; non-float entries of the template are broadcast."""
    out, offset = {}, 0
    for k in keys:
        n = template[k].numel()
        out[k] = flat[:, offset : offset + n].reshape(flat.shape[0], *template[k].shape)
        offset += n
    for k, v in template.items():
        if k not in out:
            out[k] = v.expand(flat.shape[0], *v.shape)
    return out


def clamp_variances(params: dict[str, torch.Tensor]) -> int:
    """BatchNorm running variances of points off the segment between models can extrapolate below
    0, which makes the network NaN; a variance is never negative, so they are clamped at 0 in place.
    Returns how many points needed it."""
    bad = None
    for k, v in params.items():
        if k.endswith("running_var"):
            neg = (v < 0).flatten(1).any(1)
            bad = neg if bad is None else bad | neg
            v.clamp_(min=0)
    return int(bad.sum()) if bad is not None else 0


def has_batchnorm(model: torch.nn.Module) -> bool:
    return bool(bn_layers(model))


def evaluate_points(
    model: torch.nn.Module,
    template: dict[str, torch.Tensor],
    origin: torch.Tensor,
    directions: torch.Tensor,
    coords: torch.Tensor,
    splits: dict[str, Split],
    *,
    chunk: int = 32,
    batch_size: int = 2048,
    transform: Callable[[torch.nn.Module, torch.Tensor], None] | None = None,
    device: torch.device | str = "cpu",
    desc: str = "points",
) -> dict[str, dict[str, torch.Tensor]]:
    """Loss and accuracy of every point on every split: {split: {"loss": (P,), "accuracy": (P,)}}.

    origin (D,), directions (k, D), coords (P, k); D follows `float_keys(template)`.
    transform(model, coords of the point) changes a point's network in place before it is
    evaluated (a post-step: BatchNorm reset, REPAIR); points then go one at a time, else a
    chunk of points shares every data batch through vmap.
    """
    keys = float_keys(template)
    model = model.to(device).eval()
    origin, directions, coords = origin.to(device), directions.to(device), coords.to(device, torch.float32)
    template = {k: v.to(device) for k, v in template.items()}
    results = {name: {"loss": torch.empty(len(coords)), "accuracy": torch.empty(len(coords))} for name in splits}
    per_point = transform is not None
    step = 1 if per_point else max(1, chunk)

    # a tied weight (an embedding and its output head) is one tensor under two keys: functional_call takes it once
    own = {name for name, _ in model.named_parameters()} | {name for name, _ in model.named_buffers()}

    def forward(params, x):
        return logits_of(functional_call(model, {k: v for k, v in params.items() if k in own}, (x,)))

    def looped(params, x):  # one point at a time, for a model vmap cannot batch
        return torch.stack([forward({k: v[p] for k, v in params.items()}, x) for p in range(next(iter(params.values())).shape[0])])

    mapped = vmap(forward, in_dims=(0, None))

    def batched(params, x):
        nonlocal mapped
        try:
            return mapped(params, x)
        except RuntimeError as exc:  # control flow on tensor values; a real error comes back from the loop
            if mapped is looped:
                raise
            log.info("%s cannot be batched by torch.func.vmap (%s); evaluating its points one at a time",
                     type(model).__name__, str(exc).splitlines()[0][:120])
            mapped = looped
            return looped(params, x)
    bar = tqdm(total=len(coords), desc=desc, disable=not sys.stderr.isatty(), leave=False)
    clamped = 0
    with torch.inference_mode():
        for start in range(0, len(coords), step):
            c = coords[start : start + step]
            flat = origin[None] + c @ directions
            params = unflatten(flat, template, keys)
            clamped += clamp_variances(params)
            if per_point:
                load_state(model, {k: v[0] for k, v in params.items()})
                with torch.inference_mode(False):
                    transform(model, c[0].cpu())
                params = {k: v[None].to(device) for k, v in model.state_dict().items()}
            for name, split in splits.items():
                loss_sum = torch.zeros(len(c), device=device)
                correct = torch.zeros(len(c), device=device)
                scored = torch.zeros((), device=device)
                for b in range(0, len(split), batch_size):
                    x = split.x[b : b + batch_size].to(device)
                    y = split.y[b : b + batch_size].to(device)
                    logits = batched(params, x)  # (c, B, [tokens,] classes)
                    hits, n = token_hits(logits, y)
                    loss_sum, correct, scored = loss_sum + token_loss(logits, y), correct + hits, scored + n[0]
                scored = scored.clamp(min=1)
                results[name]["loss"][start : start + len(c)] = (loss_sum / scored).cpu()
                results[name]["accuracy"][start : start + len(c)] = (correct / scored).cpu()
            bar.update(len(c))
    bar.close()
    if clamped and not per_point:
        log.warning("%d of %d points (%s) extrapolate BatchNorm running variances below 0, clamped at 0 there; post=[bn_reset] "
                    "measures every point with its own statistics", clamped, len(coords), desc)
    return results
