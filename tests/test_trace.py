"""Specs traced with torch.fx: function-preserving for torchvision nets, equal to the hand specs of
the built-ins, frozen (never wrong) where the tracer cannot vouch for a permutation."""

from __future__ import annotations

import copy
import functools
import importlib.util
import sys
from dataclasses import replace

import pytest
import torch

from fusionctl.config import ModelConfig
from fusionctl.errors import FusionctlError
from fusionctl.fusion.transport import random_couplings, transport
from fusionctl.fusion.units import unobserved
from fusionctl.models import build_model, load_state, model_spec
from fusionctl.models.concat import join_state, split_spec, split_state
from fusionctl.models.spec import Axis
from fusionctl.models.spec_report import alignment_report
from fusionctl.models.trace import TraceError, derive_spec
from tests import custom_nets
from tests.helpers import needs_fx_cat_of_slices, needs_grouped_mm, needs_sdpa_gqa

TORCHVISION = ["resnet18", "resnet50", "vgg11_bn", "mobilenet_v3_small", "efficientnet_b0", "convnext_tiny", "densenet121",
               "shufflenet_v2_x0_5", "mnasnet0_5", "regnet_y_400mf", "squeezenet1_0", "googlenet"]
# arch -> a reason named (ShuffleNet's channel shuffle interleaves a concatenation's parts)
PARTLY_FROZEN = {"shufflenet_v2_x0_5": "read through a concatenation that cannot move (reshape splitting or merging channel axes)"}


def random_stats(model):
    """Non-trivial BatchNorm statistics, so a wrong mapping of them shows in the outputs."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.normal_(0, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    return model.eval()


def permute_everything(model, spec, seed=1):
    """A random permutation of every group, applied to a copy of the model's state."""
    state = {k: v.clone() for k, v in model.state_dict().items()}
    g = torch.Generator().manual_seed(seed)
    cps = random_couplings(spec, state, g)
    return state, transport(state, spec, cps)


def assert_permutation_keeps_function(model, spec, x):
    state, moved = permute_everything(model, spec)
    touched = {g for k, axes in spec.axes.items() for a in axes if a is not None and not torch.equal(moved[k], state[k])
               for g in spec.concat.get(a.group, (a.group,)) if g in spec.groups}
    assert touched == set(spec.groups), f"groups no entry of which moved: {set(spec.groups) - touched}"
    with torch.no_grad():
        before = model(x)
        load_state(model, moved)  # MNASNet's loader reads module versions that a plain dict lacks
        after = model(x)
        load_state(model, state)
    rel = float((after - before).abs().max() / before.abs().max())
    assert rel < 1e-4, rel


@pytest.mark.parametrize("arch", TORCHVISION)
def test_torchvision_nets_keep_their_function_under_every_traced_permutation(arch):
    import torchvision

    torch.manual_seed(0)
    kwargs = {"aux_logits": False, "init_weights": True} if arch == "googlenet" else {}
    model = random_stats(torchvision.models.get_model(arch, weights=None, num_classes=10, **kwargs))
    x = torch.randn(2, 3, 32, 32)
    spec = derive_spec(model, x)
    print(f"{arch}: {spec.coverage}")
    assert spec.coverage.permutable > 0 and len(spec.groups) > 5
    if arch in PARTLY_FROZEN:
        assert PARTLY_FROZEN[arch] in spec.coverage.frozen and spec.coverage.permutable < spec.coverage.hidden
    else:
        assert spec.coverage.permutable == spec.coverage.hidden, str(spec.coverage)
    assert_permutation_keeps_function(model, spec, x)


# timm writes layers as torch.nn subclasses calling the functional ops (BatchNormAct2d, Conv2dSame, NFNet's
# ScaledStdConv2d, BlurPool2d)
TIMM = ["efficientnet_b0", "densenet121", "cspresnet50", "convnextv2_atto", "regnetx_002", "ghostnet_100", "swin_tiny_patch4_window7_224",
        "nf_resnet26", "resnetblur18"]
# a Swin small enough for 32x32: 16x16 tokens in 4x4 windows, shifted by 2, then 8x8 (heads with a relative-position bias each)
TIMM_KWARGS = {"swin_tiny_patch4_window7_224": {"img_size": 32, "patch_size": 2, "window_size": 4, "embed_dim": 24, "depths": (2, 2),
                                                 "num_heads": (2, 4)}}


@pytest.mark.parametrize("arch", TIMM)
def test_timm_nets_keep_their_function_under_every_traced_permutation(arch):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = random_stats(timm.create_model(arch, pretrained=False, num_classes=10, **TIMM_KWARGS.get(arch, {})))
    x = torch.randn(2, 3, 32, 32)
    spec = derive_spec(model, x)
    print(f"{arch}: {spec.coverage}")
    assert spec.coverage.permutable == spec.coverage.hidden > 0, str(spec.coverage)
    assert_permutation_keeps_function(model, spec, x)


BUILT_INS = [(ModelConfig("mlp", [10, 8, 7], True), (1, 6, 6)), (ModelConfig("mlp", [10, 8], False), (1, 6, 6)),
             (ModelConfig("vgg11", [6, 6, 8, 8, 8, 8, 8, 8, 6, 6], True, True), (3, 12, 12)),
             (ModelConfig("vgg11", [6, 6, 8, 8, 8, 8, 8, 8, 6, 6], False, False), (1, 28, 28)),
             (ModelConfig("resnet18", [4, 6, 8, 10], False, True), (3, 16, 16)),
             (ModelConfig("resnet18", [4, 6, 8, 10], False, False), (3, 16, 16)),
             (ModelConfig("resnet20", [6, 8, 10], False, True), (3, 12, 12)), (ModelConfig("resnet20", [6, 8, 10], True, False), (3, 12, 12))]


def canonical(spec):
    """The spec with groups renamed by their order: equal specs up to group names compare equal."""
    name = {g: i for i, g in enumerate(spec.groups)}
    axes = {k: tuple(None if a is None else (name[a.group], a.outer, a.inner) for a in v) for k, v in spec.axes.items()}
    units = {name[g]: tuple((u.writer, u.norm) for u in us) for g, us in spec.units.items()}
    return len(spec.groups), axes, units


@pytest.mark.parametrize("cfg, shape", BUILT_INS, ids=lambda v: f"{v.name}-bias{int(v.bias)}-bn{int(v.batch_norm)}" if hasattr(v, "name") else "")
def test_traced_spec_equals_the_hand_written_spec(cfg, shape):
    model = build_model(cfg, shape, 4)
    assert canonical(derive_spec(model, torch.randn(2, *shape))) == canonical(model_spec(cfg))


