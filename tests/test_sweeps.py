"""Whole-network barycenter sweeps, z-scored activation features and solver settings per method."""

from __future__ import annotations

import contextlib
import io
from unittest.mock import patch

import pandas as pd
import pytest
import torch

from fusionctl import cli
from fusionctl.config import ModelConfig
from fusionctl.data import Split, Splits
from fusionctl.fusion import FusionContext, fuse
from fusionctl.fusion.barycenter import run_sweeps
from fusionctl.fusion.engine import HeldOut
from fusionctl.fusion.features import CorrelationFeatures
from fusionctl.fusion import sweeps
from fusionctl.fusion.sweeps import NetworkBarycenter, OTSetup
from fusionctl.fusion.transport import identity_couplings, random_couplings, relative_coupling, transport, weighted_average
from fusionctl.jobs.activations import activation_probe
from fusionctl.jobs.fuse import held_out_score, score_step, scoring_split
from fusionctl.models import build_model, model_spec, tiny_config
from fusionctl.ot.permutation import same
from tests.helpers import settings

MLP = ModelConfig("mlp", [12, 10, 8], True)
CNN = ModelConfig("resnet20", [6, 8, 10], False, True)


def random_states(cfg, k, shape=(1, 5, 5), classes=4):
    out = []
    for seed in range(k):
        torch.manual_seed(seed)
        m = build_model(cfg, shape, classes)
        with torch.no_grad():
            for name, p in m.named_parameters():
                if name.endswith("bias"):
                    p.normal_(0, 0.3)
            if any(isinstance(x, torch.nn.BatchNorm2d) for x in m.modules()):
                m.train()
                m(torch.randn(16, *shape) + 0.3)  # non-trivial running statistics
        out.append({k: v.detach().clone() for k, v in m.eval().state_dict().items()})
    return out


def noisy_permuted_copies(cfg, state, k, noise, shape):
    """k - 1 copies of `state`, each permuted at random in every group plus Gaussian noise."""
    spec = model_spec(cfg)
    copies, planted = [state], [identity_couplings(spec, state)]
    for seed in range(1, k):
        g = torch.Generator().manual_seed(100 + seed)
        cps = random_couplings(spec, state, g)
        moved = transport(state, spec, cps)
        copies.append({key: v + noise * v.std() * torch.randn(v.shape, generator=g) if v.is_floating_point() and v.numel() > 1 else v
                       for key, v in moved.items()})
        planted.append(cps)
    return spec, copies, planted


def outputs(cfg, state, x, shape, classes=4):
    m = build_model(cfg, shape, classes)
    m.load_state_dict(state)
    with torch.no_grad():
        return m.eval()(x).double()


# -- the objective ---------------------------------------------------------------------------------


def assert_recouplings_never_raise_the_objective(net, k, groups):
    """Three rounds of re-coupling every model's every group, J checked after each step."""
    value = net.objective()
    moves = 0
    for _ in range(3):
        for i in range(k):
            for group in groups:
                moves += net.recouple(i, group)
                now = net.objective()
                assert now <= value * (1 + 1e-12), (i, group)
                value = now
    assert moves > 0, "the test must exercise real moves"


@pytest.mark.parametrize("k", [2, 3])
@pytest.mark.parametrize("cost", ["weight", "both"])
def test_a_recoupling_step_never_raises_the_objective(k, cost):
    states = random_states(MLP, k)
    spec = model_spec(MLP)
    probe = activation_probe(MLP, toy_splits((1, 5, 5)))
    acts = probe(states, 64) if cost == "both" else None
    net = NetworkBarycenter(spec, states, [1 / k] * k, spec.group_sizes(states[0]), OTSetup("exact", 0.0, 1, 100), acts=acts,
                            act_weight=0.5 if acts else 0.0)
    net.forward(None)
    assert_recouplings_never_raise_the_objective(net, k, spec.groups)


