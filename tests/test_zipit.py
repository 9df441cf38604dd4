"""solver=zipit: greedy merges of correlated units within and across models (fusion/zipit.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fusionctl.config import ModelConfig, solver_settings
from fusionctl.errors import FusionctlError
from fusionctl.fusion import FusionContext, fuse
from fusionctl.fusion.post import aligned_references, target_stats, unit_stats
from fusionctl.fusion.zipit import zip_units
from fusionctl.jobs.activations import activation_probe
from fusionctl.models import build_model, model_spec
from fusionctl.ot.permutation import Merge
from tests.test_sweeps import CNN, MLP, noisy_permuted_copies, outputs, random_states, toy_splits

CASES = [(MLP, (1, 5, 5)), (CNN, (3, 8, 8))]


def context(cfg, shape):
    return FusionContext(activations=activation_probe(cfg, toy_splits(shape)))


@pytest.mark.parametrize("cfg, shape", CASES, ids=["mlp", "resnet20-bn"])
def test_zipit_of_a_model_and_permuted_copies_of_itself_returns_its_function(cfg, shape):
    state = random_states(cfg, 1, shape)[0]
    spec, copies, _ = noisy_permuted_copies(cfg, state, 4, 0.0, shape)
    res = fuse("zipit", spec, copies, [0.1, 0.2, 0.3, 0.4], spec.group_sizes(state), solver_settings("zipit"), context(cfg, shape))
    x = torch.randn(32, *shape)
    assert torch.allclose(outputs(cfg, res.state, x, shape), outputs(cfg, state, x, shape), atol=1e-5)


@pytest.mark.parametrize("cfg, shape", CASES, ids=["mlp", "resnet20-bn"])
def test_zipit_merges_each_unit_with_its_planted_counterparts_in_five_noisy_copies(cfg, shape):
    """With alpha = 1 (pure complete linkage). ZipIt's alpha = 0.3 shrinks a cluster's similarities
    at each merge, so at K = 5 fresh pairs of unrelated units can outbid the fourth and fifth copies."""
    state = random_states(cfg, 1, shape)[0]
    spec, copies, planted = noisy_permuted_copies(cfg, state, 5, 0.05, shape)
    res = fuse("zipit", spec, copies, [0.2] * 5, spec.group_sizes(state), solver_settings("zipit", {"alpha": 1.0}), context(cfg, shape))
    for group in spec.groups:
        first = res.couplings[0][group].cluster
        assert torch.equal(first, torch.arange(first.numel())), group  # fused units in model 0's order
        for i in range(1, 5):  # copy i's unit j is model 0's unit planted.index[j]
            assert torch.equal(res.couplings[i][group].cluster, first[planted[i][group].index]), (i, group)


def duplicated_unit(state: dict) -> dict:
    """`state` with hidden unit 1 of the first layer a copy of unit 0 (same row and bias): the two
    compute one function, so the model is also a narrower one."""
    out = {k: v.clone() for k, v in state.items()}
    for key in ("layers.0.weight", "layers.0.bias"):
        out[key][1] = out[key][0]
    return out


@pytest.mark.parametrize("weights", [[0.5, 0.5], [0.8, 0.2]])
def test_zipit_zips_a_model_with_a_duplicated_unit_and_its_copy_into_one_unit_fewer_keeping_its_function(weights):
    """The unmerge: a later layer reads a merged unit wherever it read a member, so its columns
    add up; with only cross-model merges (am, wm) one unit fewer is out of reach."""
    state = duplicated_unit(random_states(MLP, 1)[0])
    spec, copies, _ = noisy_permuted_copies(MLP, state, 2, 0.0, (1, 5, 5))
    narrow = dict(spec.group_sizes(state), **{spec.groups[0]: MLP.widths[0] - 1})
    res = fuse("zipit", spec, copies, weights, narrow, solver_settings("zipit", {"beta": 1.0}), context(MLP, (1, 5, 5)))
    assert res.state["layers.0.weight"].shape[0] == MLP.widths[0] - 1
    fused_cfg = ModelConfig("mlp", [MLP.widths[0] - 1, *MLP.widths[1:]], True)
    x = torch.randn(32, 1, 5, 5)
    assert torch.allclose(outputs(fused_cfg, res.state, x, (1, 5, 5)), outputs(MLP, state, x, (1, 5, 5)), atol=1e-5)
    # REPAIR's targets, the bases' statistics mapped by the merges, are what the fused model measures
    refs = aligned_references(lambda s: _holding(MLP, s), copies, spec, x)(res.couplings)
    fused = _holding(fused_cfg, res.state)
    for (mu, sd), (mu_t, sd_t) in zip(unit_stats(fused, spec, x), target_stats(refs, spec, weights, x)):
        assert torch.allclose(mu, mu_t, atol=1e-4) and torch.allclose(sd, sd_t, atol=1e-4)


def _holding(cfg, state):
    m = build_model(cfg, (1, 5, 5), 4)
    m.load_state_dict(state)
    return m.eval()


def test_the_same_model_budget_bounds_merges_within_a_model():
    torch.manual_seed(0)
    feats = [torch.nn.functional.normalize(torch.randn(12, 40), dim=1) for _ in range(2)]
    strict, _ = zip_units(feats, 12, 0.3, 0.0)
    assert all(sorted(c.tolist()) == list(range(12)) for c in strict)  # beta = 0: every fused unit one unit of each model
    free, _ = zip_units(feats, 12, 0.3, 1.0)
    assert any(np.bincount(c, minlength=12).max() > 1 for c in free)  # unrelated models: some units merge within one
    budget = int(0.5 * 12 / 2)  # beta x (units removed) / K
    loose, beyond = zip_units(feats, 12, 0.3, 0.5)
    assert beyond == 0
    assert all(sum(max(n - 1, 0) for n in np.bincount(c, minlength=12)) <= budget for c in loose)


def test_a_model_of_weight_zero_changes_nothing_and_joins_its_counterparts():
    state = random_states(MLP, 1)[0]
    spec, (a, b, c), planted = noisy_permuted_copies(MLP, state, 3, 0.01, (1, 5, 5))
    ctx, settings = context(MLP, (1, 5, 5)), solver_settings("zipit")
    two = fuse("zipit", spec, [a, b], [0.5, 0.5], spec.group_sizes(a), settings, ctx)
    three = fuse("zipit", spec, [a, b, c], [0.5, 0.5, 0.0], spec.group_sizes(a), settings, ctx)
    assert all(torch.equal(two.state[k], three.state[k]) for k in two.state)
    for group in spec.groups:
        assert isinstance(three.couplings[2][group], Merge)
        assert torch.equal(three.couplings[2][group].cluster, three.couplings[0][group].cluster[planted[2][group].index]), group


def test_zipit_refuses_what_it_cannot_merge_in_one_line_and_says_when_the_budget_gave_way(caplog):
    a, b = random_states(MLP, 2)
    small = ModelConfig("mlp", [3, 3, 3], True)
    torch.manual_seed(5)
    c = {k: v.detach() for k, v in build_model(small, (1, 5, 5), 4).state_dict().items()}
    spec, ctx = model_spec(MLP), context(MLP, (1, 5, 5))
    sizes = spec.group_sizes(a)
    with pytest.raises(FusionctlError, match="at most the 24 units"):
        fuse("zipit", spec, [a, b], [0.5, 0.5], dict(sizes, **{spec.groups[0]: 25}), solver_settings("zipit"), ctx)
    caplog.clear()
    narrow = fuse("zipit", spec, [a, c], [0.5, 0.5], dict(sizes, **{spec.groups[0]: 3}), solver_settings("zipit"), ctx)
    assert narrow.state["layers.0.weight"].shape[0] == 3  # 3 merges across the models, then 9 within model 0, over its budget
    assert "9 merges within one model beyond solver.beta=0.125's budget; raise solver.beta" in caplog.text
    with pytest.raises(FusionctlError, match="needs training data"):
        fuse("zipit", spec, [a, b], [0.5, 0.5], sizes, solver_settings("zipit"), FusionContext())
    for bad, line in (({"alpha": 0}, "solver.alpha must be in"), ({"beta": 2}, "solver.beta must be in")):
        with pytest.raises(FusionctlError, match=line):
            solver_settings("zipit", bad)


def test_zipit_names_the_groups_it_cannot_merge_and_the_lines_it_cannot_draw():
    import fusionctl
    from tests import custom_nets

    x = torch.randn(8, 3, 8, 8)
    data = [(x, torch.randint(0, 4, (8,)))]
    attention = [custom_nets.GroupedQueryNet().eval() for _ in range(2)]
    with pytest.raises(FusionctlError, match="solver=zipit merges single units, but .* move only as whole heads or blocks"):
        fusionctl.fuse_models(attention, method="zipit", data=data)
    experts = [custom_nets.StackedExpertsNet().eval() for _ in range(2)]
    with pytest.raises(FusionctlError, match="gate_up_proj.parts.* show their units in no module's output; use solver=wm or wb"):
        fusionctl.fuse_models(experts, method="zipit", data=data)
    with pytest.raises(FusionctlError, match="solver=zipit merges units .* aligns no model to another"):
        fusionctl.barriers([custom_nets.SmallNet(), custom_nets.SmallNet()], data, method="zipit")


def test_zipit_into_the_models_summed_widths_merges_nothing_and_is_their_logit_average():
    """No merge: every fused unit is one model's unit, read only by that model's units, so the
    fused net is the models side by side and its output layer their lambda-weighted mean."""
    states = random_states(MLP, 3)
    spec = model_spec(MLP)
    summed = {g: 3 * n for g, n in spec.group_sizes(states[0]).items()}
    weights = [0.5, 0.3, 0.2]
    res = fuse("zipit", spec, states, weights, summed, solver_settings("zipit"), context(MLP, (1, 5, 5)))
    wide = ModelConfig("mlp", [3 * w for w in MLP.widths], True)
    x = torch.randn(32, 1, 5, 5)
    mean = sum(w * outputs(MLP, s, x, (1, 5, 5)) for w, s in zip(weights, states))
    assert torch.allclose(outputs(wide, res.state, x, (1, 5, 5)), mean, atol=1e-5)
