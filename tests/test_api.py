"""fusionctl.fuse_models and fusionctl.derive_spec on in-memory torchvision and user-defined modules."""

from __future__ import annotations

import copy
import dataclasses
import functools
import re
from pathlib import Path

import pandas as pd
import pytest
import torch

import fusionctl
from fusionctl.errors import FusionctlError
from fusionctl.fusion.spec_check import check_permutation
from fusionctl.fusion.transport import random_couplings, transport
from fusionctl.models.experts import propose_experts
from tests import custom_nets
from tests.helpers import needs_grouped_mm, needs_sdpa_gqa, needs_transformers_torch

ROOT = Path(__file__).resolve().parent.parent
METHODS = ["wb", "gwb", "ot", "wm", "c2m3", "am", "zipit", "avg"]
QUICK = {"c2m3": {"max_iter": 3}}  # Frank-Wolfe steps on a MobileNet take about a second each here


def batches(shape, n=128, size=32, classes=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *shape, generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    return [(x[i:i + size], y[i:i + size]) for i in range(0, n, size)]


def net_with_statistics():
    """A SmallNet whose BatchNorms hold non-trivial statistics, its data batches and one input batch."""
    model = small_nets(1)[0]
    data = batches((3, 12, 12))
    with torch.no_grad():
        model.train()(torch.cat([b[0] for b in data]) + 0.5)
    return model.eval(), data, data[0][0]


def permuted_copy(model, x, seed=3):
    """The same function as `model` with every traced group permuted at random."""
    spec = fusionctl.derive_spec(model, x)
    state = model.state_dict()
    g = torch.Generator().manual_seed(seed)
    cps = random_couplings(spec, state, g)
    other = copy.deepcopy(model)
    other.load_state_dict(transport(state, spec, cps))
    return other.eval()


def small_nets(k=2):
    out = []
    for seed in range(k):
        torch.manual_seed(seed)
        out.append(custom_nets.SmallNet(in_channels=3, num_classes=10, width=6).eval())
    return out


@pytest.mark.parametrize("method", METHODS)
def test_fuse_models_fuses_two_mobilenets_with_every_method(method):
    import torchvision

    torch.manual_seed(0)
    models = [torchvision.models.mobilenet_v3_small(num_classes=10).eval() for _ in range(2)]
    data = batches((3, 32, 32), n=64)
    fused = fusionctl.fuse_models(models, method=method, data=data, post=("bn_reset",), **QUICK.get(method, {}))
    assert type(fused) is type(models[0])
    assert torch.isfinite(fused(data[0][0])).all()


@pytest.mark.parametrize("method", METHODS)
def test_fuse_models_fuses_a_user_defined_module_with_every_method(method):
    models = small_nets(3)
    data = batches((3, 12, 12))
    fused, couplings = fusionctl.fuse_models(models, method=method, data=data, post=("bn_reset", "repair"), return_couplings=True)
    assert isinstance(fused, custom_nets.SmallNet) and len(couplings) == 3
    assert torch.isfinite(fused(data[0][0])).all()


def test_returned_couplings_of_equal_widths_are_permutations_that_undo_a_planted_one():
    model = small_nets(1)[0]
    x = batches((3, 12, 12))[0][0]
    spec = fusionctl.derive_spec(model, x)
    planted = random_couplings(spec, model.state_dict(), torch.Generator().manual_seed(3))
    other = copy.deepcopy(model)
    other.load_state_dict(transport(model.state_dict(), spec, planted))
    for method in ("wb", "wm"):
        _, couplings = fusionctl.fuse_models([model, other], method=method, example_inputs=x, return_couplings=True)
        for group, p in planted.items():
            p0, p1 = couplings[0][group], couplings[1][group]
            assert isinstance(p0, fusionctl.Permutation) and isinstance(p1, fusionctl.Permutation)
            # other = P model, so barycenter node j holds model's unit p0[j] and other's unit p1[j] = P^-1 p0[j]
            assert torch.equal(p.index[p1.index], p0.index), (method, group)


def test_repair_on_a_user_model_corrects_the_layers_it_can_and_refuses_one_with_none(monkeypatch, caplog):
    models = [custom_nets.SmallNet(in_channels=3, num_classes=10, width=6, head_bias=False).eval() for _ in range(2)]
    with caplog.at_level("WARNING"):
        fused = fusionctl.fuse_models(models, method="wm", data=batches((3, 12, 12)), post=("repair",))
    assert 'post-step "repair" corrects 3 of 4 layers; head.0 has no bias and no norm after it' in caplog.text
    plain = fusionctl.fuse_models(models, method="wm", data=batches((3, 12, 12)))
    assert not torch.equal(fused.stem[1].weight, plain.stem[1].weight) and torch.equal(fused.head[0].weight, plain.head[0].weight)
    bare = [custom_nets.BareMLP(in_channels=3, side=12).eval() for _ in range(2)]
    message = r'post-step "repair" corrects a layer\'s statistics in its bias or in the norm after it; no layer of this model has either'
    with monkeypatch.context() as m:  # said before anything is fused
        m.setattr("fusionctl.api.fuse", lambda *a, **k: pytest.fail("fused before the post-step was checked"))
        with pytest.raises(FusionctlError, match=message):
            fusionctl.fuse_models(bare, method="wm", data=batches((3, 12, 12)), post=("repair",))
        with pytest.raises(fusionctl.FusionctlError, match=message):  # the package exports what it raises
            fusionctl.barriers(bare, batches((3, 12, 12)), method="wm", post="repair")


@pytest.mark.parametrize("method", ["wb", "wm", "am"])
def test_fusing_a_user_model_with_its_permuted_copy_returns_its_function(method):
    model, data, x = net_with_statistics()
    fused = fusionctl.fuse_models([model, permuted_copy(model, x)], method=method, data=data)
    with torch.no_grad():
        assert torch.allclose(fused(x), model(x), atol=1e-4)


def test_cost_auto_keeps_cost_both_where_activations_cannot_align_a_group(caplog):
    """An interleaved GLU's gate/up halves show their units in no module's output: cost=activation
    leaves them unaligned and loses the function, so cost=auto keeps cost=both without scoring."""
    torch.manual_seed(0)
    model = custom_nets.InterleavedGLUNet().eval()
    data = batches((3, 6, 6), n=48, size=16, classes=4)
    x = data[0][0]
    models = [model, permuted_copy(model, x), permuted_copy(model, x, seed=4)]
    with torch.no_grad():
        assert not torch.allclose(fusionctl.fuse_models(models, data=data, cost="activation")(x), model(x), atol=1e-3)
        with caplog.at_level("INFO"):
            fused = fusionctl.fuse_models(models, data=data, post=("repair",))
        assert torch.allclose(fused(x), model(x), atol=1e-4)
    assert "which cost=activation cannot align; keeping cost=both" in caplog.text and "with cost=activation (" not in caplog.text


@pytest.mark.parametrize("make, repair", [(custom_nets.GroupedNet, True), (custom_nets.DenseNetLike, False),
                                          (lambda: custom_nets.ConcatNet(flat=True), True), (custom_nets.SplitConcatNet, False),
                                          (custom_nets.FunctionalNet, False), (custom_nets.UpsamplingNet, True),
                                          (custom_nets.RepeatNet, True), (custom_nets.RotaryAttentionNet, True),
                                          (custom_nets.UnevenQKVNet, True), (custom_nets.TalkingHeadsNet, True),
                                          (functools.partial(custom_nets.GroupedQueryNet, packed="sliced"), False),
                                          pytest.param(functools.partial(custom_nets.GroupedQueryNet, repeat="sdpa", rotary=True, bias=True), True, marks=needs_sdpa_gqa),
                                          (functools.partial(custom_nets.GroupedQueryNet, head_bias=True), False),
                                          (custom_nets.InterleavedGLUNet, True), (custom_nets.HeadGateNet, True),
                                          (custom_nets.FirstChannelsShortcutNet, True), (custom_nets.PartialConvNet, True),
                                          (custom_nets.DualPathNet, True), (custom_nets.MixedConvNet, True), (custom_nets.GPT2StyleNet, True)],
                         ids=["grouped-conv", "densenet-like", "concat", "c2f", "functional", "transposed-conv", "repeat-unfold", "rotary",
                              "uneven-qkv", "talking-heads", "grouped-query-packed", "grouped-query-rotary", "grouped-query-sinks",
                              "interleaved-glu", "head-gates", "rexnet-shortcut", "partial-conv", "dual-path", "mixed-conv", "gpt2-conv1d"])
def test_a_net_with_grouped_convs_or_concatenations_fused_with_permuted_copies_returns_its_function(make, repair):
    """A ResNeXt-style bottleneck (grouped channels permuted in blocks and within them), and nets
    whose concatenated axes every method sees split into their parts' pieces: each method recovers
    the planted permutations, K = 3 with REPAIR included where it applies (DenseNet's bias-free
    convs read by a BatchNorm through a concatenation have nothing REPAIR can correct: BN reset)."""
    torch.manual_seed(0)
    model = make().eval()
    data = batches((3, 6, 6), n=48, size=16, classes=4)
    x = data[0][0]
    with torch.no_grad():  # non-trivial BN statistics
        model.train()(torch.cat([b[0] for b in data]) + 0.5)
    model.eval()
    other = permuted_copy(model, x)
    assert any(not torch.equal(v, model.state_dict()[k]) for k, v in other.state_dict().items() if v.is_floating_point())
    with torch.no_grad():
        for method in ("wb", "am", "wm", "ot"):
            assert torch.allclose(fusionctl.fuse_models([model, other], method=method, data=data)(x), model(x), atol=1e-5), method
        if repair:
            three = fusionctl.fuse_models([model, other, permuted_copy(model, x, seed=4)], data=data, post=("repair",))
            assert torch.allclose(three(x), model(x), atol=1e-4)


def small_swin():
    """timm's Swin at 32x32 (its patch embedding: a conv, then a LayerNorm over a channels-last map)."""
    from tests.test_trace import TIMM_KWARGS

    timm = pytest.importorskip("timm")
    return timm.create_model("swin_tiny_patch4_window7_224", num_classes=4, **TIMM_KWARGS["swin_tiny_patch4_window7_224"])


@pytest.mark.parametrize("net", ["vit", "torch-encoder", "home-made", "packed-qkv", "swin-like", "timm-swin"])
def test_a_transformer_fused_with_its_permuted_copy_returns_its_function(net):
    """torchvision's ViT, torch.nn's encoder (whose fused fast path would skip the probes' hooks),
    heads written by hand (q, k, v Linears, a reshape, scaled_dot_product_attention), and Swin's
    window attention with its relative-position bias per head."""
    from tests.test_trace import small_vit

    torch.manual_seed(0)
    makers = {"vit": small_vit, "torch-encoder": custom_nets.TorchEncoderNet, "home-made": lambda: custom_nets.TinyTransformer(sdpa=True),
              "packed-qkv": custom_nets.PackedAttentionNet, "swin-like": custom_nets.RelativeBiasAttentionNet, "timm-swin": small_swin}
    vit = makers[net]().eval()
    data = batches({"vit": (3, 16, 16), "swin-like": (3, 2, 2), "timm-swin": (3, 32, 32)}.get(net, (3, 4, 4)), n=48, size=16, classes=4)
    x = data[0][0]
    other = permuted_copy(vit, x)
    key = next(k for k in vit.state_dict() if k.endswith(("out_proj.weight", "o.weight", "proj.weight", "table")))
    assert not torch.equal(other.state_dict()[key], vit.state_dict()[key])
    with torch.no_grad():
        for method in ("wb", "am"):
            assert torch.allclose(fusionctl.fuse_models([vit, other], method=method, data=data)(x), vit(x), atol=1e-5), method
        repaired = fusionctl.fuse_models([vit, other], data=data, post=("repair",))  # REPAIR corrects in the attention's out_proj
        assert torch.allclose(repaired(x), vit(x), atol=1e-3)


@pytest.mark.parametrize("grouped_mm", [pytest.param(True, marks=needs_grouped_mm), False])
def test_a_mixture_of_experts_with_stacked_weights_fused_with_its_permuted_copy_returns_its_function(grouped_mm, caplog):
    """The experts' hidden units show in no module's output: the layer-wise passes (the paper's, the
    sweeps' first) read their slices of the stacked weights (behind the experts axis), activation
    matching matches them on their weights, and cost=activation says it cannot align them."""
    torch.manual_seed(0)
    model = custom_nets.StackedExpertsNet(grouped_mm=grouped_mm).eval()
    data = batches((3, 8, 8), n=64, size=16, classes=4)
    x = data[0][0]
    other = permuted_copy(model, x)
    assert not torch.equal(other.gate_up_proj, model.gate_up_proj)
    with torch.no_grad():
        for method, settings in (("wb", {}), ("wb", {"cost": "weight"}), ("wb", {"sweeps": 0, "cost": "weight"}), ("wm", {}), ("am", {})):
            fused = fusionctl.fuse_models([model, other], method=method, data=data, **settings)
            assert torch.allclose(fused(x), model(x), atol=1e-5), (method, settings)
    with caplog.at_level("INFO"):
        fusionctl.fuse_models([model, other], data=data, cost="activation")
    assert "cost=activation: gate_up_proj.parts[0:8] show their units in no module's output" in caplog.text


def with_experts(spec, router: str, stacked: tuple[str, ...]):
    """docs/tracing.md's example: the traced spec plus a group of the experts (axis 0 of the router's
    weight and of the stacked weights), observed at the router's output, after the stream it reads."""
    axes = dict(spec.axes)
    for key in (f"{router}.weight", *stacked):
        axes[key] = (fusionctl.Axis("experts"),) + axes[key][1:]
    return dataclasses.replace(spec, groups=(spec.groups[0], "experts", *spec.groups[1:]), axes=axes,
                               units={**spec.units, "experts": (fusionctl.Unit(router),)})


@pytest.mark.parametrize("grouped_mm, routing_bias", [pytest.param(True, False, marks=needs_grouped_mm), (False, False),
                                                     pytest.param(True, True, marks=needs_grouped_mm)])
def test_the_experts_of_a_mixture_move_as_a_group_where_the_self_check_confirms_it(grouped_mm, routing_bias):
    """The tracer cannot follow which expert a token takes; derive_spec proposes the experts as a
    group (docs/tracing.md's hand-written one) and keeps it since a random permutation keeps the
    function; every method then fuses a copy whose experts were permuted too back into the model.
    A routing bias the block holds (one entry per expert) moves with them. Unchecked (check=False),
    the experts stay in place."""
    torch.manual_seed(0)
    model = custom_nets.StackedExpertsNet(experts=3, grouped_mm=grouped_mm, routing_bias=routing_bias).eval()  # 3 experts, 4 classes
    data = batches((3, 8, 8), n=64, size=16, classes=4)
    x = data[0][0]
    unchecked = fusionctl.derive_spec(model, x, check=False)
    assert "experts" not in unchecked.groups
    spec = fusionctl.derive_spec(model, x)
    by_hand = with_experts(unchecked, "router", ("gate_up_proj", "down_proj"))
    if routing_bias:
        by_hand = dataclasses.replace(by_hand, axes={**by_hand.axes, "expert_bias": (fusionctl.Axis("experts"),)})
    assert spec.layout() == by_hand.layout()
    assert spec.coverage.experts == 1 and spec.coverage.permutable == spec.coverage.hidden and not spec.coverage.frozen
    couplings = random_couplings(spec, model.state_dict(), torch.Generator().manual_seed(5))
    assert not torch.equal(couplings["experts"].index, torch.arange(3))
    other = copy.deepcopy(model)
    other.load_state_dict(transport(model.state_dict(), spec, couplings))
    with torch.no_grad():
        for method in ("wb", "wm", "c2m3", "am", "ot"):
            assert torch.allclose(fusionctl.fuse_models([model, other], method=method, data=data)(x), model(x), atol=1e-5), method


def test_experts_that_are_no_symmetry_stay_in_place():
    """PositionalExpertsNet has a mixture's pattern (a router, weights stacked per expert) but picks
    experts by position: the proposed group changes the function, so the self-check refuses it.
    Nor is one proposed where two modules could be the router (4 classes and 4 experts)."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 8)
    model = custom_nets.PositionalExpertsNet(experts=3).eval()
    unchecked = fusionctl.derive_spec(model, x, check=False)
    assert check_permutation(model, propose_experts(unchecked, model), x).wrong
    assert "experts" not in fusionctl.derive_spec(model, x).groups
    four = custom_nets.StackedExpertsNet(experts=4).eval()
    assert propose_experts(fusionctl.derive_spec(four, x, check=False), four) is None


def test_experts_added_by_hand_to_a_traced_spec_move_with_their_router_rows():
    """Where the router is ambiguous (the classifier has as many rows as there are experts), the
    experts stay in place; the group written by hand passes the self-check, moves the router's rows
    with the experts, and every method fuses a model with a copy whose experts were permuted too back
    into its function."""
    torch.manual_seed(0)
    model = custom_nets.StackedExpertsNet(experts=4).eval()
    data = batches((3, 8, 8), n=64, size=16, classes=4)
    x = data[0][0]
    spec = with_experts(fusionctl.derive_spec(model, x), "router", ("gate_up_proj", "down_proj"))
    assert spec.groups == ("embed", "experts", "gate_up_proj.parts[0:8]")
    couplings = random_couplings(spec, model.state_dict(), torch.Generator().manual_seed(5))
    assert not torch.equal(couplings["experts"].index, torch.arange(4))  # the experts move
    other = copy.deepcopy(model)
    other.load_state_dict(transport(model.state_dict(), spec, couplings))
    with torch.no_grad():
        for method in ("wb", "wm", "c2m3", "am", "ot"):
            fused = fusionctl.fuse_models([model, other], method=method, data=data, spec=spec)
            assert torch.allclose(fused(x), model(x), atol=1e-5), method


def test_a_model_fx_cannot_trace_fuses_with_a_spec_written_by_hand():
    torch.manual_seed(0)
    model = custom_nets.BranchyMLP().eval()
    data = batches((3, 2, 2), classes=4)
    x = data[0][0]
    with pytest.raises(FusionctlError, match=r"the labels run from 0 to 9, but the model gives 4 logits per example; give labels in 0\.\.3"):
        fusionctl.fuse_models([model, copy.deepcopy(model)], data=batches((3, 2, 2)), spec=custom_nets.branchy_spec())  # cost=auto scores them
    with pytest.raises(FusionctlError, match="cannot be traced by torch.fx"):
        fusionctl.fuse_models([model, copy.deepcopy(model)], data=data)
    spec = custom_nets.branchy_spec()
    g = torch.Generator().manual_seed(1)
    cps = random_couplings(spec, model.state_dict(), g)
    other = copy.deepcopy(model)
    other.load_state_dict(transport(model.state_dict(), spec, cps))
    assert not torch.equal(other.a.weight, model.a.weight)
    for method in ("wb", "wm"):
        fused = fusionctl.fuse_models([model, other], method=method, data=data, spec=spec, post=("repair",))
        with torch.no_grad():
            assert torch.allclose(fused(x), model(x), atol=1e-4), method  # REPAIR divides by std + 1e-5
    wrong = custom_nets.branchy_spec()
    del wrong.axes["fc.bias"]
    with pytest.raises(FusionctlError, match=r"the spec does not fit BranchyMLP: .*missing \['fc.bias'\]") as info:
        fusionctl.fuse_models([model, other], data=data, spec=wrong)
    assert "\n" not in str(info.value)
    with pytest.raises(FusionctlError, match=r"the spec does not keep BranchyMLP's function \(a random permutation of every group moves"):
        fusionctl.fuse_models([model, other], data=data, spec=custom_nets.wrong_branchy_spec())  # b's columns left in place
    fusionctl.fuse_models([model, other], data=data, spec=custom_nets.wrong_branchy_spec(), check=False)  # the user's call
    extra = custom_nets.branchy_spec()
    with pytest.raises(FusionctlError, match=r"spec.groups \['a', 'b', 'c'\] differ from the groups its axes name"):
        fusionctl.fuse_models([model, other], data=data, spec=type(extra)(("a", "b", "c"), extra.axes, extra.units))


def test_fuse_models_errors_are_one_clear_line():
    a = small_nets(1)[0]
    with pytest.raises(FusionctlError, match=r"model 1 \(GroupedNet\) is not the architecture of model 0 \(SmallNet\)"):
        fusionctl.fuse_models([a, custom_nets.GroupedNet()], example_inputs=torch.randn(2, 3, 12, 12))
    with pytest.raises(FusionctlError, match=r"model 1 does not fit model 0's alignment spec: its stem.0.weight has shape \(6, 1, 3, 3\)"):
        fusionctl.fuse_models([a, custom_nets.SmallNet(in_channels=1, num_classes=10, width=6)], example_inputs=torch.randn(2, 3, 12, 12))
    with pytest.raises(FusionctlError, match="needs example_inputs"):
        fusionctl.fuse_models([a, copy.deepcopy(a)])
    with pytest.raises(FusionctlError, match="cannot be traced by torch.fx"):
        fusionctl.fuse_models([custom_nets.Untraceable(), custom_nets.Untraceable()], example_inputs=torch.randn(2, 3, 4, 4))
    with pytest.raises(FusionctlError, match="give example inputs of the shape"):
        fusionctl.fuse_models([a, copy.deepcopy(a)], example_inputs=torch.randn(2, 1, 12, 12))
    with pytest.raises(FusionctlError, match="solver=wb has no setting 'sweepz'; its settings are: ot, reg"):
        fusionctl.fuse_models([a, copy.deepcopy(a)], example_inputs=torch.randn(2, 3, 12, 12), sweepz=3)
    with pytest.raises(FusionctlError, match="solver=wm has no setting 'reg'"):  # another method's setting
        fusionctl.fuse_models([a, copy.deepcopy(a)], method="wm", example_inputs=torch.randn(2, 3, 12, 12), reg=0.1)


@pytest.mark.parametrize("method", ["wb", "gwb", "ot"])
def test_a_user_model_fused_with_its_permuted_copy_into_wider_widths_keeps_its_function(method):
    """target=: exact OT into two or three times the widths splits every unit into equal copies, each
    with its share of the outgoing weights, so the function stays (BatchNorm included); narrower
    widths give a working net of those widths."""
    model, data, x = net_with_statistics()
    other = permuted_copy(model, x)
    for width in (12, 18, 4):
        target = custom_nets.SmallNet(in_channels=3, num_classes=10, width=width)
        before = copy.deepcopy(target.state_dict())
        fused = fusionctl.fuse_models([model, other], method=method, data=data, target=target)
        assert fused is not target and all(torch.equal(v, before[k]) for k, v in target.state_dict().items())
        assert fused.stem[0].weight.shape[0] == width and fused.head[0].weight.shape[1] == width * 16
        with torch.no_grad():
            if width > 6:
                assert torch.allclose(fused(x), model(x), atol=1e-4), width
            else:
                assert fused(x).shape == model(x).shape and not torch.allclose(fused(x), model(x), atol=1e-2)


@pytest.mark.parametrize("method", ["wb", "ot"])
def test_a_user_model_and_a_widened_copy_of_it_fuse_back_to_its_function(method):
    """Models of other widths than each other: a net (width 6) and the same function at width 12
    (every unit twice, from a fusion into target=) fuse back at width 6 to the net's function; one
    of width 9 that is another function fuses too, into a working net."""
    model, data, x = net_with_statistics()
    wide = fusionctl.fuse_models([model, permuted_copy(model, x)], method="wb", example_inputs=x, cost="weight",
                                 target=custom_nets.SmallNet(in_channels=3, num_classes=10, width=12))
    with torch.no_grad():
        assert torch.allclose(wide(x), model(x), atol=1e-4)
    fused = fusionctl.fuse_models([model, wide], method=method, example_inputs=x, **({"cost": "weight"} if method == "wb" else {}))
    with torch.no_grad():
        assert fused.stem[0].weight.shape[0] == 6 and torch.allclose(fused(x), model(x), atol=1e-4)
    torch.manual_seed(5)
    other = custom_nets.SmallNet(in_channels=3, num_classes=10, width=9).eval()
    fused = fusionctl.fuse_models([model, other], method=method, data=data, post="bn_reset")
    assert fused(x).shape == (len(x), 10)
    with pytest.raises(FusionctlError, match="solver=wm needs every base model and the target to have the same widths"):
        fusionctl.fuse_models([model, other], method="wm", example_inputs=x)


def test_a_hand_written_spec_fuses_into_a_wider_target_without_example_inputs():
    from fusionctl import AlignmentSpec, Axis, Unit

    def mlp(width):
        return torch.nn.Sequential(torch.nn.Linear(5, width), torch.nn.ReLU(), torch.nn.Linear(width, 3))

    h = Axis("h")
    spec = AlignmentSpec(("h",), {"0.weight": (h, None), "0.bias": (h,), "2.weight": (None, h), "2.bias": (None,)}, {"h": (Unit("0"),)})
    torch.manual_seed(0)
    model, other = mlp(7), mlp(7)
    other.load_state_dict(transport(model.state_dict(), spec, random_couplings(spec, model.state_dict(), torch.Generator().manual_seed(1))))
    fused = fusionctl.fuse_models([model, other], spec=spec, target=mlp(14), cost="weight")
    x = torch.randn(16, 5)
    with torch.no_grad():
        assert fused[0].weight.shape == (14, 5) and torch.allclose(fused(x), model(x), atol=1e-5)
    with pytest.raises(FusionctlError, match="target does not fit model 0's alignment spec: it has no entry 2.weight, which the models have"):
        fusionctl.fuse_models([model, other], spec=spec, target=torch.nn.Sequential(torch.nn.Linear(5, 14), torch.nn.ReLU()))
    with pytest.raises(FusionctlError, match="target does not fit model 0's alignment spec"):  # an entry the spec does not name
        fusionctl.fuse_models([model, other], spec=spec, target=torch.nn.Sequential(*mlp(14), torch.nn.Linear(3, 3)))


def test_a_target_that_is_not_the_models_architecture_at_other_widths_is_one_line():
    a = small_nets(1)[0]
    x = torch.randn(2, 3, 12, 12)
    with pytest.raises(FusionctlError, match="target is a Linear, the models are SmallNets"):
        fusionctl.fuse_models([a, copy.deepcopy(a)], example_inputs=x, target=torch.nn.Linear(3, 3))
    with pytest.raises(FusionctlError, match=r"its head.2.weight has shape \(5, 32\), the models' \(10, 32\): only the aligned widths"):
        fusionctl.fuse_models([a, copy.deepcopy(a)], example_inputs=x, target=custom_nets.SmallNet(in_channels=3, num_classes=5, width=12))
    with pytest.raises(FusionctlError, match="solver=wm needs every base model and the target to have the same widths"):
        fusionctl.fuse_models([a, copy.deepcopy(a)], method="wm", example_inputs=x, target=custom_nets.SmallNet(in_channels=3, width=12))
    cut = custom_nets.CutAtWidth()
    with pytest.raises(FusionctlError, match="target's traced alignment differs from model 0's beyond their widths"):
        fusionctl.fuse_models([cut, copy.deepcopy(cut)], example_inputs=x, target=custom_nets.CutAtWidth(width=8))


def test_one_post_step_may_be_named_as_a_string():
    torch.manual_seed(0)
    a, b = small_nets(2)
    data = [(torch.randn(8, 3, 12, 12), torch.randint(0, 10, (8,))) for _ in range(2)]
    states = [fusionctl.fuse_models([a, b], data=data, post=post).state_dict() for post in ("repair", ("repair",))]
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[1])
    plain = fusionctl.fuse_models([a, b], data=data).state_dict()
    assert any(not torch.equal(states[0][k], plain[k]) for k in plain), "REPAIR ran"


def test_the_readme_example_runs():
    text = (ROOT / "README.md").read_text()
    code = re.search(r"<!-- api-example -->\n```python\n(.*?)```", text, re.S).group(1)
    assert 10 <= len(code.strip().splitlines()) <= 20
    exec(compile(code, "README.md", "exec"), {})


@pytest.mark.slow
def test_the_vit_example_script_trains_and_fuses_two_vits():
    import subprocess
    import sys

    run = subprocess.run([sys.executable, str(ROOT / "scripts" / "fuse_vits.py"), "--epochs", "1"], capture_output=True, text=True,
                         cwd=ROOT, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "permutable hidden units: 640 of 640 (3 groups of attention heads among them)" in run.stdout
    rows = {line.split()[0] + (" paper" if "paper" in line else "") for line in run.stdout.splitlines()[3:]}
    assert rows == {"avg", "wb", "wb paper", "wm", "am"}, run.stdout


def test_barriers_of_a_user_model_and_its_permuted_copy():
    """fusionctl.barriers: the aligned line between a net and its permuted copy is flat (one function
    all along, BN statistics included), the naive one is not; the barriers are the curves' (Entezari)."""
    from fusionctl.eval.barrier import barrier

    model, data, x = net_with_statistics()
    summary, curves = fusionctl.barriers([model, permuted_copy(model, x)], data, points=5)
    aligned, naive = (curves[curves.line == name] for name in ("aligned 1-2", "naive 1-2"))
    assert (aligned.loss - aligned.loss.iloc[0]).abs().max() < 1e-5 and (naive.loss - naive.loss.iloc[0]).abs().max() > 1e-3
    for name, curve in (("aligned 1-2", aligned), ("naive 1-2", naive)):
        row = summary[summary.line == name].iloc[0]
        assert row.loss_barrier == pytest.approx(barrier(curve.t.to_numpy(), curve.loss.to_numpy()))
        assert row.error_barrier == pytest.approx(barrier(curve.t.to_numpy(), 100 - curve.accuracy.to_numpy()))
    assert summary[summary.line == "aligned 1-2"].loss_barrier.iloc[0] < 1e-5
    reset, _ = fusionctl.barriers([model, permuted_copy(model, x)], data, points=3, post="bn_reset")
    assert set(reset.post) == {"bn_reset"} and reset[reset.line == "aligned 1-2"].loss_barrier.iloc[0] < 1e-4
    other = small_nets(2)[1]
    held_out = batches((3, 12, 12), seed=1)  # evaluated; the alignment reads `data`'s inputs
    by_data, _ = fusionctl.barriers([model, other], held_out, method="am", align_data=[b[0] for b in data], points=3)
    by_itself, _ = fusionctl.barriers([model, other], held_out, method="am", points=3)
    pd.testing.assert_frame_equal(by_data.iloc[:1], by_itself.iloc[:1])  # the naive line does not depend on it
    assert not by_data.iloc[1:].equals(by_itself.iloc[1:])
    with pytest.raises(FusionctlError, match="barriers needs labelled data"):
        fusionctl.barriers([model, model], [b[0] for b in data])
    with pytest.raises(FusionctlError, match="unknown post-step 'bn'"):
        fusionctl.barriers([model, model], data, post="bn")


def test_a_language_model_with_a_label_per_token_fuses_and_its_barriers_score_every_labelled_token(caplog):
    """A model returning an output object with .logits (batch, tokens, vocab), data of (ids, next ids)
    with -100 where a token is not scored (Hugging Face's convention): cost=auto's held-out choice and
    fusionctl.barriers read the logits, score every labelled token and skip the rest."""
    import torch.nn.functional as F

    torch.manual_seed(0)
    model = custom_nets.TokenLMNet().eval()
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 13, (48, 7), generator=g)
    x, y = ids[:, :-1], ids[:, 1:].clone()
    y[:, :2] = -100
    data = [(x[i:i + 16], y[i:i + 16]) for i in range(0, 48, 16)]
    other = permuted_copy(model, x[:2])
    with caplog.at_level("INFO"):
        fused = fusionctl.fuse_models([model, other], data=data)  # cost=auto scores both candidates on `data`
    assert (fused(x).logits - model(x).logits).abs().max() < 1e-5
    assert "align the same way (accuracy after repair" in caplog.text  # its Linears have biases
    summary, curves = fusionctl.barriers([model, other], data, points=3)
    logits = model(x).logits.detach()
    start = curves[(curves.line == "aligned 1-2") & (curves.t == 0)].iloc[0]
    assert start.loss == pytest.approx(float(F.cross_entropy(logits.reshape(-1, 13), y.reshape(-1))), rel=1e-5)
    hits = (logits.argmax(-1) == y)[:, 2:]
    assert start.accuracy == pytest.approx(100 * float(hits.float().mean()), rel=1e-5)
    assert summary[summary.line == "aligned 1-2"].loss_barrier.iloc[0] < 1e-5
    refused = r"data's batches are dicts \(keys input_ids, labels\); give tensors or \(inputs, labels\) tuples with a label per output"
    with pytest.raises(FusionctlError, match=refused + r": a causal language model's \(ids\[:, :-1\], ids\[:, 1:\]\)"):
        fusionctl.fuse_models([model, other], data=[{"input_ids": x, "labels": y}])
    with pytest.raises(FusionctlError, match="batches are dicts"):
        fusionctl.barriers([model, other], [{"input_ids": x, "labels": y}])