def test_k2_sweeps_never_raise_the_objective_and_stop_when_nothing_changes():
    states = random_states(MLP, 2)
    spec = model_spec(MLP)
    net = NetworkBarycenter(spec, states, [0.5, 0.5], spec.group_sizes(states[0]), OTSetup("exact", 0.0, 1, 100))
    net.forward(None)
    values = [net.objective()]
    while True:
        changed = net.sweep()
        values.append(net.objective())
        assert values[-1] <= values[-2] * (1 + 1e-12)
        if not changed:
            break
    assert values[-1] < values[0], "sweeps on unrelated models must find a better alignment than the layer-wise pass"


def grouped_states(k, seeds=None, width=6, inner=8, groups=2):
    """k random ResNeXt-style nets (tests.custom_nets.GroupedNet) with their traced spec."""
    from fusionctl.models.trace import derive_spec
    from tests.custom_nets import GroupedNet

    states = []
    for seed in seeds or range(k):
        torch.manual_seed(seed)
        m = GroupedNet(width=width, inner=inner, groups=groups)
        with torch.no_grad():
            m.train()(torch.randn(16, 3, 5, 5) + 0.3)
        states.append({key: v.detach().clone() for key, v in m.eval().state_dict().items()})
    return derive_spec(m, torch.randn(2, 3, 5, 5)), states


@pytest.mark.parametrize("k", [2, 3])
def test_a_recoupling_of_a_grouped_conv_never_raises_the_objective_and_caches_its_own_coupling(k):
    """A grouped conv's rows read their local inputs through their own group's coupling (a
    linearised cost): a step that would raise J is undone, and a cost cached before the group
    moved is rebuilt."""
    spec, states = grouped_states(k)
    assert spec.local
    args = (spec, states, [1 / k] * k, spec.group_sizes(states[0]), OTSetup("exact", 0.0, 1, 100))
    net = NetworkBarycenter(*args)
    net.forward(None)
    assert_recouplings_never_raise_the_objective(net, k, spec.groups)
    fresh = NetworkBarycenter(*args, couplings=net.result())
    for i in range(k):
        others = tuple(j for j in range(k) if j != i)
        for group in spec.groups:
            assert torch.equal(net.cost(i, group, net.cost_keys(i, group, others, False, set())),
                               fresh.cost(i, group, fresh.cost_keys(i, group, others, False, set()))), (i, group)


@pytest.mark.parametrize("cfg,shape", [(MLP, (1, 5, 5)), (CNN, (3, 8, 8))])
def test_cached_costs_equal_costs_computed_afresh_after_any_moves(cfg, shape):
    """Every bucket reused from the cache is the one a new network with the same couplings computes."""
    states = random_states(cfg, 3, shape)
    spec = model_spec(cfg)
    acts = activation_probe(cfg, toy_splits(shape))(states, 64)
    args = (spec, states, [0.2, 0.3, 0.5], spec.group_sizes(states[0]), OTSetup("exact", 0.0, 1, 100))
    net = NetworkBarycenter(*args, acts=acts, act_weight=0.4)
    net.forward(None)
    run_sweeps(net, 3, 1e-5)  # restarts and descents in random orders, then back to the best state
    net.recouple(1, spec.groups[0])
    fresh = NetworkBarycenter(*args, couplings=net.result(), acts=acts, act_weight=0.4)
    for i in range(3):
        others = tuple(j for j in range(3) if j != i)
        for group in spec.groups:
            assert torch.equal(net.cost(i, group, net.cost_keys(i, group, others, False, set())),
                               fresh.cost(i, group, fresh.cost_keys(i, group, others, False, set()))), (i, group)


def test_a_recoupling_whose_cost_did_not_change_is_not_solved_again(monkeypatch):
    states = random_states(MLP, 2)
    spec = model_spec(MLP)
    net = NetworkBarycenter(spec, states, [0.5, 0.5], spec.group_sizes(states[0]), OTSetup("exact", 0.0, 1, 100))
    net.forward(None)
    while net.sweep():
        pass
    solves, real = [], sweeps.solve_ot
    monkeypatch.setattr(sweeps, "solve_ot", lambda *a, **k: solves.append(1) or real(*a, **k))
    assert net.sweep() == 0 and not solves  # from a fixed point nothing is solved again
    n = spec.group_sizes(states[0])[spec.groups[1]]
    net._set(0, spec.groups[1], torch.eye(n, dtype=torch.float64).flip(0) / n)  # a neighbour's coupling moves
    net.recouple(1, spec.groups[0])
    assert solves == [1]


