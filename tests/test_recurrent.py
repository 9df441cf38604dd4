import pytest
import torch

from fusionctl.config import ModelConfig
from fusionctl.data import Split
from fusionctl.eval.grid import evaluate_points, flatten, float_keys, unflatten
from fusionctl.eval.metrics import evaluate
from fusionctl.fusion import fuse
from fusionctl.fusion.transport import random_couplings, transport
from fusionctl.models import build_model as _build
from fusionctl.models import model_spec as _spec
from fusionctl.models.spec import AlignmentSpec, Axis
from fusionctl.ot import solve_ot
from fusionctl.ot.gromov import fused_gw_barycenter, gw_linear_term
from fusionctl.ot.permutation import dense
from tests.helpers import settings


def build_model(kind, shape, classes, widths, bias):
    return _build(ModelConfig(kind, list(widths), bias), shape, classes)


def model_spec(kind, widths, bias):
    return _spec(ModelConfig(kind, list(widths), bias))


SHAPE = (7, 5)  # 7 time steps of 5 features
X = torch.randn(16, *SHAPE)
WIDTHS = [9]


def model(kind, bias, seed=0, widths=WIDTHS):
    torch.manual_seed(seed)
    return build_model(kind, SHAPE, 4, widths, bias).eval()


def state(m):
    return {k: v.detach().clone() for k, v in m.state_dict().items()}


def run(kind, widths, bias, st, x=X):
    m = build_model(kind, SHAPE, 4, widths, bias)
    m.load_state_dict(st)
    with torch.no_grad():
        return m.eval()(x)


def planted(spec, st, seed=1):
    g = torch.Generator().manual_seed(seed)
    cps = random_couplings(spec, st, g)
    return cps, transport(st, spec, cps)


@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("widths", [[9], [9, 6]])
def test_transport_by_exact_couplings_preserves_recurrent_outputs(kind, bias, widths):
    st = state(model(kind, bias, widths=widths))
    spec = model_spec(kind, widths, bias)
    _, permuted = planted(spec, st)
    assert not torch.allclose(permuted["cells.0.weight_hh"], st["cells.0.weight_hh"])
    assert torch.allclose(run(kind, widths, bias, permuted), run(kind, widths, bias, st), atol=1e-5)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_gate_blocks_share_one_coupling(kind):
    # Treating the stacked gate rows as one group of G*n units mixes the gates: the function breaks.
    st = state(model(kind, True))
    good = model_spec(kind, WIDTHS, True)
    g = 4 if kind == "lstm" else 3
    n = WIDTHS[0]
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(2))
    p = torch.eye(n, dtype=torch.float64)[perm] / n
    ok = transport(st, good, {"h1": p})
    assert torch.allclose(run(kind, WIDTHS, True, ok), run(kind, WIDTHS, True, st), atol=1e-5)
    mixed_axes = dict(good.axes)
    for key in ("cells.0.weight_ih", "cells.0.bias_ih", "cells.0.bias_hh"):
        mixed_axes[key] = (Axis("rows"),) + mixed_axes[key][1:]
    mixed_axes["cells.0.weight_hh"] = (Axis("rows"), Axis("h1"))
    bad_spec = AlignmentSpec(("rows", "h1"), mixed_axes)
    big = torch.eye(g * n, dtype=torch.float64)[torch.randperm(g * n, generator=torch.Generator().manual_seed(3))] / (g * n)
    bad = transport(st, bad_spec, {"rows": big, "h1": p})
    assert not torch.allclose(run(kind, WIDTHS, True, bad), run(kind, WIDTHS, True, st), atol=1e-3)


def test_gw_with_exact_ot_recovers_a_planted_permutation_of_a_recurrent_matrix():
    g = torch.Generator().manual_seed(0)
    n = 20
    h = torch.randn(1, n, n, generator=g, dtype=torch.float64)
    perm = torch.randperm(n, generator=g)
    h2 = h[:, perm][:, :, perm]  # h2[k, k'] = h[perm[k], perm[k']]
    none = torch.zeros(n, 0, dtype=torch.float64)
    res = fused_gw_barycenter([none], [h2], [1.0], none, h, alpha=1.0, max_iter=20)
    p = dense(res.couplings[0])
    assert ((p > 0).sum(1) == 1).all()
    assert torch.equal(perm[p.argmax(1)], torch.arange(n)), "barycenter node j must be coupled to the copy of node j"