@pytest.mark.parametrize("cls, reason, frozen, free", [
    (custom_nets.RollNet, "rolling, flipping or a cumulative sum along a channel axis", [("a.weight", 0), ("a.bias", 0), ("b.weight", 1)], [("b.weight", 0)]),
    (custom_nets.ConcatSumNet, "model input", [], [("a.weight", 0), ("b.weight", 0), ("d.weight", 0), ("c.weight", 0)]),
    (custom_nets.HStackNet, "unsupported op hstack", [("a.weight", 0), ("b.weight", 0), ("fc.weight", 1)], [("c.weight", 0)]),
    (custom_nets.SelectiveKernelNet, "combined with an unaligned tensor", [("select.weight", 0)],
     [("paths.0.weight", 0), ("paths.1.weight", 0), ("fc.weight", 1)]),
    (functools.partial(custom_nets.BlurNet, same_kernel=False), "conv2d with a weight computed in forward or read elsewhere",
     [("a.weight", 0), ("b.weight", 1)], [("b.weight", 0)]),
    (custom_nets.WindowNet, "pooling, resampling, padding, rolling, flipping or a cumulative sum along a channel axis", [("a.weight", 0), ("b.weight", 0), ("b.weight", 1)],
     [("c.weight", 0)]),
    (custom_nets.SetitemNet, "written into by an in-place assignment", [("a.weight", 0), ("b.weight", 0)],
     [("c.weight", 0)]),
    (custom_nets.ArgmaxNet, "indices of a max or min", [("a.weight", 0), ("b.weight", 1)], [("b.weight", 0), ("c.weight", 0)]),
    (custom_nets.TinyTransformer, "slice along a channel axis", [("side.weight", 0)],
     [("emb.weight", 0), ("cls", 2), ("o.weight", 0), ("q.weight", 1), ("m1.weight", 0), ("head.weight", 1), ("q.weight", 0),
      ("v.weight", 0), ("o.weight", 1)]),
    (functools.partial(custom_nets.ElementwiseZooNet, along_channels=True), "a cumulative sum along a channel axis",
     [("a.weight", 0), ("b.weight", 1)], [("b.weight", 0), ("c.weight", 0)]),
    (custom_nets.ConstantScaleNet, "combined with an unaligned tensor", [("a.weight", 0), ("b.weight", 0), ("c.weight", 1)],
     [("c.weight", 0)]),
])
def test_what_the_tracer_cannot_vouch_for_is_frozen_and_reported(cls, reason, frozen, free):
    torch.manual_seed(0)
    model = cls().eval()
    x = torch.randn(4, 3, 6, 6)
    spec = derive_spec(model, x)
    assert any(reason in r for r in spec.coverage.frozen), str(spec.coverage)
    for key, dim in frozen:
        assert spec.axes[key][dim] is None, (key, dim)
    for key, dim in free:
        assert spec.axes[key][dim] is not None, (key, dim)
    assert_permutation_keeps_function(model, spec, x)


def test_gpt2_conv1d_layers_are_linears_stored_transposed():
    """Hugging Face's Conv1D applies torch.addmm(bias, x, weight) with its weight stored (in, out):
    read as a Linear whose output axis is the weight's second (before, an unsupported op froze
    all of GPT-2); `.type(dtype)` is a cast."""
    model, x = custom_nets.GPT2StyleNet().eval(), torch.randn(3, 3, 8, 8)
    spec = derive_spec(model, x)
    assert spec.coverage.permutable == spec.coverage.hidden, str(spec.coverage)
    assert spec.axes["c_fc.weight"] == (Axis("embed"), Axis("c_fc")) and spec.axes["c_fc.bias"] == (Axis("c_fc"),)
    assert spec.axes["mlp_proj.weight"] == (Axis("c_fc"), Axis("embed"))
    assert_permutation_keeps_function(model, spec, x)


@pytest.mark.parametrize("grouped_mm", [pytest.param(True, marks=needs_grouped_mm), False])
def test_stacked_expert_weights_leave_the_stream_and_their_units_permutable(grouped_mm):
    """A mixture of experts with weights stacked per expert, (experts, out, in), as Hugging Face
    stores them (before, the weight computed in forward froze the whole residual stream): through
    torch's grouped matmul or F.linear on weight[e], the stream and the experts' hidden units (one
    permutation for every expert, gate and up halves alike) move; the experts do not, and the
    router's outputs, whose top one picks the expert, freeze."""
    model, x = custom_nets.StackedExpertsNet(grouped_mm=grouped_mm).eval(), torch.randn(3, 3, 8, 8)
    spec = derive_spec(model, x)
    groups = lambda key: tuple(a and a.group for a in spec.axes[key])  # noqa: E731
    assert groups("gate_up_proj") == (None, "gate_up_proj.parts[0:8]", "embed") and spec.axes["gate_up_proj"][1].outer == 2
    assert groups("down_proj") == (None, "embed", "gate_up_proj.parts[0:8]") and groups("router.weight") == (None, "embed")
    assert spec.coverage.permutable == 16 and spec.coverage.frozen == {"indices of a max or min": ["router"]}, str(spec.coverage)
    assert_permutation_keeps_function(model, spec, x)


def test_less_common_element_wise_ops_and_a_cumulative_sum_along_positions_keep_the_units():
    """SELU, CELU, softsign, expm1 (Apertus's xIELU), log1p, log_sigmoid, hardshrink act on each
    entry alone, `unflatten` is a reshape, and a cumsum along the positions leaves every channel
    its units (along the channels it freezes them: see the frozen cases)."""
    model, x = custom_nets.ElementwiseZooNet().eval(), torch.randn(4, 3, 6, 6)
    spec = derive_spec(model, x)
    assert spec.coverage.permutable == spec.coverage.hidden == 19, str(spec.coverage)
    assert_permutation_keeps_function(model, spec, x)


@pytest.mark.parametrize("mixed", [False, True])
def test_halves_interleaved_unit_by_unit_are_packed_copies(mixed):
    """x[..., ::2] and x[..., 1::2] of one Linear's output (gpt-oss's gate and up) read its units as
    two copies interleaved: the rows move in pairs (Axis inner=2) and the halves' units are one group,
    aligned on weights (no module outputs them apart). Read once as pairs and once as halves, they freeze."""
    torch.manual_seed(0)
    model, x = custom_nets.InterleavedGLUNet(mixed=mixed).eval(), torch.randn(3, 3, 8, 8)
    spec = derive_spec(model, x)
    if mixed:
        assert spec.axes["gate_up.weight"][0] is None and spec.axes["down.weight"][1] is None
    else:
        assert spec.axes["gate_up.weight"][0] == Axis("gate_up.parts", inner=2) and spec.axes["down.weight"][1] == Axis("gate_up.parts")
        assert spec.coverage.permutable == spec.coverage.hidden and unobserved(spec) == ["gate_up.parts"], str(spec.coverage)
    assert_permutation_keeps_function(model, spec, x)