@pytest.mark.parametrize("ot", ["exact", "sinkhorn"])
def test_run_sweeps_returns_the_best_state_it_visited(ot):
    states = random_states(MLP, 3)
    spec = model_spec(MLP)
    net = NetworkBarycenter(spec, states, [0.2, 0.3, 0.5], spec.group_sizes(states[0]), OTSetup(ot, 0.05, 1000, 20))
    net.forward(None)
    summary = run_sweeps(net, 4, 1e-5)
    assert summary["objective"] <= summary["objective_start"]
    assert net.objective() == pytest.approx(summary["objective"], rel=1e-12)


def test_sweeps_zero_reproduces_the_layer_wise_couplings_of_fusionctl_0_1():
    # Couplings of the paper's WB (exact, init model 0) computed by commit 4b0247d, before sweeps existed.
    expected = {
        False: [{"h1": list(range(12)), "h2": list(range(10)), "h3": list(range(8))},
                {"h1": [1, 6, 7, 4, 10, 11, 2, 0, 3, 8, 9, 5], "h2": [8, 3, 7, 4, 2, 5, 0, 1, 9, 6], "h3": [1, 6, 2, 5, 4, 0, 3, 7]},
                {"h1": [4, 11, 0, 1, 5, 6, 9, 2, 10, 8, 7, 3], "h2": [7, 9, 2, 3, 6, 4, 0, 5, 8, 1], "h3": [2, 0, 1, 3, 7, 6, 4, 5]}],
        True: [{"h1": list(range(12)), "h2": list(range(10)), "h3": list(range(8))},
               {"h1": [1, 6, 7, 4, 10, 11, 2, 0, 3, 8, 9, 5], "h2": [9, 6, 3, 1, 4, 7, 0, 8, 5, 2], "h3": [4, 7, 0, 6, 5, 3, 1, 2]},
               {"h1": [4, 11, 0, 1, 5, 3, 9, 6, 10, 8, 7, 2], "h2": [4, 1, 2, 0, 7, 3, 9, 6, 5, 8], "h3": [0, 4, 7, 2, 6, 5, 1, 3]}],
    }
    for bias in (False, True):
        cfg = ModelConfig("mlp", [12, 10, 8], bias)
        states = []
        for seed in range(3):
            torch.manual_seed(seed)
            states.append({k: v.detach() for k, v in build_model(cfg, (1, 5, 5), 4).state_dict().items()})
        spec = model_spec(cfg)
        res = fuse("wb", spec, states, [0.2, 0.3, 0.5], spec.group_sizes(states[0]), settings(sweeps=0, cost="weight"))
        got = [{g: p.index.tolist() for g, p in c.items()} for c in res.couplings]
        assert got == expected[bias]


# -- planted permutations and self-fusion ----------------------------------------------------------


@pytest.mark.parametrize("cfg, shape", [(MLP, (1, 5, 5)), (CNN, (3, 8, 8))], ids=["mlp", "resnet20-bn"])
def test_sweeps_recover_every_planted_permutation_of_five_noisy_copies(cfg, shape):
    state = random_states(cfg, 1, shape)[0]
    spec, copies, planted = noisy_permuted_copies(cfg, state, 5, 0.05, shape)
    res = fuse("wb", spec, copies, [0.2] * 5, spec.group_sizes(state), settings(cost="weight"))
    for i in range(1, 5):
        for group in spec.groups:
            rel = relative_coupling(res.couplings[0][group], res.couplings[i][group])  # model 0's nodes -> copy i's
            assert same(rel, planted[i][group].T), (i, group)


