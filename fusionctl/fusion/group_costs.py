"""The OT cost of re-coupling one model's group in the sweeps (sweeps.py), assembled from cached parts.

A group's node features are parameter slices whose other axes are read through the couplings of
the groups they meet. The slices are bucketed by the groups they read (and by whether the
layer-wise pass may use them: incoming rows); a bucket's share of the cost, -<target, features>
for exact plans or squared distances for Sinkhorn, depends only on those couplings, and the
cost is the sum over buckets. Every coupling carries a version, a fresh number whenever it is
set, so a bucket whose couplings kept their versions is reused: the layer-wise pass's incoming
costs in the first sweep, and every bucket away from the last change after that.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Callable

import torch

from fusionctl.fusion.transport import grouped_inputs, rows_with_aligned_inputs, transport_tensor
from fusionctl.models.spec import AlignmentSpec, Axis, node_slices
from fusionctl.ot.barycenter import Part, plan_cost_parts

THIN = 8  # features per node up to which a bucket's cost part is recomputed rather than kept


@dataclass(frozen=True)
class Slice:
    key: str
    dim: int
    axis: Axis
    structure: bool  # the entry's other axis is indexed by the same group (recurrent weights)


@dataclass(frozen=True)
class Bucket:
    reads: tuple[str, ...]  # the groups of its slices' other axes
    incoming: bool  # incoming rows (dim 0, not recurrent; any slice if no row): what a layer-wise pass may use


class GroupCosts:
    """Node features and costs of K models' groups, cached by the versions of the couplings they read.

    The subclass (sweeps.NetworkBarycenter) sets spec, slices, key_weights, theta, moved, acts,
    act_weight, couplings, target_sizes, weights and ot, then calls `_init_costs`. Activation
    features, which read no coupling but the group's own, join the bucket of biases (reads nothing).
    """

    spec: AlignmentSpec
    slices: dict[str, list[Slice]]
    couplings: list[dict[str, torch.Tensor]]

    def _init_costs(self) -> None:
        self.buckets: dict[str, dict[Bucket, list[Slice]]] = {}
        for group in self.spec.groups:
            out: dict[Bucket, list[Slice]] = {}
            # no entry's rows index the group (stacked experts keep them behind the experts axis): every slice counts
            rows = any(s.dim == 0 and not s.structure for s in self.slices[group])
            for s in self.slices[group]:
                reads = {a.group for d, a in enumerate(self.spec.axes[s.key]) if a is not None and d != s.dim}
                if s.key in self.spec.local:  # a grouped conv's rows read their local inputs through their own group
                    reads.add(self.spec.local[s.key][1])
                reads = tuple(sorted(reads))
                out.setdefault(Bucket(reads, (s.dim == 0 or not rows) and not s.structure), []).append(s)
            if self.acts is not None:
                out.setdefault(Bucket((), True), [])
            self.buckets[group] = out
        # a bucket of a few features per node (biases, norms) is not kept: its product costs what
        # adding a kept copy does, and the copy is m x n (a third of the kept parts of an MLP layer)
        self.thin = {(g, b) for g, out in self.buckets.items() for b, sl in out.items()
                     if not self._holds_acts(b) and sum(self._width(s) for s in sl) <= THIN}
        self._clock = itertools.count()
        self.version = {(i, g): next(self._clock) for i, c in enumerate(self.couplings) for g in c}
        self._features: dict[tuple, tuple] = {}
        self._costs: dict[tuple, tuple] = {}

    def _width(self, s: Slice) -> int:
        """Features per node of slice s (model 0's)."""
        t = self.theta[0][s.key]
        return t.numel() // s.axis.nodes(t.shape[s.dim])

    def _cached(self, name: tuple, dep: tuple, build: Callable[[], torch.Tensor]) -> torch.Tensor:
        hit = self._features.get(name)
        if hit is None or hit[0] != dep:
            hit = self._features[name] = (dep, build())
        return hit[1]

    def _holds_acts(self, b: Bucket) -> bool:
        return self.acts is not None and b == Bucket((), True)

    def _transport(self, i: int, key: str, skip: int | None = None) -> torch.Tensor:
        """Model i's entry `key` in the barycenter's node order along every grouped axis but `skip`
        (a grouped conv's block-local inputs too: spec.local)."""
        t = transport_tensor(self.theta[i][key], self.spec.axes[key], self.couplings[i], skip)
        if key not in self.spec.local:
            return t
        # rows left in model i's order (a cost's slice) read their local inputs through its current blocks
        moved = rows_with_aligned_inputs if skip == 0 else grouped_inputs
        return moved(t, self.spec, key, self.couplings[i])

    def _own_parts(self, i: int, group: str, slices: list[Slice], acts: bool) -> list[Part]:
        """Model i's nodes of `group` on `slices`, every other axis in the barycenter's order: an
        (n_i, d) part and its scale per slice (and its activation features)."""
        m = self.target_sizes[group]
        parts = []
        for s in slices:
            t = node_slices(self._transport(i, s.key, s.dim), s.dim, s.axis)
            parts.append((t, self.key_weights[s.key] ** 0.5 * (t.shape[0] / m if s.dim else 1.0)))
        if acts:
            parts.append((self.acts[i][group], self.act_weight**0.5))
        return parts

    def model_features(self, i: int, group: str, known: set[str]) -> torch.Tensor:
        """Model i's incoming features of `group` in slice order (the layout of an initial support)."""
        slices = [s for b, sl in self.buckets[group].items() if b.incoming and known.issuperset(b.reads) for s in sl]
        order = {s: n for n, s in enumerate(self.slices[group])}
        return torch.cat([t * a for t, a in self._own_parts(i, group, sorted(slices, key=order.__getitem__), self.acts is not None)], 1)

    def _own(self, i: int, group: str, b: Bucket) -> list[Part]:
        build = lambda: self._own_parts(i, group, self.buckets[group][b], self._holds_acts(b))  # noqa: E731
        # K = 2: a part is recomputed when model i's own features changed, so a cache would not hit
        # (0 of 8 builds in a fusion at width 1024) and would hold a copy of the model (0.7 GiB for two
        # ViT-B/16); K > 2: a restart reuses them while other models move (306 of 366 builds, K = 4)
        if len(self.theta) == 2:
            return build()
        return self._cached(("own", i, group, b), tuple(self.version.get((i, h)) for h in b.reads), build)

    def _moved(self, i: int, group: str, b: Bucket) -> list[Part]:
        """The same parts of T_i(theta_i), i.e. model i's share of the barycenter: views of its
        transported entries, so nothing is copied."""
        parts = [(node_slices(self.moved[i][s.key], s.dim, s.axis), self.key_weights[s.key] ** 0.5) for s in self.buckets[group][b]]
        if self._holds_acts(b):
            parts.append((self.moved_acts(i, group), self.act_weight**0.5))
        return parts

    def moved_acts(self, i: int, group: str) -> torch.Tensor:
        """R_i Z_i: model i's activation features in the barycenter's node order (a gather for permutations)."""
        return self._cached(("acts", i, group), (self.version.get((i, group)),),
                            lambda: transport_tensor(self.acts[i][group], (Axis(group), None), self.couplings[i]))

    def _target(self, models: tuple[int, ...], group: str, b: Bucket) -> list[Part]:
        if len(models) == 1:
            return self._moved(models[0], group, b)
        total = sum(self.weights[j] for j in models)
        shares = [self._moved(j, group, b) for j in models]
        return [(sum(self.weights[j] * parts[n][0] for j, parts in zip(models, shares)) / total, shares[0][n][1])
                for n in range(len(shares[0]))]

    def keep_costs_of(self, i: int) -> None:
        """Drop the cached cost parts of every model but i (n x m each, per group and bucket)."""
        self._costs = {k: v for k, v in self._costs.items() if k[0] == i}

    def cost_keys(self, i: int, group: str, models: tuple[int, ...], incoming_only: bool, known: set[str]) -> tuple:
        """Per bucket in use, the versions its cost reads: model i's re-coupling of `group` to the
        barycenter of `models` on incoming rows of known groups only, or on everything."""
        return tuple((b, models, tuple(self.version.get((j, h)) for j in models for h in (group, *b.reads)),
                      tuple(self.version.get((i, h)) for h in b.reads))
                     for b in self.buckets[group] if not incoming_only or (b.incoming and known.issuperset(b.reads)))

    def cost(self, i: int, group: str, keys: tuple) -> torch.Tensor:
        """The (m, n_i) cost for `cost_keys`: each bucket's share recomputed only if a version it
        reads changed (a thin bucket's every time, into the sum)."""
        total, owned = None, False  # owned: a tensor of this call's, not a kept part (those stay as they are)
        for key in sorted(keys, key=lambda k: (group, k[0]) in self.thin):  # kept parts first
            b, models = key[0], key[1]
            if (group, b) in self.thin:
                out = total if owned or total is None else total.clone()
                total, owned = plan_cost_parts(self._target(models, group, b), self._own(i, group, b), self.ot.method, out=out), True
                continue
            hit = self._costs.get((i, group, b))
            if hit is None or hit[0] != key:
                hit = self._costs[(i, group, b)] = (key, plan_cost_parts(self._target(models, group, b), self._own(i, group, b), self.ot.method))
            if total is None:
                total = hit[1]
            elif owned:
                total.add_(hit[1])
            else:
                total, owned = total + hit[1], True
        if total is None:
            raise ValueError(f"group {group} has no features to align on")
        return total