@pytest.mark.parametrize("cls", [custom_nets.StdConvNet, custom_nets.BlurNet])
def test_standardised_conv_weights_and_blur_kernels_keep_their_channels_permutable(cls):
    """NFNet's and BiT's convs standardise their own weight in forward: the output is the conv's units,
    as its own weight would make them. An anti-aliasing blur is one fixed kernel for every channel:
    the channels pass through (one fixed kernel per channel would pin them: see the frozen cases)."""
    model, x = cls().eval(), torch.randn(4, 3, 6, 6)
    spec = derive_spec(model, x)
    assert spec.coverage.permutable == spec.coverage.hidden, str(spec.coverage)
    if cls is custom_nets.StdConvNet:
        assert spec.axes["c.weight"][0] == Axis("c") and spec.units["c"][0].writer == "c"
        assert spec.axes["b.weight"][:2] == (Axis("b"), Axis("a")) and spec.axes["b.gain"][0] == Axis("b")
    else:
        assert spec.axes["b.weight"][1] == Axis("a")
    assert_permutation_keeps_function(model, spec, x)


def test_a_weight_read_again_through_f_linear_carries_one_permutation_in_both_reads():
    """ReusedWeightNet calls a Linear and reads its weight again through F.linear on another branch:
    like a tied weight, both reads carry one permutation per axis (a's and b's units move together);
    before, the second read froze all three groups."""
    model, x = custom_nets.ReusedWeightNet().eval(), torch.randn(4, 3, 6, 6)
    spec = derive_spec(model, x)
    assert spec.coverage.permutable == spec.coverage.hidden == 16, str(spec.coverage)
    assert spec.axes["a.weight"][0] == spec.axes["b.weight"][0] == spec.axes["lin.weight"][1] is not None
    assert_permutation_keeps_function(model, spec, x)


def test_a_tied_weight_carries_one_permutation_in_every_use():
    """An LLM's token embedding tied to its output head: both index the hidden stream by their
    second axis and nothing moves the vocabulary, so the stream stays permutable (before, any tied
    weight froze what it touched; GPT-2, OPT, Gemma). The embedding is Gemma's, an nn.Embedding
    subclass calling F.embedding on its own weight (before, an unsupported op). A weight reused
    the other way round (mix and back) or along a chain (TiedNet: inp -> a -> b with a = b) ties
    the groups it reads and writes into one: each axis of the one tensor takes one permutation."""
    ids = torch.randint(0, 11, (3, 5))
    for tied_back in (False, True):
        model = custom_nets.TiedEmbeddingNet(tied_back=tied_back).eval()
        spec = derive_spec(model, ids)
        assert spec.axes["embed.weight"] == spec.axes["head.weight"] == (None, Axis("embed")) and spec.groups == ("embed",)
        assert spec.axes["mix.weight"] == (Axis("embed"), Axis("embed")) and spec.coverage.permutable == spec.coverage.hidden == 6
        assert spec.axes["mix_bias"] == spec.axes["mix.bias"] == (Axis("embed"),)  # the state dict holds both names
        assert_permutation_keeps_function(model, spec, ids)
    model, x = custom_nets.TiedNet().eval(), torch.randn(3, 3, 4, 4)
    spec = derive_spec(model, x)
    assert spec.axes["a.weight"] == spec.axes["b.weight"] == (Axis("inp"), Axis("inp")) and spec.groups == ("inp", "mid")
    assert_permutation_keeps_function(model, spec, x)


@pytest.mark.parametrize("cls, hidden", [(custom_nets.ResampleNet, 6 + 5 + 6), pytest.param(custom_nets.RowsNet, 6 + 5, marks=needs_fx_cat_of_slices), (custom_nets.GatedNet, 8 + 5),
                                         (custom_nets.SplitConcatNet, 8 + 4 + 6), (custom_nets.FunctionalNet, 6 + 5 + 8 + 7),
                                         (custom_nets.ShiftedWindowNet, 6 + 5), (custom_nets.DropPathNet, 6),
                                         (custom_nets.ShapeBranchNet, 6 + 5), (custom_nets.WrappedFunctionNet, 6 + 5),
                                         (custom_nets.OptionalArgsNet, 6 + 5), (custom_nets.UpsamplingNet, 6 + 5 + 7),
                                         (custom_nets.RepeatNet, 4 + 5 + 6 + 7), (custom_nets.EmptyReshapeNet, 6)])
def test_resampling_shifts_matrix_products_splits_concatenations_and_functional_layers_keep_every_group_free(cls, hidden):
    torch.manual_seed(0)
    model = cls().eval()
    x = torch.randn(4, 3, 6, 6)
    spec = derive_spec(model.train(), x)  # traced as the eval-mode function whatever the mode
    assert model.training
    model.eval()
    assert spec.coverage.permutable == spec.coverage.hidden == hidden, str(spec.coverage)
    if "proj" in spec.axes:  # h @ proj: proj's rows join the group that h carries
        assert spec.axes["proj"][0].group == spec.axes["b.weight"][0].group and spec.axes["proj"][1] is None
    assert_permutation_keeps_function(model, spec, x)


def small_vit():
    import torchvision

    torch.manual_seed(0)
    vit = torchvision.models.VisionTransformer(image_size=16, patch_size=4, num_layers=2, num_heads=2, hidden_dim=8,
                                               mlp_dim=12, num_classes=4)
    torch.nn.init.normal_(vit.heads.head.weight, std=0.3)  # torchvision starts it at zero
    return vit.eval()