@pytest.mark.parametrize("cost", ["weight", "both"])
def test_a_model_of_weight_zero_changes_nothing_and_is_aligned_to_the_barycenter_of_the_others(cost):
    """[a, b, c] with weights [1/2, 1/2, 0] fuse as [a, b] do (the same couplings of a and b, the same
    state), and c, a permuted copy of a, is aligned to that barycenter as a is."""
    a, b = random_states(MLP, 2)
    spec, (_, c), (_, planted) = noisy_permuted_copies(MLP, a, 2, 0.0, (1, 5, 5))
    ctx = FusionContext(activations=activation_probe(MLP, toy_splits((1, 5, 5))))
    two = fuse("wb", spec, [a, b], [0.5, 0.5], spec.group_sizes(a), settings(cost=cost), ctx)
    three = fuse("wb", spec, [a, b, c], [0.5, 0.5, 0.0], spec.group_sizes(a), settings(cost=cost), ctx)
    assert two.sweeps["sweeps"] > 0  # the search ran
    assert all(same(p[g], q[g]) for p, q in zip(two.couplings, three.couplings) for g in spec.groups)
    assert all(torch.equal(two.state[k], three.state[k]) for k in two.state)
    for group in spec.groups:
        assert same(relative_coupling(three.couplings[0][group], three.couplings[2][group]), planted[group].T), group


@pytest.mark.parametrize("cfg, shape", [(MLP, (1, 5, 5)), (CNN, (3, 8, 8))], ids=["mlp", "resnet20-bn"])
def test_fusing_a_model_with_permuted_copies_of_itself_returns_its_function(cfg, shape):
    state = random_states(cfg, 1, shape)[0]
    spec, copies, _ = noisy_permuted_copies(cfg, state, 4, 0.0, shape)
    ctx = FusionContext(activations=activation_probe(cfg, toy_splits(shape)), score=lambda result: flat_score())
    x = torch.randn(32, *shape)
    for cost in ("weight", "both", "activation", "auto"):
        res = fuse("wb", spec, copies, [0.1, 0.2, 0.3, 0.4], spec.group_sizes(state), settings(cost=cost), ctx)
        assert torch.allclose(outputs(cfg, res.state, x, shape), outputs(cfg, state, x, shape), atol=1e-5), cost


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("cost", ["weight", "both"])
def test_fusion_on_cuda_recovers_the_planted_permutations_as_on_the_cpu(cost):
    cfg, shape = CNN, (3, 8, 8)
    state = random_states(cfg, 1, shape)[0]
    spec, copies, planted = noisy_permuted_copies(cfg, state, 3, 0.05, shape)
    splits = toy_splits(shape)
    runs = {dev: fuse("wb", spec, copies, [1 / 3] * 3, spec.group_sizes(state), settings(cost=cost),
                      FusionContext(activations=activation_probe(cfg, splits, dev), device=dev)) for dev in ("cpu", "cuda")}
    for group in spec.groups:
        for i in range(3):
            assert torch.equal(runs["cuda"].couplings[i][group].cpu(), runs["cpu"].couplings[i][group]), (i, group)
            rel = relative_coupling(runs["cuda"].couplings[0][group].cpu(), runs["cuda"].couplings[i][group].cpu())
            assert same(rel, planted[i][group].T), (i, group)


@pytest.mark.parametrize("sweeps", [0, 10])
@pytest.mark.parametrize("cfg, wide, shape", [(MLP, ModelConfig("mlp", [24, 20, 16], True), (1, 5, 5)),
                                              (CNN, ModelConfig("resnet20", [12, 16, 20], False, True), (3, 8, 8))])
def test_fusing_a_model_with_itself_into_a_2x_wider_target_keeps_its_function(cfg, wide, shape, sweeps):
    """Duplicated nodes, halved outgoing weights; for the ResNet the initial support must skip the
    stream rows that read groups not solved yet, as the models' features do."""
    state = random_states(cfg, 1, shape)[0]
    spec = model_spec(cfg)
    torch.manual_seed(9)
    target = {k: v.detach() for k, v in build_model(wide, shape, 4).state_dict().items()}
    ctx = FusionContext(random_target=lambda: target)
    sizes = spec.group_sizes(target)
    res = fuse("wb", spec, [state, state], [0.5, 0.5], sizes, settings(cost="weight", sweeps=sweeps), ctx)
    x = torch.randn(16, *shape)
    assert torch.allclose(outputs(wide, res.state, x, shape), outputs(cfg, state, x, shape), atol=1e-5)


