"""Spec-driven layer-wise fusion: couplings group by group, then one weighted average.

For a group g, node k of model i is its incoming weights (and bias) with every input axis
already mapped into the barycenter's basis by the couplings of earlier groups. Layer-wise WB
(METHOD.md A.3) is then a free-support barycenter of these point clouds. Because the
barycentric projection of the final couplings equals sum_i lambda_i T_i(theta_i), the fused
model is the weighted average of the transported base models, whatever produced the couplings.

With equal widths our cost |x_j - T(w)_k|^2 differs from the TLp cost
sum_ab P(a,b)(x_ja - w_kb)^2 only by a term that depends on k alone, which no OT solution
(exact or entropic) can see; with different widths it maps inputs by source mass (E.2-2).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Callable

import torch

from fusionctl.fusion.transport import along, maps_statistics, transport, weighted_average
from fusionctl.models.spec import AlignmentSpec, node_rows
from fusionctl.ot import free_support_barycenter
from fusionctl.ot.gromov import fused_gw_barycenter

State = dict[str, torch.Tensor]


@dataclass
class FusionContext:
    """What some methods need beyond the weights: a random target of the fused widths
    (init=random|distill) and unit activations on training inputs (activation costs, `am`)."""

    random_target: Callable[[], "State"] | None = None
    # (states, samples, writers=()) -> per state {group: (n, d)} z-scored activation features
    # (features.py); with writers named, (that, per state {writer: its own outputs' features})
    activations: Callable[..., list[dict[str, torch.Tensor]] | tuple] | None = None
    score: Callable[["FusionResult"], "HeldOut"] | None = None  # a fusion's held-out score (solver.cost=auto)
    device: str = "cpu"  # where costs, Sinkhorn and barycenter updates run; exact assignments solve on the CPU
    score_after: str | None = None  # the post-step `score` applies first (bn_reset, repair), named in cost=auto's log


@dataclass(frozen=True)
class HeldOut:
    """A fusion's score on labelled examples (solver.cost=auto): per example its cross-entropy and
    whether the prediction is right."""

    losses: torch.Tensor
    hits: torch.Tensor

    @property
    def accuracy(self) -> float:
        return float(self.hits.double().mean()) if self.hits.numel() else 0.0

    @property
    def loss(self) -> float:
        return float(self.losses.double().mean()) if self.losses.numel() else 0.0

    def beats(self, other: HeldOut) -> bool:
        """More accurate than `other` on the same examples (the losses are reported, not compared:
        between candidates of one accuracy a loss gap of a thousandth is noise; no examples, accuracy 0)."""
        return self.accuracy > other.accuracy


@dataclass
class FusionResult:
    state: State
    couplings: list[dict]  # per base model: group -> (target n, base n) tensor, or a Permutation (ot/permutation.py)
    info: dict[str, dict] = field(default_factory=dict)  # per group of the layer-wise pass: iterations, converged, cost
    sweeps: dict = field(default_factory=dict)  # whole-network sweeps: count, converged, objective before and after
    # the bases in the target's node order, kept when a coupling is not a permutation: REPAIR's
    # references are these states, so they are not transported a second time
    aligned: list[State] | None = None


def group_features(state: State, spec: AlignmentSpec, group: str, couplings: dict[str, torch.Tensor] | None,
                   key_weights: dict[str, float] | None = None, known: Collection[str] | None = None) -> torch.Tensor:
    """(n, D) node features of `group`: the rows of every entry whose axis 0 is the group (where
    none is, the slices of every entry along its axis in the group: stacked expert weights keep
    their units behind the experts axis).

    couplings=None means the state is already in the barycenter's basis. Entries with an
    input axis in the group itself (recurrent weights) are structure, not features; entries
    reading a group not solved yet (not in couplings, or not in `known` for a state in the
    barycenter's basis) are left to the final transport, so an initial support has the models'
    layout (a residual stream's rows read later groups). key_weights scale each entry's squared
    distance (entries of weight 0 are left out).
    """
    feats = _slices(state, spec, group, couplings, key_weights, known)
    if not feats:
        if key_weights is None:
            raise ValueError(f"group {group} has no parameter whose rows it indexes, or they all read groups after it "
                             "(a spec lists its groups from input to output)")
        return torch.zeros(spec.group_sizes(state)[group], 0, dtype=torch.float64)
    return torch.cat(feats, 1)


def _slices(state, spec, group, couplings, key_weights, known) -> list[torch.Tensor]:
    """group_features' pieces: the rows of the entries whose axis 0 is the group, or, if no entry's
    is, the slices of every entry along its one axis in the group."""
    at = {key: [dim for dim, ax in enumerate(axes) if ax is not None and ax.group == group] for key, axes in spec.axes.items()}
    rows = any(dims == [0] for dims in at.values())  # the group on two axes (recurrent weights) is structure
    feats = []
    for key, axes in spec.axes.items():
        if len(at[key]) != 1 or rows and at[key] != [0]:
            continue
        at0 = at[key][0]
        inputs = [ax for dim, ax in enumerate(axes) if ax is not None and dim != at0]
        solved = couplings if couplings is not None else known
        if solved is not None and any(ax.group not in solved for ax in inputs):
            continue
        w = 1.0 if key_weights is None else key_weights.get(key, 1.0)
        if w == 0:
            continue
        t = state[key].to(torch.float64) * (w**0.5 if w != 1.0 else 1.0)
        if couplings is not None:
            for dim, ax in enumerate(axes):
                if ax is not None and dim != at0:
                    t = along(t, dim, ax, couplings[ax.group], rows=False)
        feats.append(node_rows(t.movedim(at0, 0), axes[at0]))
    return feats


def group_structure(state: State, spec: AlignmentSpec, group: str, key_weights: dict[str, float] | None = None) -> torch.Tensor | None:
    """(G, n, n) recurrent weights of `group` (rows and columns both indexed by it), or None;
    scaled by sqrt(key_weights[key]) as the node features are (group_features)."""
    blocks = []
    for key, axes in spec.axes.items():
        if len(axes) == 2 and axes[0] is not None and axes[0].group == group and axes[1] is not None and axes[1].group == group:
            t = state[key].to(torch.float64) * (key_weights.get(key, 1.0) ** 0.5 if key_weights is not None else 1.0)
            blocks.append(t.reshape(axes[0].outer, -1, t.shape[1]))
    return torch.cat(blocks) if blocks else None


def barycenter_couplings(
    spec: AlignmentSpec,
    states: list[State],
    weights: list[float],
    init_state: State,
    init_in_target_basis: bool,
    *,
    ot_method: str,
    reg: float,
    max_iter: int,
    tol: float,
    sinkhorn_iter: int = 1000,
    alpha: float | None = None,
    inner_iter: int = 50,
    key_weights: dict[str, float] | None = None,
    acts: list[dict[str, torch.Tensor]] | None = None,
    init_acts: dict[str, torch.Tensor] | None = None,
    act_weight: float = 0.0,
    device: str | torch.device = "cpu",
) -> tuple[list[dict[str, torch.Tensor]], dict[str, dict]]:
    """Layer-wise WB couplings (the paper's pass); the init's support is model 0's (mapped) or an own-basis target.

    With alpha set, groups with recurrent weights are matched by the fused Gromov-Wasserstein
    barycenter (GWB); without it their recurrent weights are ignored while matching (the
    FedMA-style ablation) and only transported afterwards. key_weights scale each entry's
    squared distance; acts (per state {group: (n, d)}) join the features with weight act_weight.
    """
    couplings: list[dict[str, torch.Tensor]] = [{} for _ in states]
    info: dict[str, dict] = {}
    for group in spec.groups:
        ys = [group_features(s, spec, group, c, key_weights) for s, c in zip(states, couplings)]
        x0 = group_features(init_state, spec, group, None if init_in_target_basis else couplings[0], key_weights, couplings[0])
        if acts is not None and act_weight > 0:
            ys = [torch.cat([y, a[group] * act_weight**0.5], 1) for y, a in zip(ys, acts)]
            x0 = torch.cat([x0, init_acts[group] * act_weight**0.5], 1)
        ys, x0 = [y.to(device) for y in ys], x0.to(device)
        hs = [group_structure(s, spec, group, key_weights) for s in states] if alpha is not None else [None]
        if hs[0] is not None:
            hs = [h.to(device) for h in hs]
            h0 = group_structure(init_state, spec, group, key_weights).to(device)
            res = fused_gw_barycenter(ys, hs, weights, x0, h0, alpha, ot_method, reg, max_iter, inner_iter, tol, sinkhorn_iter)
        else:
            res = free_support_barycenter(ys, weights, x0, ot_method, reg, max_iter, tol, sinkhorn_iter, spec.blocks(group), spec.within(group))
        for c, p in zip(couplings, res.couplings):
            c[group] = p.cpu()
        info[group] = {"iterations": res.iterations, "converged": res.converged, "cost": res.cost, "size": x0.shape[0],
                       "unconverged_solves": res.unconverged_solves}
    return couplings, info


def fuse_with_couplings(spec: AlignmentSpec, states: list[State], weights: list[float], couplings, info=None, done=None) -> FusionResult:
    """done: per model, entries already moved by its couplings (transport's `done`)."""
    moved = [transport(s, spec, c, d) for s, c, d in zip(states, couplings, done or [None] * len(states))]
    # the moved bases are kept for REPAIR only where their statistics cannot be mapped (a merge's T_i(theta_i) is no model)
    soft = any(not maps_statistics(p) for c in couplings for p in c.values())
    return FusionResult(weighted_average(moved, weights), couplings, info or {}, aligned=moved if soft else None)