# hidden: stream + MLPs + heads (each attention's q/k/v rows and out_proj columns)
@pytest.mark.parametrize("make, side, hidden", [
    (custom_nets.TinyTransformer, 4, None), (lambda: custom_nets.TinyTransformer(sdpa=True), 4, None),
    (custom_nets.PackedAttentionNet, 4, None), (lambda: custom_nets.PackedAttentionNet(einsum=True), 4, None),
    (small_vit, 16, 8 + 2 * 12 + 2 * 8), (custom_nets.CrossAttentionNet, 4, 8 + 6 + 8), (custom_nets.TorchEncoderNet, 4, 8 + 2 * 12 + 2 * 8),
    (lambda: custom_nets.TorchEncoderNet(norm_first=True), 4, 8 + 2 * 12 + 2 * 8), (custom_nets.Seq2SeqNet, 4, 8 + 12 + 12 + 3 * 8),
], ids=["home-made", "home-made-sdpa", "packed-qkv", "packed-qkv-einsum", "vit", "cross", "torch-encoder", "torch-encoder-prenorm", "torch-transformer"])
def test_attention_blocks_keep_their_stream_and_heads_permutable(make, side, hidden):
    torch.manual_seed(0)
    model = make().eval()
    x = torch.randn(3, 3, side, side)
    spec = derive_spec(model, x)
    if hidden is None:  # home-made blocks: heads of separate q, k, v Linears, or of one packed Linear
        if "qkv.weight" in spec.axes:
            group = next(g for g in spec.groups if g.startswith("qkv."))
            assert spec.coverage.permutable == spec.coverage.hidden == 8 + 3 * 8 + 12 and spec.heads == {group: ("qkv", 2)}, str(spec.coverage)
            assert spec.axes["qkv.weight"][0] == Axis(group, 3) and spec.axes["proj.weight"][1] == Axis(group)
        else:
            assert spec.coverage.permutable == 8 + 8 + 16 and spec.heads == {"q": (None, 2)}, (str(spec.coverage), spec.heads)
            assert [u.writer for u in spec.units["q"]] == ["q", "k", "v"] and spec.axes["o.weight"][1].group == "q"
        return assert_permutation_keeps_function(model, spec, x)
    assert spec.coverage.permutable == spec.coverage.hidden == hidden, str(spec.coverage)
    heads = [g for g in spec.groups if g.endswith(".heads")]
    assert heads and all(spec.blocks(g) == 2 for g in heads) and set(spec.heads) == set(heads)
    assert f"({len(heads)} group{'s' if len(heads) > 1 else ''} of attention heads among them)" in str(spec.coverage)
    attention = [k for k in spec.axes if k.endswith(("in_proj_weight", "k_proj_weight", "out_proj.weight"))]
    assert attention and all(all(a is not None for a in spec.axes[k]) for k in attention)
    assert_permutation_keeps_function(model, spec, x)


@pytest.mark.parametrize("cosine, sdpa", [(False, False), (True, False), (False, True)], ids=["swin", "cosine", "sdpa-mask"])
def test_a_bias_per_head_moves_with_whole_heads(cosine, sdpa):
    """Swin's relative-position table: one column per head, gathered and added to the logits of
    each window (or passed as the attention's mask). Every permutation of whole heads (and within
    them) moves its columns along, a soft coupling averages them by its block sums; one table shared
    by two attentions pins both; a bias computed by a Linear moves with them (its rows, one per head)."""
    torch.manual_seed(0)
    model = custom_nets.RelativeBiasAttentionNet(cosine=cosine, sdpa=sdpa).eval()
    x = torch.randn(4, 3, 2, 2)
    spec = derive_spec(model, x)
    assert spec.coverage.permutable == spec.coverage.hidden == 8 + 3 * 8 and spec.per_head == {"table": (1, "qkv.0.heads")}, str(spec.coverage)
    spec.check_fits(model)
    assert_permutation_keeps_function(model, spec, x)
    swap = torch.eye(8, dtype=torch.float64)[[5, 4, 7, 6, 0, 1, 3, 2]] / 8  # the two heads exchanged, and units within them
    state, table = copy.deepcopy(model.state_dict()), model.state_dict()["table"]
    swapped = transport(state, spec, {"qkv.0.heads": swap})
    assert torch.equal(swapped["table"], table.flip(1))
    with torch.no_grad():
        before = model(x)
        load_state(model, swapped)
        assert torch.allclose(model(x), before, atol=1e-6)
        load_state(model, state)
    half = 0.5 * swap + 0.5 * torch.eye(8, dtype=torch.float64) / 8
    assert torch.allclose(transport(model.state_dict(), spec, {"qkv.0.heads": half})["table"], table.mean(1, keepdim=True).expand(-1, 2))
    for kwargs in ({"shared": True}, {"mlp": True}):
        other = custom_nets.RelativeBiasAttentionNet(sdpa=sdpa, **kwargs).eval()
        spec = derive_spec(other, x)
        if "shared" in kwargs:
            assert not spec.per_head and any("shared by two attentions" in r for r in spec.coverage.frozen), str(spec.coverage)
        else:
            assert spec.per_head == {"rel.weight": (0, "qkv.0.heads"), "rel.bias": (0, "qkv.0.heads")}, str(spec.coverage)
            assert spec.coverage.permutable == spec.coverage.hidden, str(spec.coverage)
        assert_permutation_keeps_function(other, spec, x)


@pytest.mark.parametrize("make, group", [(custom_nets.TorchEncoderNet, "encoder.layers.0.self_attn.heads"), (custom_nets.TinyTransformer, "q"),
                                         (custom_nets.PackedAttentionNet, "qkv.heads")], ids=["torch-encoder", "home-made", "packed-qkv"])
def test_heads_move_only_as_whole_heads(make, group):
    """Swapping two units of different heads changes the function; swapping two heads, or two
    units inside one head, keeps it."""
    torch.manual_seed(0)
    model = make().eval()
    x = torch.randn(3, 3, 4, 4)
    assert_swaps(model, derive_spec(model, x), group, x, ((4, 5, 6, 7, 0, 1, 2, 3), True), ((1, 0, 2, 3, 4, 5, 7, 6), True),
                 ((4, 1, 2, 3, 0, 5, 6, 7), False))


def assert_swaps(model, spec, group, x, *cases):
    """For each (permutation of `group`'s units, whether it should keep the function)."""
    state = model.state_dict()
    for perm, same in cases:
        cps = {g: torch.eye(n, dtype=torch.float64) / n for g, n in spec.group_sizes(state).items()}
        cps[group] = torch.eye(len(perm), dtype=torch.float64)[list(perm)] / len(perm)
        other = copy.deepcopy(model)
        other.load_state_dict(transport(state, spec, cps))
        with torch.no_grad():
            assert torch.allclose(other(x), model(x), atol=1e-5) == same, perm


def test_batch_and_heads_merged_for_a_bmm_leave_the_heads_permutable():
    """fairseq-style attention (XGLM, TrOCR) merges batch and heads, (b x heads, n, d), for torch.bmm
    and splits them after: the heads keep their element through both (before, the merge froze q, k,
    v and o). q, k and v are one group of heads, as in unmerged attention: heads move whole, and
    units within every head alike."""
    torch.manual_seed(0)
    model, x = custom_nets.BatchHeadsAttentionNet().eval(), torch.randn(3, 3, 8, 8)
    spec = derive_spec(model, x)
    assert spec.coverage.permutable == spec.coverage.hidden, str(spec.coverage)
    assert {spec.axes[f"{p}.weight"][0] for p in "qkv"} == {spec.axes["o.weight"][1]} == {Axis("q")} and spec.heads["q"][1] == 2
    assert_swaps(model, spec, "q", x, ((4, 5, 6, 7, 0, 1, 2, 3), True), ((1, 0, 2, 3, 4, 5, 6, 7), True),
                 ((4, 1, 2, 3, 0, 5, 6, 7), False))
    assert_permutation_keeps_function(model, spec, x)