def traced_states(net, k, x):
    from fusionctl.models.trace import derive_spec

    states = []
    for seed in range(k):
        torch.manual_seed(seed)
        states.append({key: v.detach().clone() for key, v in net().eval().state_dict().items()})
    return derive_spec(net().eval(), x), states


@pytest.mark.parametrize("case", ["mlp", "mlp k=3", "mlp float64", "mlp sinkhorn", "grouped conv", "per-head entries"])
def test_the_fused_state_is_the_average_of_the_models_transported_afresh(case):
    """The fusion takes the entries the sweeps already transported (the objective's) where they
    equal a fresh transport: the fused state must be exactly the weighted average of the models
    moved afresh by the couplings returned, entry for entry and dtype for dtype."""
    from tests.custom_nets import UnevenQKVNet

    k = 3 if case in ("mlp k=3", "grouped conv") else 2
    if case == "grouped conv":
        spec, states = grouped_states(k)
    elif case == "per-head entries":
        spec, (state,) = traced_states(UnevenQKVNet, 1, torch.randn(3, 3, 8, 8))
        for seed in range(10):  # a planted permutation that exchanges the heads, so proj.weight's columns move per head
            planted = random_couplings(spec, state, torch.Generator().manual_seed(seed))
            if planted["qkv"].index[0] != 0:
                break
        states = [state, {key: v + 0.01 * torch.randn(v.shape) for key, v in transport(state, spec, planted).items()}]
        assert "proj.weight" in spec.per_head and "proj.weight" in spec.axes
    else:
        states = random_states(MLP, k)
        states = [{key: v.double() for key, v in s.items()} for s in states] if case == "mlp float64" else states
        spec = model_spec(MLP)
    extra = {"ot": "sinkhorn", "reg": 0.05} if case == "mlp sinkhorn" else {}
    weights = [0.3, 0.7] if k == 2 else [0.2, 0.3, 0.5]
    res = fuse("wb", spec, states, weights, spec.group_sizes(states[0]), settings(cost="weight", **extra))
    assert res.sweeps["sweeps"] >= 1
    expected = weighted_average([transport(s, spec, c) for s, c in zip(states, res.couplings)], weights)
    assert res.state.keys() == expected.keys()
    for key, value in expected.items():
        assert res.state[key].dtype == value.dtype and torch.equal(res.state[key], value), key


# -- activation features -----------------------------------------------------------------------------


@pytest.mark.parametrize("observations", [6, 400])  # fewer than the units (raw vectors) and more (factored Gram)
def test_correlation_features_have_the_geometry_of_correlation(observations):
    g = torch.Generator().manual_seed(0)
    a = torch.randn(5, observations, generator=g, dtype=torch.float64)
    b = 2 * a[[3, 1, 4, 0, 2]] + 1 + 0.1 * torch.randn(5, observations, generator=g, dtype=torch.float64)
    stream = CorrelationFeatures([5, 5])
    for start in range(0, observations, 4):  # batch by batch
        stream.add([a[:, start:start + 4], b[:, start:start + 4]])
    fa, fb = stream.features()
    corr = torch.corrcoef(torch.cat([a, b]))
    assert torch.allclose(torch.cat([fa, fb]) @ torch.cat([fa, fb]).T, corr, atol=1e-10)
    assert torch.allclose(torch.cdist(fa, fb) ** 2, 2 - 2 * corr[:5, 5:], atol=1e-9)


