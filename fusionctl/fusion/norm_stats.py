"""BatchNorm running variances that fit the fused units, predicted from the probed correlations.

Averaging the aligned models' running variances assumes aligned units are perfectly correlated.
They are not, so a fused unit's output varies less than its stored variance says, BatchNorm
shrinks it, and the shrinkage compounds through the network (REPAIR's variance collapse). If
the fused unit is the lambda-mix of the aligned units it replaces, h = sum_i lambda_i T_i(h_i),
its variance is sum_ik lambda_i lambda_k cov(T_i h_i, T_k h_k). With z the probe's z-scored
features (z z^T = corr, features.py) and s_i = sqrt(running_var_i), that is
|sum_i lambda_i T_i(s_i * z_i)|^2 per unit. The correlations are each writer's own: the cost's
features where a group has one writer; for a residual stream the same probe also features each
writer apart (its pooled correlation mixes the writers': 33.1 % one-shot on resnet20 +BN against 40.0).
"""

from __future__ import annotations

import torch

from fusionctl.fusion.transport import transport_tensor
from fusionctl.models.spec import AlignmentSpec, Axis


def predicted_running_vars(spec: AlignmentSpec, states: list[dict], weights: list[float], couplings: list[dict],
                           writer_acts: list[dict[str, torch.Tensor]], fused: dict) -> dict[str, torch.Tensor]:
    """{norm.running_var: the fused units' predicted variance} for every BatchNorm a group's units
    pass through, from per state {writer: its outputs' z-scored features}. A unit that was constant
    on the probe's inputs in every model keeps its average."""
    out = {}
    for group in spec.groups:
        for unit in spec.units.get(group, ()):
            key = f"{unit.norm}.running_var"
            if unit.norm is None or key not in fused or unit.channels is not None:  # part of a cut writer: its variances stay averaged
                continue
            rows = (Axis(group), None)  # (units, features), the units moved as the norm's own entries are
            total = live = 0.0
            for state, coupling, feats, lam in zip(states, couplings, writer_acts, weights):
                z = feats[unit.writer].to(torch.float64)
                scaled = z * state[key].to(z).clamp_min(0).sqrt()[:, None]
                total = total + lam * transport_tensor(scaled, rows, coupling)
                live = live + transport_tensor(z.norm(dim=1, keepdim=True), rows, coupling)
            var = total.pow(2).sum(1)
            out[key] = torch.where(live[:, 0] > 0, var, fused[key].to(var)).to(fused[key].dtype)
    return out
