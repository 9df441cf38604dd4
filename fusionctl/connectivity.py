"""Linear mode connectivity of your own networks from Python: the loss and error along straight
lines between in-memory modules, naive and after alignment, and their barriers (METHOD.md C).

    summary, curves = fusionctl.barriers([model_a, model_b], data, method="wb")

`fusionctl landscape` does the same (and the 2-D plane) for models the command line trains.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from torch import nn

from fusionctl.api import check_batches, derive_spec, fuse_models, holding
from fusionctl.data import Split
from fusionctl.errors import FusionctlError
from fusionctl.eval.barrier import barrier, line_ts
from fusionctl.eval.grid import evaluate_points, flatten, float_keys
from fusionctl.fusion import check_aligns
from fusionctl.fusion.post import POST_STEPS, repair_gaps
from fusionctl.fusion.transport import relative_coupling, transport


def barriers(models: list[nn.Module], data, method: str = "wb", points: int = 25, post: str | None = None, align_data=None,
             example_inputs=None, spec=None, check: bool = True, **settings) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Barriers from model 0 to every other model, along the naive line θ₀ → θᵢ and the aligned line
    θ₀ → π(θᵢ), π the permutation (or coupling) that `method`'s fusion puts between them.

    data: labelled batches [(inputs, labels), ...] or a DataLoader of them, all evaluated (a test set).
    align_data: the batches the alignment reads (activation costs, cost=auto's choice; the first 8),
    e.g. training data; default: data. points: t values from 0 to 1. post: "bn_reset" or "repair",
    applied at every point (a BN net's interpolations need their statistics reset; from `data`).
    spec, check and settings as in fuse_models.
    Returns (summary, curves): per line its loss barrier (nats), error barrier (percentage points),
    and accuracy at both ends and the midpoint (%); the curves as line, t, loss, accuracy (%).
    """
    batches = [b for b in data]
    check_batches(batches, "data")
    if not batches or not all(isinstance(b, (tuple, list)) and len(b) > 1 for b in batches):
        raise FusionctlError("barriers needs labelled data: batches of (inputs, labels), e.g. a DataLoader of a labelled dataset")
    if post is not None and post not in POST_STEPS:
        raise FusionctlError(f"unknown post-step '{post}'; choose from: {', '.join(POST_STEPS)}")
    check_aligns(method, "barriers")
    models = list(models)
    x = torch.cat([b[0] for b in batches])
    if spec is None:
        spec = derive_spec(models[0], x[:2] if example_inputs is None else example_inputs, check)
    if post == "repair":  # before anything is fused
        repair_gaps(spec, models[0].state_dict(), 'post-step "repair"')
    _, couplings = fuse_models(models, method, data=batches if align_data is None else align_data, spec=spec, check=False,
                               return_couplings=True, **settings)
    split = Split(x, torch.cat([b[1] for b in batches]))
    states = [{k: v.detach().clone() for k, v in m.state_dict().items()} for m in models]
    ts = line_ts(points)
    rows, curves = [], []
    for i in range(1, len(models)):
        aligned = transport(states[i], spec, {g: relative_coupling(couplings[0][g], couplings[i][g]) for g in spec.groups})
        lines = {f"aligned 1-{i + 1}": aligned}
        if spec.group_sizes(states[i]) == spec.group_sizes(states[0]):
            lines = {f"naive 1-{i + 1}": states[i], **lines}
        for name, end in lines.items():
            loss, acc = _line(models[0], spec, states[0], end, ts, split, post)
            curves += [{"line": name, "t": t, "loss": lo, "accuracy": 100 * a} for t, lo, a in zip(ts, loss, acc)]
            rows.append({"line": name, "post": post or "none", "loss_barrier": barrier(ts, loss), "error_barrier": barrier(ts, 100 * (1 - acc)),
                         "start_accuracy": 100 * acc[0], "end_accuracy": 100 * acc[-1], "midpoint_accuracy": float(np.interp(0.5, ts, 100 * acc))})
    return pd.DataFrame(rows), pd.DataFrame(curves)


def _line(model: nn.Module, spec, start: dict, end: dict, ts: np.ndarray, split: Split, post: str | None) -> tuple[np.ndarray, np.ndarray]:
    """Loss and accuracy at every t of the line start -> end (in model 0's module)."""
    keys = float_keys(start)
    origin = flatten(start, keys)
    transform = None
    if post is not None:
        ends = [holding(model, start), holding(model, end)]

        def transform(m, coords):  # the post-step at t, its references the two ends mixed by t
            t = float(coords[0])
            POST_STEPS[post](m, spec, ends, [1.0 - t, t], split)

    res = evaluate_points(holding(model, start), start, origin, (flatten(end, keys) - origin)[None],
                          torch.tensor(ts, dtype=torch.float32)[:, None], {"data": split}, transform=transform, desc="line")
    return res["data"]["loss"].numpy().astype(float), res["data"]["accuracy"].numpy().astype(float)