@pytest.mark.parametrize("observations", [6, 4000])
def test_float32_activations_give_float64s_correlations_and_a_constant_unit_a_zero_row(observations):
    # float32 products on shifted observations: a mean far above the spread must not cancel it away,
    # and a unit that is constant up to float32 round-off must not become normalised noise
    g = torch.Generator().manual_seed(0)
    a = torch.randn(5, observations, generator=g, dtype=torch.float64)
    b = 1000 + 2 * a[[3, 1, 4, 0, 2]] + 0.1 * torch.randn(5, observations, generator=g, dtype=torch.float64)
    b[2] = 3.7 + 4e-7 * torch.randn(observations, generator=g, dtype=torch.float64)  # in float32: 3.7 and its neighbours
    stream = CorrelationFeatures([5, 5])
    for start in range(0, observations, 500):
        stream.add([a[:, start:start + 500].float(), b[:, start:start + 500].float()])
    fa, fb = stream.features()
    assert float(fb[2].norm()) < 1e-9  # its correlations are zero; eigh leaves round-off of 1e-18
    live = [0, 1, 3, 4]
    corr = torch.corrcoef(torch.cat([a, b[live]]))
    f = torch.cat([fa, fb[live]]).double()
    assert torch.allclose(f @ f.T, corr, atol=2e-5)


def test_activation_cost_is_correlation_matching():
    # with exact OT and K = 2, WB with the activation cost is activation matching (the same LAP)
    states = random_states(MLP, 2)
    spec = model_spec(MLP)
    ctx = FusionContext(activations=activation_probe(MLP, toy_splits((1, 5, 5))))
    wb = fuse("wb", spec, states, [0.5, 0.5], spec.group_sizes(states[0]), settings(cost="activation"), ctx)
    am = fuse("am", spec, states, [0.5, 0.5], spec.group_sizes(states[0]), settings("am"), ctx)
    for group in spec.groups:
        assert same(relative_coupling(wb.couplings[0][group], wb.couplings[1][group]), am.couplings[1][group])


def test_cost_auto_keeps_the_candidate_with_the_better_held_out_score():
    states = random_states(MLP, 2)
    spec = model_spec(MLP)
    probe = activation_probe(MLP, toy_splits((1, 5, 5)))
    both = fuse("wb", spec, states, [0.5, 0.5], spec.group_sizes(states[0]), settings(cost="both"), FusionContext(activations=probe))
    act = fuse("wb", spec, states, [0.5, 0.5], spec.group_sizes(states[0]), settings(cost="activation"), FusionContext(activations=probe))
    assert any(not torch.equal(both.state[k], act.state[k]) for k in both.state), "the candidates must differ for this test"
    for preferred in (both, act):
        def score(result, preferred=preferred):  # the preferred candidate is right on every example, the other on half
            right = all(torch.equal(result.state[k], preferred.state[k]) for k in result.state)
            return HeldOut(torch.full((400,), 0.5), torch.ones(400, dtype=torch.bool)) if right else flat_score()

        res = fuse("wb", spec, states, [0.5, 0.5], spec.group_sizes(states[0]), settings(), FusionContext(activations=probe, score=score))
        assert all(torch.equal(res.state[k], preferred.state[k]) for k in res.state)
        assert res.sweeps["selected_cost"] == ("both" if preferred is both else "activation")


def flat_score(loss: float = 0.5, n: int = 400) -> HeldOut:
    """A held-out score of `loss` on each of n examples, every other one right."""
    return HeldOut(torch.full((n,), loss), torch.arange(n) % 2 == 0)


def test_cost_auto_takes_cost_activation_only_when_it_is_more_accurate():
    """Accuracy decides, however small the gap and whatever the losses; equal accuracies keep cost=both."""
    states = random_states(MLP, 2)
    spec = model_spec(MLP)
    probe = activation_probe(MLP, toy_splits((1, 5, 5)))
    act = fuse("wb", spec, states, [0.5, 0.5], spec.group_sizes(states[0]), settings(cost="activation"), FusionContext(activations=probe))
    half = torch.arange(400) % 2 == 0
    cases = ((half | (torch.arange(400) == 1), 0.9, "activation"),  # one example more right, a far higher loss
             (half, 0.1, "both"),  # as accurate, a far lower loss
             (torch.arange(400) % 3 == 0, 0.1, "both"))  # fewer right
    for hits, loss, kept in cases:
        def score(result, hits=hits, loss=loss):
            if all(torch.equal(result.state[k], act.state[k]) for k in result.state):
                return HeldOut(torch.full((400,), loss), hits)
            return flat_score(0.5)

        res = fuse("wb", spec, states, [0.5, 0.5], spec.group_sizes(states[0]), settings(), FusionContext(activations=probe, score=score))
        assert res.sweeps["selected_cost"] == kept, (loss, kept)


