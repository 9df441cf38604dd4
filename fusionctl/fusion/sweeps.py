"""Whole-network barycenter alignment: every group re-coupled on all of its weights.

A node of group g is described by every parameter slice the spec says g indexes — incoming
rows, outgoing columns, biases, norm parameters — with the other axes mapped through the
current couplings of the neighbouring groups (weight matching's objective), plus, when the
cost mixes them in, its z-scored activations Z (features.py). With the barycenter
theta_bar = sum_i lambda_i T_i(theta_i) the objective is

    J = sum_i lambda_i [ sum_key w_key |theta_bar[key] - T_i(theta_i)[key]|^2
                         + a sum_g |Z_bar_g - R_i Z_i^g|^2 ].

Moves:
- `recouple(i, g)`: model i's coupling of group g re-solved against the barycenter of the
  other models. For permutations this is the exact minimiser of J over that coupling, so it
  never raises J; a soft or linearised (recurrent, grouped-conv) step that would is undone.
- `forward()`: the layer-wise pass, input to output on incoming rows: anchor every model to
  model 0 (or to an initial support), then re-couple to the others; no model stays an anchor.
- `sweep()`: K = 2, coordinate descent of model 1's groups against model 0 (weight matching);
  K > 2, each model in a random order aligned afresh to the barycenter of the others
  (MergeMany's move on a weighted barycenter), which can pass through worse states: the driver
  (barycenter.run_sweeps) keeps the best state visited, never worse than the layer-wise pass.
  K counts the models of weight > 0: one of weight 0 is no part of J and moves nothing, so it is
  aligned to the barycenter only once the others have found it (`align_rest`).

For a slice along an input axis (dim > 0) of model i the features are scaled by n_i / m, so
that the barycentric projection of a coupling equals the transport T_i (columns split by
source mass, METHOD.md E.2-2) and any target widths work. Costs are assembled from parts that
are reused while the couplings they read are unchanged (group_costs.py); an exact re-coupling
whose every part is unchanged is not solved again.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from fusionctl.fusion.group_costs import GroupCosts, Slice
from fusionctl.fusion.transport import identity_coupling
from fusionctl.models.spec import AlignmentSpec
from fusionctl.ot.barycenter import coupling_change, plan_cost
from fusionctl.ot.permutation import same
from fusionctl.ot.solver import Potentials, solve_ot

State = dict[str, torch.Tensor]


@dataclass
class OTSetup:
    method: str  # exact | sinkhorn
    reg: float
    sinkhorn_iter: int
    max_iter: int  # re-coupling rounds per group in the layer-wise pass
    tol: float = 1e-5  # soft couplings: a re-coupling that moves them less (scale-free) counts as no change

    def change_floor(self) -> float:
        return 1e-9 if self.method == "exact" else self.tol


def squared_norm(x: torch.Tensor) -> float:
    """|x|^2 of a float32 tensor: float32 sums along rows, float64 across them (about 1e-9 relative;
    summing every square in float64 took 3x as long, a sixth of a fusion at width 256)."""
    rows = x.reshape(x.shape[0] if x.dim() > 1 else 1, -1)
    return float(torch.linalg.vecdot(rows, rows).sum(dtype=torch.float64))


class Transported(dict):
    """A model's entries in the barycenter's node order, each transported when first read after a
    coupling it reads was set (K = 2 reads model 1's only for the objective: most never are)."""

    def __init__(self, make: Callable[[str], torch.Tensor], entries: dict | None = None):
        super().__init__(entries or {})
        self.make = make

    def __missing__(self, key: str) -> torch.Tensor:
        value = self[key] = self.make(key)
        return value

    def copy(self) -> Transported:
        return Transported(self.make, self)


class NetworkBarycenter(GroupCosts):
    """The couplings of K models to one barycenter, improved group by group.

    key_weights: w_key per state entry (1 = plain squared weights, 0 = left out); acts: per
    model {group: (n_i, d)} activation features, weighted by act_weight; alpha: None ignores
    recurrent weights while matching (the no-hidden ablation), else weighs them by alpha.
    """

    def __init__(self, spec: AlignmentSpec, states: list[State], weights: list[float], target_sizes: dict[str, int], ot: OTSetup,
                 couplings: list[dict] | None = None, key_weights: dict[str, float] | None = None, acts: list[dict] | None = None,
                 act_weight: float = 0.0, alpha: float | None = None, seed: int = 0, device="cpu"):
        self.spec, self.weights, self.ot, self.device = spec, list(weights), ot, device
        # a model of weight 0 is no part of J or of the barycenter: left out of the search, aligned to its result (align_rest)
        self.active = [i for i, w in enumerate(self.weights) if w > 0]
        # float32 features, costs and transports: twice float64's speed, and OT needs only the costs'
        # order and scale (Sinkhorn iterates in float64 inside; the objective sums in float64)
        self.dtype = torch.float32
        self.target_sizes = dict(target_sizes)
        self.couplings = [{g: p.to(device) for g, p in c.items()} for c in couplings or [{} for _ in states]]
        w = key_weights or {}
        self.slices: dict[str, list[Slice]] = {g: [] for g in spec.groups}
        for key, axes in spec.axes.items():
            for dim, ax in enumerate(axes):
                if ax is not None and w.get(key, 1.0) > 0:
                    structure = sum(a is not None and a.group == ax.group for a in axes) > 1
                    if not structure or alpha is not None:
                        self.slices[ax.group].append(Slice(key, dim, ax, structure))
        self.group_keys = {g: list(dict.fromkeys(s.key for s in sl)) for g, sl in self.slices.items()}
        self.keys = list(dict.fromkeys(k for keys in self.group_keys.values() for k in keys))
        self.structured = alpha is not None and any(s.structure for sl in self.slices.values() for s in sl)
        # groups whose cost reads their own coupling (a grouped conv's local inputs): a step may raise J
        self.linearised = {g for key, (_, g) in spec.local.items() if key in self.group_keys.get(g, ())}
        self.key_weights = {k: w.get(k, 1.0) * (alpha if self.structured and spec.structure(k) else 1.0) for k in self.keys}
        self.sizes = [spec.group_sizes(s) for s in states]
        self.theta = [{k: s[k].to(device, self.dtype) for k in self.keys} for s in states]
        self.moved = [Transported(functools.partial(self._transport, i)) for i in range(len(states))]
        self.acts = [{g: z.to(device, self.dtype) for g, z in a.items()} for a in acts] if acts and act_weight > 0 else None
        self.act_weight = act_weight if self.acts is not None else 0.0
        self.potentials: dict[tuple[str, int], Potentials] = {}
        self.unconverged = 0  # sinkhorn solves that stopped at their cap
        self.rng = np.random.default_rng(seed)
        self._init_costs()
        self._solved: dict[tuple[int, str], tuple] = {}  # (model, group) -> (cost keys, version) of its last exact solve

    # -- objective ---------------------------------------------------------------------------

    def objective(self, group: str | None = None) -> float:
        """J, or its part that depends on `group`'s couplings."""
        total = 0.0
        for key in self.keys if group is None else self.group_keys[group]:
            total += self.key_weights[key] * self._spread([self.moved[i][key] for i in self.active])
        if self.acts is not None:
            for g in self.spec.groups if group is None else [group]:
                total += self.act_weight * self._spread([self.moved_acts(i, g) for i in self.active])
        return total

    def _spread(self, xs: list[torch.Tensor]) -> float:
        """sum_i lambda_i |bar - x_i|^2 over the models of weight > 0, bar = sum_i lambda_i x_i (squared_norm's sums)."""
        w = [self.weights[i] for i in self.active]
        if len(xs) == 2 and abs(w[0] + w[1] - 1.0) < 1e-12:  # = lambda_0 lambda_1 |x_0 - x_1|^2: one difference, not three
            return w[0] * w[1] * squared_norm(xs[0] - xs[1])
        bar = sum(wi * x for wi, x in zip(w, xs))
        return sum(wi * squared_norm(bar - x) for wi, x in zip(w, xs))

    # -- moves -------------------------------------------------------------------------------

    def _set(self, i: int, group: str, coupling) -> None:
        self.couplings[i][group] = coupling
        self.version[(i, group)] = next(self._clock)
        for key in self.group_keys[group]:
            self.moved[i].pop(key, None)

    def _solve(self, i: int, group: str, cost: torch.Tensor):
        warm = self.potentials.setdefault((group, i), Potentials())
        plan = solve_ot(cost, self.ot.method, self.ot.reg, self.ot.sinkhorn_iter, warm, self.spec.blocks(group), self.spec.within(group))
        self.unconverged += not warm.converged
        return plan

    def recouple(self, i: int, group: str, incoming_only: bool = False, known: set[str] | None = None) -> bool:
        """Re-couple model i's `group` to the barycenter of the others; True if it changed.

        Only soft couplings or linearised weights (recurrent, or a grouped conv's local inputs) can
        raise J; such a step is undone. Soft couplings never stop moving: a step counts as a change
        only if it lowers J by more than tol (relative). Incoming-only steps (the greedy pass of a
        restart) are not checked. An exact solve is skipped when nothing its cost reads has changed
        since the last one.
        """
        known = known if known is not None else set(self.spec.groups)
        others = tuple(j for j, w in enumerate(self.weights) if j != i and w > 0)
        if not others:  # model i carries all the weight: it is the barycenter
            return False
        keys = self.cost_keys(i, group, others, incoming_only, known)
        exact = self.ot.method == "exact"
        if exact and self._solved.get((i, group)) == (keys, self.version[(i, group)]):
            return False  # the same cost again: the same plan again
        checked = not incoming_only and (not exact or self.structured or group in self.linearised)
        before = self.objective(group) if checked else 0.0
        old, version = self.couplings[i][group], self.version[(i, group)]
        moved = {key: self.moved[i][key] for key in self.group_keys[group] if key in self.moved[i]}
        new = self._solve(i, group, self.cost(i, group, keys))
        changed = coupling_change([new], [old]) >= self.ot.change_floor()
        if changed:
            self._set(i, group, new)
        if changed and checked:
            after = self.objective(group)
            if after > before * (1 + 1e-12):
                self._set(i, group, old)
                self.moved[i].update(moved)
                self.version[(i, group)] = version
                changed = False
            elif not exact:
                changed = after < before * (1 - self.ot.tol)
        if exact:
            self._solved[(i, group)] = (keys, self.version[(i, group)])
        return changed

    def forward(self, support: Callable[[str, set[str]], torch.Tensor] | None) -> None:
        """The layer-wise pass on incoming rows. support(group, known) gives an initial support in
        the target's basis; None anchors to model 0, whose coupling starts as the identity."""
        known: set[str] = set()
        for group in self.spec.groups:
            if support is None:
                self._set(0, group, identity_coupling(self.sizes[0][group], self.device))
                for i in (i for i in self.active if i != 0):  # model 0 as it is: its share of the barycenter, as a re-coupling reads it
                    self._set(i, group, self._solve(i, group, self.cost(i, group, self.cost_keys(i, group, (0,), True, known))))
            else:
                anchor = support(group, known).to(self.device, self.dtype)
                for i in self.active:
                    self._set(i, group, self._solve(i, group, plan_cost(anchor, self.model_features(i, group, known), self.ot.method)))
            if not (support is None and self.active[:1] == [0] and len(self.active) == 2 and self.ot.method == "exact"):  # else optimal
                # soft couplings get one round: repeated rounds only blur them further (a blurred
                # coupling averages units, which shrinks the spread without aligning anything)
                for _ in range(self.ot.max_iter if self.ot.method == "exact" else 1):
                    if not sum(self.recouple(i, group, True, known) for i in self.active):
                        break
            known.add(group)

    def descend(self, i: int, passes: int = 100) -> int:
        """Coordinate descent over model i's groups in random orders until none changes."""
        changes = 0
        for _ in range(passes):
            changed = sum(self.recouple(i, self.spec.groups[j]) for j in self.rng.permutation(len(self.spec.groups)))
            changes += changed
            if not changed:
                break
        return changes

    def restart(self, i: int) -> None:
        """Align model i afresh to the barycenter of the others: a greedy input-to-output pass on
        incoming rows, then coordinate descent."""
        self.keep_costs_of(i)  # the others' cached costs read model i, about to move: free their memory
        known: set[str] = set()
        for group in self.spec.groups:
            self.recouple(i, group, incoming_only=True, known=known)
            known.add(group)
        self.descend(i)

    def sweep(self) -> int:
        """One pass over the models (see the module docstring); returns the couplings changed."""
        active, start = self.active, self.snapshot()
        if len(active) == 2:
            self.descend(active[1])  # the first model's problem is the transpose of the second's (exactly so for permutations)
        else:
            for i in self.rng.permutation(len(active)):
                self.restart(active[i])
        now, before = self.couplings, start[0]
        return sum(int(now[i][g] is not before[i][g] and not same(now[i][g], before[i][g])) for i in active for g in self.spec.groups)

    def align_rest(self) -> None:
        """Each model of weight 0 aligned to the barycenter the others reached: a greedy pass on
        incoming rows, then coordinate descent (J, which it takes no part in, stays as it is)."""
        for i in (i for i in range(len(self.theta)) if i not in self.active):
            known: set[str] = set()
            for group in self.spec.groups:
                self._set(i, group, self._solve(i, group, self.cost(i, group, self.cost_keys(i, group, tuple(self.active), True, known))))
                known.add(group)
            self.descend(i)

    def separable(self) -> bool:
        """True when no group's cost reads another group's coupling (activations only): then with
        K = 2 and exact OT the layer-wise pass is already optimal and sweeps cannot change it."""
        return not self.keys

    def snapshot(self) -> tuple[list[dict], list[dict], dict]:
        return [dict(c) for c in self.couplings], [mv.copy() for mv in self.moved], dict(self.version)

    def restore(self, snap) -> None:
        """Back to a snapshot; versions come back with their couplings, so cached costs stay valid."""
        self.couplings, self.moved = [dict(c) for c in snap[0]], [mv.copy() for mv in snap[1]]
        self.version = dict(snap[2])

    def result(self) -> list[dict]:
        return [{g: p.cpu() for g, p in c.items()} for c in self.couplings]

    def moved_entries(self, states: list[State]) -> list[dict[str, torch.Tensor]]:
        """Per model, the entries of T_i(theta_i) that the objective already made and that equal
        what transport() gives (the state's dtype, on the CPU, no per-head entry): the fusion takes
        them instead of moving the models again (an eighth of a fusion at width 256)."""
        return [{k: t for k, t in mv.items() if k not in self.spec.per_head and t.dtype == s[k].dtype and t.device.type == "cpu"}
                for mv, s in zip(self.moved, states)]