def test_gw_linear_term_matches_its_definition():
    g = torch.Generator().manual_seed(1)
    hb, h = torch.randn(2, 4, 4, generator=g, dtype=torch.float64), torch.randn(2, 3, 3, generator=g, dtype=torch.float64)
    p = solve_ot(torch.rand(4, 3, generator=g, dtype=torch.float64), "sinkhorn", reg=0.3)
    brute = torch.zeros(4, 3, dtype=torch.float64)
    for j in range(4):
        for k in range(3):
            brute[j, k] = sum(p[a, b] * ((hb[:, j, a] - h[:, k, b]) ** 2).sum() for a in range(4) for b in range(3))
    assert torch.allclose(gw_linear_term(hb, h, p), brute)


@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("method", ["gwb", "wb", "ot"])
def test_fusing_a_recurrent_model_with_its_permuted_copy_returns_it(kind, method):
    st = state(model(kind, True))
    spec = model_spec(kind, WIDTHS, True)
    _, permuted = planted(spec, st, seed=5)
    res = fuse(method, spec, [st, permuted], [0.5, 0.5], spec.group_sizes(st), settings(name=method), None)
    assert torch.allclose(run(kind, WIDTHS, True, res.state), run(kind, WIDTHS, True, st), atol=1e-5)


def test_gwb_uses_recurrent_weights_to_break_ties_that_input_weights_cannot():
    # Two units with identical input weights differ only in their recurrent weights: the
    # no-hidden matching (wb) cannot tell them apart, the GW term can.
    st = state(model("rnn", False, widths=[6]))
    st["cells.0.weight_ih"][1] = st["cells.0.weight_ih"][0]
    spec = model_spec("rnn", [6], False)
    swap = torch.eye(6, dtype=torch.float64)[[1, 0, 2, 3, 4, 5]] / 6
    permuted = transport(st, spec, {"h1": swap})
    gwb = fuse("gwb", spec, [st, permuted], [0.5, 0.5], {"h1": 6}, settings(name="gwb"), None)
    assert torch.allclose(run("rnn", [6], False, gwb.state), run("rnn", [6], False, st), atol=1e-5)
    assert torch.allclose(dense(gwb.couplings[1]["h1"]), swap)


def test_recurrent_models_evaluate_under_vmap():
    m = model("lstm", True)
    st = state(m)
    keys = float_keys(st)
    origin = flatten(st, keys)
    direction = (flatten(state(model("lstm", True, seed=3)), keys) - origin)[None]
    split = Split(X, torch.randint(0, 4, (16,)))
    res = evaluate_points(m, st, origin, direction, torch.tensor([[0.0], [0.4], [1.0]]), {"s": split}, chunk=2)
    mid = unflatten((origin + 0.4 * direction), st, keys)
    m2 = build_model("lstm", SHAPE, 4, WIDTHS, True)
    m2.load_state_dict({k: v[0] for k, v in mid.items()})
    loss, _ = evaluate(m2, split)
    assert float(res["s"]["loss"][1]) == pytest.approx(loss, rel=1e-5)


@pytest.mark.parametrize("cost", ["both", "activation"])
def test_gwb_keeps_its_hidden_term_on_the_scale_of_the_features_under_every_cost(cost):
    """cost=both and cost=activation rescale the node features; the hidden-to-hidden (GW) term
    must be on the same scale in the layer-wise pass as in the sweeps, and present under both
    costs (under cost=activation it had weight 0 in the sweeps and raw scale in the pass)."""
    from fusionctl.fusion.barycenter import cost_weights
    from fusionctl.fusion.engine import group_structure

    states = [state(model("lstm", True, seed=s)) for s in (0, 1)]
    spec = model_spec("lstm", WIDTHS, True)
    hidden = [k for k, axes in spec.axes.items() if len(axes) == 2 and axes[0] is not None and axes[1] is not None
              and axes[0].group == axes[1].group]
    assert hidden
    both, _ = cost_weights(settings(name="gwb", cost="both", cost_mix=0.0), spec, states)
    weights, act = cost_weights(settings(name="gwb", cost=cost), spec, states)
    for key in hidden:  # under cost=activation, the scale cost=both gives it without activations
        assert weights[key] > 0 and weights[key] == pytest.approx(both[key] * (1.0 - (settings(name="gwb").cost_mix if cost == "both" else 0.0)))
    if cost == "activation":
        assert act == 1.0 and all(w == 0 for k, w in weights.items() if k not in hidden)
    group = spec.axes[hidden[0]][0].group
    assert torch.allclose(group_structure(states[1], spec, group, weights), group_structure(states[1], spec, group) * weights[hidden[0]] ** 0.5)