def test_cost_auto_scores_on_training_inputs_the_probe_and_repair_did_not_read():
    """The fuse command's scoring inputs: the last SCORE_SAMPLES training inputs after the first `skip`;
    the validation split only when the training split has nothing after them."""
    x = torch.arange(20.0)[:, None]
    splits = Splits("toy", Split(x, torch.arange(20)), Split(x[:3] + 100, torch.arange(3)), Split(x[:1], torch.arange(1)), (1,), 4)
    assert torch.equal(scoring_split(splits, 5).y, torch.arange(5, 20))
    with patch("fusionctl.jobs.fuse.SCORE_SAMPLES", 4):
        assert torch.equal(scoring_split(splits, 5).y, torch.arange(16, 20))
    assert torch.equal(scoring_split(splits, 20).y, torch.arange(3)) and scoring_split(splits, 20).x[0, 0] == 100


def test_cost_auto_logs_the_post_step_its_held_out_score_applies(caplog):
    """The accuracy in cost=auto's log is measured after the family's post-step, not one-shot:
    the log says which (the fuse command's score_step: BN reset for BN nets, REPAIR where a layer has a
    bias or norm to correct in, none for recurrent nets)."""
    states = random_states(MLP, 2)
    spec = model_spec(MLP)
    probe = activation_probe(MLP, toy_splits((1, 5, 5)))
    for after, logged in (("bn_reset", "accuracy after bn_reset 0.5000 with cost=both"),
                          (None, "accuracy (no post-step) 0.5000 with cost=both")):
        caplog.clear()
        with caplog.at_level("INFO"):
            fuse("wb", spec, states, [0.5, 0.5], spec.group_sizes(states[0]), settings(),
                 FusionContext(activations=probe, score=lambda result: flat_score(), score_after=after))
        assert logged in caplog.text
    for cfg, shape, step in ((MLP, (1, 5, 5), "repair"), (tiny_config("resnet20"), (3, 8, 8), "bn_reset"),
                             (tiny_config("lstm"), (5, 4), None),
                             (ModelConfig("custom", target="tests.custom_nets.GroupedQueryNet"), (3, 8, 8), "repair")):
        state = build_model(cfg, shape, 4).state_dict()
        assert score_step(cfg, model_spec(cfg, shape, 4), state) == step, cfg.name


def test_cost_auto_scores_once_when_both_candidates_align_the_same_way():
    state = random_states(MLP, 1)[0]
    spec, copies, _ = noisy_permuted_copies(MLP, state, 2, 0.01, (1, 5, 5))
    probe = activation_probe(MLP, toy_splits((1, 5, 5)))
    both = fuse("wb", spec, copies, [0.5, 0.5], spec.group_sizes(state), settings(cost="both"), FusionContext(activations=probe))
    scored = []
    res = fuse("wb", spec, copies, [0.5, 0.5], spec.group_sizes(state), settings(),
               FusionContext(activations=probe, score=lambda result: scored.append(result) or flat_score()))
    assert len(scored) == 1 and res.sweeps["selected_cost"] == "both"
    assert all(torch.equal(res.state[k], both.state[k]) for k in res.state)