@pytest.mark.parametrize("shared", [False, True])
def test_values_a_module_computes_per_head_move_with_whole_heads(shared):
    """A gate or decay per head that a Linear computes (Laguna's g_proj; the a and b projections of
    gated linear attention) meets the heads it scales: its rows, and the per-head parameters it
    meets, move with whole heads (spec.per_head), and the heads stay permutable (before, any such
    gate froze them: "heads met a tensor split otherwise"). The same gates scaling the heads of two
    attentions freeze both, as no permutation of one attention's heads alone keeps them."""
    torch.manual_seed(0)
    model, x = custom_nets.HeadGateNet(shared=shared).eval(), torch.randn(3, 3, 8, 8)
    spec = derive_spec(model, x)
    if shared:
        assert spec.groups == ("embed",) and not spec.per_head, str(spec.coverage)
    else:
        assert spec.coverage.permutable == spec.coverage.hidden and spec.groups == ("embed", "attentions.0.0"), str(spec.coverage)
        assert {key: group for key, (dim, group) in spec.per_head.items() if dim == 0} == \
            dict.fromkeys(["dt_bias", "A_log", "g_proj.weight", "g_proj.bias", "a_proj.weight"], "attentions.0.0")
        assert_swaps(model, spec, "attentions.0.0", x, ((4, 5, 2, 3, 0, 1, 6, 7), True), ((1, 0, 2, 3, 4, 5, 6, 7), True),
                     ((2, 1, 0, 3, 4, 5, 6, 7), False))
    assert_permutation_keeps_function(model, spec, x)


@pytest.mark.parametrize("kwargs, group", [({}, "q"), ({"halves": True}, "q"), ({"packed": True}, "qkv.heads"), ({"qk_norm": True}, "q"),
                                           ({"complex_pairs": True}, "q")],
                         ids=["chunked-halves", "sliced-halves", "packed-qkv", "qk-norm", "complex-pairs"])
def test_rotary_embeddings_let_heads_move_only_whole(kwargs, group):
    """A rotary table fixes each channel's place in its head: swapping two heads keeps the
    function, swapping two units inside one head (or of different heads) does not; every group
    stays permutable and random whole-head permutations keep the function."""
    torch.manual_seed(0)
    model = custom_nets.RotaryAttentionNet(**kwargs).eval()
    x = torch.randn(3, 3, 8, 8)
    spec = derive_spec(model, x)
    assert spec.whole_heads == {group} and spec.blocks(group) == 2 and not spec.within(group)
    assert spec.coverage.permutable == spec.coverage.hidden, str(spec.coverage)
    assert "moved only as whole heads" in str(spec.coverage)
    assert_swaps(model, spec, group, x, ((4, 5, 6, 7, 0, 1, 2, 3), True), ((1, 0, 2, 3, 4, 5, 6, 7), False), ((4, 1, 2, 3, 0, 5, 6, 7), False))
    assert_permutation_keeps_function(model, spec, x)


@pytest.mark.parametrize("repeat", ["interleave", "expand", pytest.param("sdpa", marks=needs_sdpa_gqa), "tile"])
@pytest.mark.parametrize("rotary", [False, True], ids=["plain", "rotary"])
def test_grouped_query_heads_move_with_their_key_value_head(repeat, rotary):
    """Grouped-query attention: the query heads that read one key/value head are copies of its
    layout (Axis.mid, or outer when the keys are tiled), so one group holds the key and value
    channels and moves the queries' rows and the output projection's columns with them. Swapping
    the two key/value heads keeps the function; so does swapping two channels within one head,
    unless rotary embeddings fix their places; swapping channels of two heads does not."""
    torch.manual_seed(0)
    model = custom_nets.GroupedQueryNet(repeat=repeat, rotary=rotary).eval()
    x = torch.randn(3, 3, 8, 8)
    spec = derive_spec(model, x)
    copies = Axis("k", outer=2) if repeat == "tile" else Axis("k", mid=2, heads=2)
    assert spec.axes["q.weight"][0] == spec.axes["o.weight"][1] == copies and spec.axes["v.weight"][0] == Axis("k"), spec.axes
    assert spec.blocks("k") == 2 and spec.within("k") != rotary and spec.coverage.permutable == spec.coverage.hidden, str(spec.coverage)
    assert [u.writer for u in spec.units["k"]] == ["k", "v"]
    assert_swaps(model, spec, "k", x, ((2, 3, 0, 1), True), ((1, 0, 2, 3), not rotary), ((2, 1, 0, 3), False))
    assert_permutation_keeps_function(model, spec, x)


@pytest.mark.parametrize("cls", [custom_nets.DecoratedForwardNet, custom_nets.KwargsForwardNet])
def test_a_decorated_forward_and_modules_made_on_the_fly_are_traced_through(cls):
    """Hugging Face's models: fx read the unwrapped forward's signature but patched the
    (*args, **kwargs) wrapper's code ("co_varnames is too small"), gave **kwargs a placeholder that
    a call passing them on could not unpack, and a module made inside forward is not installed in
    the model ("module is not installed as a submodule")."""
    model, x = cls().eval(), torch.randn(3, 3, 4, 4)
    spec = derive_spec(model, x)
    assert spec.groups == ("a",) and spec.coverage.permutable == spec.coverage.hidden == 6
    assert_permutation_keeps_function(model, spec, x)


@pytest.mark.parametrize("packed", ["split", "sliced"])
@pytest.mark.parametrize("rotary", [False, True], ids=["plain", "rotary"])
def test_a_packed_grouped_query_projection_moves_its_query_rows_as_copies(rotary, packed):
    """One qkv Linear split into (H·d, K·d, K·d): its rows are a concatenation whose key
    and value pieces are the group and whose query piece moves as copies of its layout (a part that
    is an Axis with mid copies). Before, the query rows stayed in place while the heads moved (the
    function changed by 3 % relative). Phi-3's three slices give the same spec: the second cuts
    the piece the first left (before, that froze the attention). Viewed as K groups of queries, a
    key and a value (Falcon's layout), the projection slices its heads and freezes."""
    torch.manual_seed(0)
    x = torch.randn(3, 3, 8, 8)
    model = custom_nets.GroupedQueryNet(packed=packed, rotary=rotary).eval()
    spec = derive_spec(model, x)
    copies = Axis("qkv[8:12]", mid=2, heads=2)
    assert spec.concat[spec.axes["qkv.weight"][0].group] == (copies, "qkv[8:12]", "qkv[8:12]") and spec.axes["o.weight"][1] == copies
    assert spec.coverage.permutable == spec.coverage.hidden and spec.coverage.concats == 1, str(spec.coverage)
    assert_swaps(model, spec, "qkv[8:12]", x, ((2, 3, 0, 1), True), ((1, 0, 2, 3), not rotary), ((2, 1, 0, 3), False))
    assert_permutation_keeps_function(model, spec, x)
    assert "`qkv[8:12]` (8: copies per head=2) + `qkv[8:12]` (4) + `qkv[8:12]` (4)" in alignment_report(spec, model)
    name = spec.axes["qkv.weight"][0].group
    with pytest.raises(ValueError, match="a part with mid copies needs its heads"):
        replace(spec, concat={name: (Axis("qkv[8:12]", mid=2, heads=4), "qkv[8:12]", "qkv[8:12]")}).check_fits(model)
    with pytest.raises(ValueError, match="concatenation .* has 12 channels, not 16"):
        replace(spec, concat={name: (Axis("qkv[8:12]"), "qkv[8:12]", "qkv[8:12]")}).check_fits(model)
    model = custom_nets.GroupedQueryNet(packed="grouped", rotary=rotary).eval()
    spec = derive_spec(model, x)
    assert spec.axes["qkv.weight"][0] is None and spec.axes["o.weight"][1] is None and "slice along a channel axis" in str(spec.coverage)
    assert_permutation_keeps_function(model, spec, x)