def test_a_traced_spec_given_back_fits_and_tied_weights_interpolate_once():
    """barriers traces once and hands its spec to fuse_models: a spec traced from a net whose heads a
    module of its own writes (GPT-2's Conv1D) fits that net; an embedding tied to its output head is
    one tensor under two keys, which the points of a line hold once."""
    torch.manual_seed(0)
    gpt, x = custom_nets.GPT2StyleNet().eval(), torch.randn(8, 3, 8, 8)
    spec = fusionctl.derive_spec(gpt, x[:2])
    fused = fusionctl.fuse_models([gpt, permuted_copy(gpt, x[:2])], spec=spec, example_inputs=x[:2])
    assert (fused(x) - gpt(x)).abs().max() < 1e-5
    tied = custom_nets.TiedEmbeddingNet().eval()
    ids = torch.randint(0, 11, (32, 5), generator=torch.Generator().manual_seed(0))
    data = [(ids[i:i + 8], ids[i:i + 8, 0]) for i in range(0, 32, 8)]
    summary, curves = fusionctl.barriers([tied, permuted_copy(tied, ids[:2])], data, points=3)
    aligned = curves[curves.line == "aligned 1-2"]
    assert (aligned.loss - aligned.loss.iloc[0]).abs().max() < 1e-5


@pytest.mark.slow
def test_the_language_model_example_script_trains_and_fuses_two_llamas():
    import subprocess
    import sys

    needs_transformers_torch()  # a test extra, not a dependency; the script says to install it
    run = subprocess.run([sys.executable, str(ROOT / "scripts" / "fuse_lms.py"), "--steps", "5", "--mb", "0.2", "--points", "3"],
                         capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "permutable hidden units: 512 of 512" in run.stdout
    rows = [line.split(" | ")[0].strip("| ") for line in run.stdout.splitlines() if line.startswith("| ") and "method" not in line]
    assert rows == ["avg", "wb", "wb paper", "wm", "am"], run.stdout