def test_cost_auto_scores_a_traced_net_without_biases_as_fused():
    """The held-out score corrects with REPAIR where a net has a bias or norm to put it in; a
    LLaMA-style net's Linears have neither (its RMSNorm no bias): its candidates are scored with
    the layers that have one corrected (here the patch embedding), never refused for a post-step
    nobody asked for."""
    cfg = ModelConfig("custom", target="tests.custom_nets.GroupedQueryNet")
    splits = toy_splits((3, 8, 8))
    spec = model_spec(cfg, splits.input_shape, splits.num_classes)
    states = [{k: v.detach() for k, v in build_model(cfg, splits.input_shape, splits.num_classes).state_dict().items()} for _ in range(2)]
    score = held_out_score(cfg, splits, states, spec, [0.5, 0.5], "cpu")
    res = fuse("wb", spec, states, [0.5, 0.5], spec.group_sizes(states[0]), settings(), FusionContext(activations=activation_probe(cfg, splits), score=score))
    assert res.sweeps["selected_cost"] in ("both", "activation") and 0.0 <= score(res).accuracy <= 1.0


def toy_splits(shape, n=96):
    x = torch.randn(n, *shape)
    y = torch.zeros(n, dtype=torch.long)
    return Splits("toy", Split(x, y), Split(x[:8], y[:8]), Split(x[:8], y[:8]), shape, 4)


# -- settings per method, through the command line ------------------------------------------------------


def call(args):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            rc = cli.main(args)
        except SystemExit as exc:
            rc = exc.code
    return rc, err.getvalue()


def test_a_baseline_reads_its_own_settings_never_the_main_solvers(tmp_path):
    common = [f"store_dir={tmp_path}/store", "model.widths=[16,8]", "train.epochs=1", "seeds=[0,1]", "threads=1"]
    assert call(["train", *common, f"hydra.run.dir={tmp_path}/train"])[0] == 0
    assert call(["fuse", *common, "solver=ot", "baselines=[wb]", f"hydra.run.dir={tmp_path}/a"])[0] == 0
    assert call(["fuse", *common, "solver=wb", "baselines=[ot]", f"hydra.run.dir={tmp_path}/b"])[0] == 0
    a, b = (pd.read_csv(tmp_path / d / "fusion.csv") for d in "ab")
    cols = ["method", "split", "accuracy", "loss", "settings"]
    for method in ("wb", "ot"):
        ra = a[a.method == method][cols].reset_index(drop=True)
        rb = b[b.method == method][cols].reset_index(drop=True)
        pd.testing.assert_frame_equal(ra, rb)
    # a changed main solver is labelled with what changed; its baselines keep their defaults
    assert call(["fuse", *common, "solver.sweeps=0", "solver.cost=weight", "baselines=[ot]", f"hydra.run.dir={tmp_path}/c"])[0] == 0
    c = pd.read_csv(tmp_path / "c" / "fusion.csv")
    assert set(c[c.method == "wb"]["settings"]) == {"cost=weight sweeps=0"}
    assert set(c[c.method == "ot"]["settings"]) == {"defaults"}


def test_the_layer_wise_pass_with_a_cost_chosen_on_held_out_data_runs_from_the_command_line(tmp_path):
    """solver.sweeps=0 under cost=auto (wb's and gwb's default cost) leaves no sweep summary, only the
    chosen cost: the command reported a KeyError before; every mix of sweeps and cost must end in a table."""
    common = [f"store_dir={tmp_path}/store", "model.widths=[16,8]", "train.epochs=1", "seeds=[0,1]", "threads=1"]
    assert call(["train", *common, f"hydra.run.dir={tmp_path}/train"])[0] == 0
    for n, extra in enumerate([["solver.sweeps=0"], ["solver=gwb", "solver.sweeps=0"], ["solver=gwb", "solver.sweeps=3", "solver.cost=both"]]):
        rc, err = call(["fuse", *common, "baselines=[]", *extra, f"hydra.run.dir={tmp_path}/{n}"])
        assert rc == 0, (extra, err)
        table = pd.read_csv(tmp_path / str(n) / "fusion.csv")
        assert set(table[table.role == "fused"]["settings"]) == {" ".join(sorted(e.split(".", 1)[1] for e in extra if e.startswith("solver.")))}