def test_gated_grouped_query_heads_freeze_with_their_keys():
    """Per head a query and a gate from one Linear (Qwen3-Next, MiniCPM5-MoE): the queries' heads
    cannot copy the keys' layout (each head holds a gate too), so they freeze, and so must the
    keys' heads they meet. Before, the keys stayed free (the axis of copied key heads froze, not
    the heads it copies): swapping them moved the function by 2e-2 to 0.1 relative, which the
    self-check caught in the Hugging Face survey."""
    model, x = custom_nets.GroupedQueryNet(packed="gated").eval(), torch.randn(3, 3, 8, 8)
    spec = derive_spec(model, x)
    assert all(spec.axes[f"{m}.weight"][0] is None for m in ("qg", "k", "v")) and "heads met a tensor split otherwise" in str(spec.coverage)
    assert_permutation_keeps_function(model, spec, x)


@pytest.mark.parametrize("cls, groups, cut", [
    (custom_nets.FirstChannelsShortcutNet, ("a", "b[6:10]", "c[10:14]"), {"b": [(0, 6), (6, 10)], "c": [(0, 6), (6, 10), (10, 14)]}),
    (custom_nets.PartialConvNet, ("stem[0:2]", "stem[2:8]", "partial.0", "mlp.0.0", "partial.1", "mlp.1.0"),
     {"stem": [(0, 2), (2, 8)], "mlp.0.3": [(0, 2), (2, 8)]}),
    (custom_nets.DualPathNet, ("stem", "w1[8:12]", "w2[8:12]"), {"w1": [(0, 8), (8, 12)], "w2": [(0, 8), (8, 12)]}),
    (custom_nets.MixedConvNet, ("a.parts", "pw.0", "pw.1"), {}),
    (custom_nets.ConcatResidualNet, ("p.0", "fc1"), {}),
    (functools.partial(custom_nets.ConcatResidualNet, seams=(2, 4)), ("p.1", "p.0[2:3]", "fc1"),
     {"p.0": [(0, 2), (2, 3)], "d.1": [(0, 1), (1, 3), (3, 4)]}),
], ids=["rexnet-shortcut", "fasternet-partial-conv", "dpn-dual-path", "mixnet-split-at-seams", "ghostnet-sum", "ghostnet-sum-other-seams"])
def test_a_writer_cut_by_uneven_slices_moves_piece_by_piece(cls, groups, cut):
    """Uneven slices or splits of a channel axis cut its writer's units there (Elements.cut): each
    piece is a group of its own, or joins what it is added to; the writer's rows move as a
    concatenation of its pieces, each piece observed at its channels (Unit.channels). A
    concatenation split at its seams gives its parts back; two summed ones meet part by part, cut at
    both's seams where those differ. Before, all of these froze."""
    torch.manual_seed(0)
    model = cls().eval()
    x = torch.randn(3, 3, 6, 6)
    spec = derive_spec(model, x)
    assert spec.groups == groups and spec.coverage.permutable == spec.coverage.hidden, (spec.groups, str(spec.coverage))
    for writer, pieces in cut.items():
        assert spec.axes[f"{writer}.weight"][0].group in spec.concat
        assert sorted(u.channels for units in spec.units.values() for u in units if u.writer == writer) == pieces
    assert_permutation_keeps_function(model, spec, x)


class ReorderedPieces(torch.nn.Module):
    """A conv's output cut in three and joined back in another order: no entry reads a piece alone."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.fc = torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.Conv2d(8, 5, 1), torch.nn.Linear(5, 4)

    def forward(self, x):
        first, second, third = self.a(x).split([2, 3, 3], 1)
        return self.fc(self.b(torch.relu(torch.cat([second, first, third], 1))).mean((2, 3)))


def test_pieces_read_only_through_concatenations_have_their_sizes():
    """Every entry reads the three pieces together (dpn68's blocks did): their sizes come from the
    channels each is observed at, not from an entry of their own, and permuting them keeps the function."""
    torch.manual_seed(0)
    model = ReorderedPieces().eval()
    x = torch.randn(3, 3, 6, 6)
    spec = derive_spec(model, x)
    assert spec.group_sizes(model.state_dict()) == {"a[0:2]": 2, "a[2:5]": 3, "a[5:8]": 3, "b": 5}
    assert spec.concat[spec.axes["b.weight"][1].group] == ("a[2:5]", "a[0:2]", "a[5:8]")
    assert_permutation_keeps_function(model, spec, x)


@pytest.mark.parametrize("repeat", ["interleave", "expand", "tile"])
def test_a_parameter_per_query_head_moves_in_blocks_of_a_key_heads_copies(repeat):
    """A logit bias per query head (attention sinks: gpt-oss, Granite-SWA) is laid out by the query
    heads, which move only as copies of their key/value head's: where each key's query heads are
    consecutive it moves in blocks of those copies (spec.per_head of the key/value group); tiled
    copies (query head h reads key h mod K) would scatter a block, so q, k and v freeze (as every
    layout did before)."""
    torch.manual_seed(0)
    model = custom_nets.GroupedQueryNet(head_bias=True, repeat=repeat).eval()
    x = torch.randn(3, 3, 8, 8)
    spec = derive_spec(model, x)
    if repeat == "tile":
        assert "k" not in spec.groups and spec.axes["q.weight"][0] is None and spec.axes["o.weight"][1] is None
        assert "a parameter with one entry per query head of grouped-query attention whose heads are tiled" in str(spec.coverage)
    else:
        assert spec.per_head == {"head_bias": (0, "k")} and spec.coverage.permutable == spec.coverage.hidden, str(spec.coverage)
        assert_swaps(model, spec, "k", x, ((2, 3, 0, 1), True), ((1, 0, 2, 3), True), ((2, 1, 0, 3), False))
    assert_permutation_keeps_function(model, spec, x)


def test_values_split_unevenly_from_q_and_k_move_with_whole_heads():
    """LeViT's attention: q, k and a wider v split inside each head; the heads move only whole and
    the output projection's columns move with them in blocks of v's width (spec.per_head)."""
    torch.manual_seed(0)
    model = custom_nets.UnevenQKVNet().eval()
    x = torch.randn(3, 3, 8, 8)
    spec = derive_spec(model, x)
    assert spec.whole_heads == {"qkv"} and spec.per_head == {"proj.weight": (1, "qkv")}, spec
    assert spec.coverage.permutable == spec.coverage.hidden == 6 + 14, str(spec.coverage)
    heads = tuple(range(7, 14)) + tuple(range(7))
    assert_swaps(model, spec, "qkv", x, (heads, True), ((1, 0) + tuple(range(2, 14)), False), ((0, 1, 2, 3, 5, 4) + tuple(range(6, 14)), False))
    assert_permutation_keeps_function(model, spec, x)
    assert "`proj.weight`[1 3 per head]" in alignment_report(spec, model)


def test_talking_heads_mixers_move_with_the_heads():
    """A Linear and a 1x1 conv mixing the attention across heads: each of their weights' two axes
    (and their biases) has one entry per head (spec.per_head) and moves with the heads, which keep
    moving within each head too."""
    torch.manual_seed(0)
    model = custom_nets.TalkingHeadsNet().eval()
    x = torch.randn(3, 3, 8, 8)
    spec = derive_spec(model, x)
    assert spec.coverage.permutable == spec.coverage.hidden == 8 + 8, str(spec.coverage)
    assert spec.per_head == {"mix_logits.weight": ((0, 1), "q"), "mix_logits.bias": (0, "q"), "mix_weights.weight": ((0, 1), "q"),
                             "mix_weights.bias": (0, "q")} and spec.within("q")
    assert_swaps(model, spec, "q", x, ((4, 5, 6, 7, 0, 1, 2, 3), True), ((1, 0, 2, 3, 4, 5, 7, 6), True), ((4, 1, 2, 3, 0, 5, 6, 7), False))
    assert_permutation_keeps_function(model, spec, x)
    spec.check_fits(model)


def test_a_hand_written_spec_must_split_its_heads_evenly():
    from dataclasses import replace

    model = custom_nets.TorchEncoderNet().eval()
    spec = derive_spec(model, torch.randn(2, 3, 4, 4))
    spec.check_fits(model)
    group = "encoder.layers.0.self_attn.heads"
    with pytest.raises(ValueError, match="8 units do not split into 3 heads"):
        replace(spec, heads={**spec.heads, group: ("encoder.layers.0.self_attn", 3)}).check_fits(model)
    with pytest.raises(ValueError, match="has no attribute"):
        replace(spec, heads={**spec.heads, group: ("encoder.layers.0.attn", 2)}).check_fits(model)
    with pytest.raises(ValueError, match="encoder.layers.0.norm1 is neither an nn.MultiheadAttention"):  # written by hand: no coverage
        replace(spec, coverage=None, heads={**spec.heads, group: ("encoder.layers.0.norm1", 2)}).check_fits(model)
    with pytest.raises(ValueError, match="whole heads of encoder.layers.0.linear1: .* is not a group of several heads"):
        replace(spec, whole_heads=frozenset({"encoder.layers.0.linear1"})).check_fits(model)


def test_a_grouped_conv_moves_its_channels_in_whole_blocks_and_within_each():
    """Its inputs and outputs form one group of 2 blocks; the weight's block-local input axis
    follows each block's permutation. Swapping two blocks, or two channels inside one, keeps the
    function; swapping channels of different blocks does not. Unequal inputs and outputs freeze."""
    from dataclasses import replace

    nn = torch.nn
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3, groups=2), nn.ReLU(),
                          nn.Conv2d(8, 6, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 2)).eval()
    x = torch.randn(2, 3, 10, 10)
    spec = derive_spec(model, x)
    group = spec.axes["0.weight"][0].group
    assert spec.axes["2.weight"][0] == Axis(group) and spec.axes["2.weight"][1] is None and spec.local == {"2.weight": (1, group)}
    assert spec.heads == {group: (None, 2)} and [u.writer for u in spec.units[group]] == ["0", "2"]
    assert spec.coverage.permutable == spec.coverage.hidden == 8 + 6, str(spec.coverage)
    assert "(1 group of grouped-conv channels among them)" in str(spec.coverage)
    spec.check_fits(model)
    with pytest.raises(ValueError, match="local axis 1 of 2.weight"):
        replace(spec, local={"2.weight": (1, spec.axes["4.weight"][0].group)}).check_fits(model)
    assert_permutation_keeps_function(model, spec, x)
    state = model.state_dict()
    for perm, same in (([4, 5, 6, 7, 0, 1, 2, 3], True), ([1, 0, 2, 3, 4, 6, 7, 5], True), ([4, 1, 2, 3, 0, 5, 6, 7], False)):
        cps = {group: torch.eye(8, dtype=torch.float64)[perm] / 8}
        if same:
            other = copy.deepcopy(model)
            other.load_state_dict(transport(state, spec, cps))
            with torch.no_grad():
                assert torch.allclose(other(x), model(x), atol=1e-5), perm
        else:
            with pytest.raises(ValueError, match="moves only by whole blocks of 4 of its 8 channels"):
                transport(state, spec, cps)
    wider = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 16, 3, groups=2), nn.ReLU(), nn.Conv2d(16, 6, 3), nn.Flatten(), nn.Linear(96, 2))
    spec = derive_spec(wider, x)
    assert spec.axes["2.weight"][0] is None and spec.axes["0.weight"][0] is None and not spec.local
    assert "grouped conv (groups=2) with 8 inputs, 16 outputs" in spec.coverage.frozen
    assert spec.axes["4.weight"][0] is not None  # the next conv opens a group of its own


@pytest.mark.parametrize("flat", [False, True])
def test_a_concatenation_moves_as_its_parts_do(flat):
    """Two branches and the input joined along channels: each branch keeps its own group, the
    joined axis (read by a conv, and with flat=True flattened C x H x W into a Linear) moves
    piece by piece and the input's channels stay; splitting and joining are inverse."""
    torch.manual_seed(0)
    model = custom_nets.ConcatNet(flat=flat).eval()
    x = torch.randn(4, 3, 6, 6)
    spec = derive_spec(model, x)
    a, b, c = (spec.axes[f"{m}.weight"][0].group for m in "abc")
    assert spec.coverage.permutable == spec.coverage.hidden == 13 and len({a, b, c}) == 3
    (name, parts), = spec.concat.items()
    assert parts == (a, b, 3) and spec.axes["c.weight"][1] == Axis(name) and name not in spec.groups
    assert not flat or spec.axes["side.2.weight"][1] == Axis(name, inner=4)
    plain, state = split_spec(spec), model.state_dict()
    pieces = split_state(spec, state)
    assert set(pieces) == set(plain.axes) and not plain.concat
    assert [plain.axes[f"c.weight#1:{p}"][:2] for p in range(3)] == [(Axis(c), Axis(a)), (Axis(c), Axis(b)), (Axis(c), None)]
    assert pieces["c.weight#1:2"].shape == (6, 3, 3, 3)
    joined = join_state(spec, pieces)
    assert list(joined) == list(state) and all(torch.equal(joined[k], state[k]) for k in state)
    assert_permutation_keeps_function(model, spec, x)
    with pytest.raises(ValueError, match="its parts must be groups of the spec"):
        replace(spec, concat={name: (a, "nowhere", 3)}).check_fits(model)
    with pytest.raises(ValueError, match="concatenation .* has 9 channels, not 10"):
        replace(spec, concat={name: (a, b, 2)}).check_fits(model)


def test_the_alignment_report_names_every_group_concatenation_and_freeze():
    concat, grouped, roll = custom_nets.ConcatNet().eval(), custom_nets.GroupedNet().eval(), custom_nets.RollNet().eval()
    x = torch.randn(2, 3, 6, 6)
    report = alignment_report(derive_spec(concat, x), concat)
    assert "# Alignment: 3 groups, 13 hidden units" in report and "| `c` | 6 | any permutation | `c` | `c.weight`[0], `c.bias`[0], `fc.weight`[1] |" in report
    assert "| `cat:cat` | `a` (4) + `b` (3) + 3 fixed | `c.weight`[1] |" in report
    report = alignment_report(derive_spec(grouped, x), grouped)
    assert "4 grouped-conv blocks: whole, and within each" in report and "`grouped.0.weight`[1 within each block]" in report
    report = alignment_report(derive_spec(roll, x), roll)
    assert "- pooling, resampling, padding, rolling, flipping or a cumulative sum along a channel axis at roll: `a`" in report
    assert "Entries no group indexes (3; averaged as they are): `a.weight`, `a.bias`, `fc.bias`" in report
    swin = custom_nets.RelativeBiasAttentionNet().eval()
    report = alignment_report(derive_spec(swin, torch.randn(4, 3, 2, 2)), swin)
    assert "2 heads: whole, and within each" in report and "`table`[1 one per head]" in report
    assert not any("`table`" in line for line in report.splitlines() if line.startswith("Entries no group"))
    rotary = custom_nets.RotaryAttentionNet().eval()
    assert "| `q` | 8 | 2 heads: whole only (rotary embeddings) |" in alignment_report(derive_spec(rotary, torch.randn(2, 3, 8, 8)), rotary)


def test_a_c_h_w_flatten_expands_the_channel_axis():
    model = custom_nets.SmallNet(in_channels=1, width=5, side=3)
    spec = derive_spec(model, torch.randn(2, 1, 12, 12))
    ax = spec.axes["head.0.weight"][1]
    assert ax is not None and ax.inner == 9 and ax.group == spec.axes["stem.0.weight"][0].group
    assert_permutation_keeps_function(random_stats(model), spec, torch.randn(3, 1, 12, 12))


def test_untraceable_models_and_wrong_inputs_are_one_clear_error():
    with pytest.raises(TraceError, match="cannot be traced by torch.fx") as info:
        derive_spec(custom_nets.Untraceable(), torch.randn(2, 3, 4, 4))
    assert "\n" not in str(info.value)
    for model in (custom_nets.SmallNet(in_channels=1), custom_nets.ShapeBranchNet(in_channels=1)):  # plain, shape-specialised
        with pytest.raises(TraceError, match="give example inputs of the shape the model expects"):
            derive_spec(model, torch.randn(2, 3, 12, 12))
    for python_assert in (True, False):  # an assert with no message fails on the inputs, not the tracer
        model = custom_nets.SizeCheckNet(python_assert=python_assert)
        assert len(derive_spec(model, torch.randn(2, 3, 8, 8)).groups) == 0
        with pytest.raises(TraceError, match=r"running SizeCheckNet on the example inputs failed \(AssertionError[):]"):
            derive_spec(model, torch.randn(2, 3, 6, 6))


def test_custom_models_build_through_the_registry_with_the_dataset_sizes(monkeypatch):
    cfg = ModelConfig("custom", target="tests.custom_nets.SmallNet", kwargs={"width": 6})
    model = build_model(cfg, (1, 12, 12), 7)
    assert model.head[-1].out_features == 7 and model.stem[0].in_channels == 1 and model.stem[0].out_channels == 6
    assert len(model_spec(cfg, (1, 12, 12), 7).groups) == 3
    with pytest.raises(FusionctlError, match="cannot import model.target=tests.custom_nets.Nope"):
        build_model(ModelConfig("custom", target="tests.custom_nets.Nope"), (1, 12, 12), 7)
    with pytest.raises(FusionctlError, match="cannot be traced"):
        model_spec(ModelConfig("custom", target="tests.custom_nets.Untraceable"), (3, 4, 4), 2)
    if importlib.util.find_spec("timm"):  # model=timm: classes and input channels from the dataset, small images resized up
        model = build_model(ModelConfig("timm", arch="resnet18"), (1, 12, 12), 7)
        assert model(torch.randn(2, 1, 12, 12)).shape == (2, 7) and model.size == [32, 32]
        spec = model_spec(ModelConfig("timm", arch="resnet18"), (1, 12, 12), 7)
        assert spec.coverage.permutable == spec.coverage.hidden == 2880
    monkeypatch.setitem(sys.modules, "timm", None)  # as where timm is not installed
    with pytest.raises(FusionctlError, match=r"model=timm needs the timm package: .venv/bin/pip install timm"):
        build_model(ModelConfig("timm", arch="resnet18"), (1, 12, 12), 7)


def test_a_sum_over_heads_freezes_them():
    """Summing over heads mixes channels that different within-head permutations would order apart."""

    class HeadSum(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.o = torch.nn.Linear(3, 8), torch.nn.Linear(4, 2)

        def forward(self, x):
            return self.o(torch.einsum("bhd->bd", self.a(x).reshape(x.shape[0], 2, 4)))

    spec = derive_spec(HeadSum(), torch.randn(2, 3))
    assert spec.coverage.permutable == 0 and "a reduction over heads" in spec.coverage.frozen
