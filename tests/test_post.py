import pytest
import torch

from fusionctl.config import ModelConfig, OptimConfig
from fusionctl.data import Split, Splits, augment_batch
from fusionctl.fusion.post import (
    aligned_references,
    channel_stats,
    mapped_stats,
    repair,
    reset_bn_stats,
    scoring_step,
    target_stats,
    unit_stats,
)
from fusionctl.fusion.transport import permutation_index, transport
from fusionctl.fusion.units import repair_points, repairable
from fusionctl.errors import FusionctlError
from fusionctl.jobs.post import apply_post, check_repair, repair_biases, with_biases
from fusionctl.models import build_model, model_spec
from fusionctl.ot.solver import perm_coupling
from fusionctl.training import finetune

SHAPE = (3, 8, 8)


def splits(n=200, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *SHAPE, generator=g) * 1.5 + 0.3
    y = torch.randint(0, 4, (n,), generator=g)
    return Splits("toy", Split(x, y), Split(x[:20], y[:20]), Split(x[:50], y[:50]), SHAPE, 4)


def vgg(bn, bias=True, seed=0):
    torch.manual_seed(seed)
    return build_model(ModelConfig("vgg11", [4, 4, 6, 6, 8, 8, 8, 8, 6, 6], bias, bn), SHAPE, 4).eval()


def vgg_spec(bn, bias=True):
    return model_spec(ModelConfig("vgg11", [4, 4, 6, 6, 8, 8, 8, 8, 6, 6], bias, bn))


def test_bn_reset_recomputes_exact_channel_statistics():
    m = vgg(bn=True)
    data = splits()
    reset_bn_stats(m, data.train, batches=2, batch_size=64)
    # the first BatchNorm sees the first conv's outputs on the first 128 training images
    with torch.no_grad():
        conv_out = m.convs[0](data.train.x[:128])
    flat = conv_out.transpose(0, 1).reshape(conv_out.shape[1], -1)
    assert torch.allclose(m.bns[0].running_mean, flat.mean(1), atol=1e-5)
    assert torch.allclose(m.bns[0].running_var, flat.var(1), rtol=1e-3)
    assert m.bns[0].momentum == 0.1, "momentum is restored after the reset"


@pytest.mark.parametrize("bn", [True, False])
def test_repair_sets_every_channel_to_the_target_statistics(bn):
    data = splits()
    x = data.train.x[:128]
    refs = [vgg(bn, seed=s) for s in (1, 2)]
    if bn:
        for r in refs:
            reset_bn_stats(r, data.train)
    merged = vgg(bn, seed=3)
    spec = vgg_spec(bn)
    targets = target_stats(refs, spec, [0.3, 0.7], x)
    direct = [channel_stats(r, repair_points(r, spec), x) for r in refs]
    mu0 = 0.3 * direct[0][0][0] + 0.7 * direct[1][0][0]
    assert torch.allclose(targets[0][0], mu0)
    repair(merged, spec, targets, x)
    after = channel_stats(merged, repair_points(merged, spec), x)
    for (mu, sd), (mu_t, sd_t) in zip(after, targets):
        assert torch.allclose(mu, mu_t, atol=1e-3)
        assert torch.allclose(sd, sd_t, rtol=1e-2, atol=1e-4)


@pytest.mark.parametrize("net", ["UpsamplingNet", "GPT2StyleNet"])
def test_repair_corrects_a_transposed_weight_along_its_output_channels(net):
    """A transposed conv's weight is (in, out, k, k), Hugging Face's Conv1D's (in, out): REPAIR scales their axis 1."""
    from fusionctl.models.trace import derive_spec
    from tests import custom_nets

    torch.manual_seed(0)
    x = splits().train.x[:64]
    make = getattr(custom_nets, net)
    refs, merged = [make().eval() for _ in range(2)], make().eval()
    spec = derive_spec(merged, x[:2])
    targets = target_stats(refs, spec, [0.5, 0.5], x)
    repair(merged, spec, targets, x)
    for (mu, sd), (mu_t, sd_t) in zip(channel_stats(merged, repair_points(merged, spec), x), targets):
        assert torch.allclose(mu, mu_t, atol=1e-4) and torch.allclose(sd, sd_t, rtol=1e-3)


def test_hooks_fire_inside_torchs_fused_transformer_layers_and_repair_reaches_them():
    """In eval mode nn.TransformerEncoderLayer may run one fused kernel that calls none of its Linears
    and norms (torch 2.4 takes it even with hooks attached): probes and REPAIR turn that path off
    while they run, and turn it back on."""
    from fusionctl.fusion.units import capture_outputs
    from fusionctl.models.trace import derive_spec
    from tests import custom_nets

    torch.manual_seed(0)
    x = splits().train.x[:64]
    refs, merged = [custom_nets.TorchEncoderNet().eval() for _ in range(2)], custom_nets.TorchEncoderNet().eval()
    seen = []
    merged.encoder.layers[0].linear1.register_forward_hook(lambda *_: seen.append(torch.backends.mha.get_fastpath_enabled()))
    capture_outputs(merged, [merged.encoder.layers[1].norm2], x)
    assert seen == [False] and torch.backends.mha.get_fastpath_enabled()
    spec = derive_spec(merged, x[:2])
    targets = target_stats(refs, spec, [0.5, 0.5], x)
    seen.clear()
    repair(merged, spec, targets, x)
    assert seen == [False] and torch.backends.mha.get_fastpath_enabled()
    for (mu, sd), (mu_t, sd_t) in zip(channel_stats(merged, repair_points(merged, spec), x), targets):
        assert torch.allclose(mu, mu_t, atol=1e-4) and torch.allclose(sd, sd_t, rtol=1e-3)


def test_repair_of_a_model_with_itself_as_reference_keeps_its_function():
    data = splits()
    cfg = ModelConfig("mlp", [16, 8], False)
    torch.manual_seed(0)
    state = {k: v.detach() for k, v in build_model(cfg, SHAPE, 4).state_dict().items()}
    new_cfg, repaired = apply_post("repair", cfg, state, data, [state, state], [0.5, 0.5], "cpu")
    assert new_cfg.bias and "layers.0.bias" in repaired
    a, b = build_model(cfg, SHAPE, 4), build_model(new_cfg, SHAPE, 4)
    a.load_state_dict(state)
    b.load_state_dict(repaired)
    with torch.no_grad():
        assert torch.allclose(a(data.test.x), b(data.test.x), atol=1e-4)


def random_permutations(spec, state, seed=0, dense=False):
    g = torch.Generator().manual_seed(seed)
    out = {grp: perm_coupling(torch.randperm(n, generator=g).numpy()) for grp, n in spec.group_sizes(state).items()}
    return {grp: p.dense() for grp, p in out.items()} if dense else out


@pytest.mark.parametrize("bn", [True, False])
def test_a_permuted_model_measures_its_units_permuted(bn):
    """What lets the held-out score measure each base once: the statistics of a base transported by
    permutations are the base's statistics, permuted."""
    data, spec, base = splits(), vgg_spec(bn), vgg(bn, seed=1)
    x = data.train.x[:64]
    couplings = random_permutations(spec, base.state_dict())
    moved = vgg(bn, seed=2)
    moved.load_state_dict(transport(base.state_dict(), spec, couplings))
    index = {g: permutation_index(c) for g, c in couplings.items()}
    assert any(not torch.equal(i, torch.arange(len(i))) for i in index.values())
    for (mu, sd), (mu_p, sd_p) in zip(unit_stats(moved, spec, x), mapped_stats(unit_stats(base, spec, x), spec, couplings)):
        assert torch.allclose(mu, mu_p, atol=1e-5) and torch.allclose(sd, sd_p, atol=1e-5)


def test_repair_from_measured_statistics_equals_repair_from_references():
    """apply_post takes a reference as its transported state or as its statistics (bias-free MLP: REPAIR adds biases)."""
    data = splits()
    cfg = ModelConfig("mlp", [16, 8], False)
    spec = model_spec(cfg, SHAPE, 4)
    states = []
    for seed in (0, 1, 2):
        torch.manual_seed(seed)
        states.append({k: v.detach() for k, v in build_model(cfg, SHAPE, 4).state_dict().items()})
    couplings = [random_permutations(spec, s, seed) for s, seed in zip(states[1:], (3, 4))]
    refs = [transport(s, spec, c) for s, c in zip(states[1:], couplings)]
    x = data.train.x[:512]
    stats = [mapped_stats(unit_stats(_module(cfg, s), spec, x), spec, c)
             for s, c in zip(states[1:], couplings)]
    _, from_refs = apply_post("repair", cfg, states[0], data, refs, [0.4, 0.6], "cpu")
    _, from_stats = apply_post("repair", cfg, states[0], data, stats, [0.4, 0.6], "cpu")
    assert from_refs.keys() == from_stats.keys()
    for k in from_refs:
        assert torch.allclose(from_refs[k], from_stats[k], atol=1e-5), k


def test_aligned_references_measure_each_base_once_for_permutations_and_transport_soft_couplings():
    """What REPAIR reads from the bases, in the command and in the Python API: under permutations,
    the statistics a transported base would measure; under soft couplings, the transported bases."""
    data = splits()
    cfg = ModelConfig("mlp", [16, 8], True)
    spec = model_spec(cfg, SHAPE, 4)
    states = [{k: v.detach() for k, v in build_model(cfg, SHAPE, 4).state_dict().items()} for _ in range(2)]
    x = data.train.x[:64]
    built = []
    references = aligned_references(lambda s: built.append(1) or _module(cfg, s), states, spec, x)
    for seeds in ((3, 4), (5, 6)):
        couplings = [random_permutations(spec, s, seed) for s, seed in zip(states, seeds)]
        for stats, s, c in zip(references(couplings), states, couplings):
            for (mu, sd), (mu_t, sd_t) in zip(stats, unit_stats(_module(cfg, transport(s, spec, c)), spec, x)):
                assert torch.allclose(mu, mu_t, atol=1e-5) and torch.allclose(sd, sd_t, atol=1e-5)
    assert len(built) == 2  # one measurement per base, whatever the couplings
    soft = [{g: 0.5 * p + 0.5 * torch.full_like(p, 1.0 / p.numel()) for g, p in random_permutations(spec, s, 7, dense=True).items()} for s in states]
    for ref, s, c in zip(references(soft), states, soft):
        assert all(torch.equal(ref[k], v) for k, v in transport(s, spec, c).items())
    # a fusion keeps the bases it transported for soft couplings, and REPAIR reads those (not computed twice)
    from fusionctl.fusion.engine import fuse_with_couplings

    fused = fuse_with_couplings(spec, states, [0.5, 0.5], soft)
    assert fused.aligned is not None and references(soft, fused.aligned) is fused.aligned
    for kept, fresh in zip(fused.aligned, references(soft)):
        assert all(torch.equal(kept[k], fresh[k]) for k in fresh)
    assert fuse_with_couplings(spec, states, [0.5, 0.5], [random_permutations(spec, s, 8) for s in states]).aligned is None


def _module(cfg, state):
    model = build_model(cfg, SHAPE, 4)
    model.load_state_dict(state)
    return model.eval()


def test_with_biases_adds_zero_biases_only():
    data = splits()
    cfg = ModelConfig("mlp", [5], False)
    state = build_model(cfg, SHAPE, 4).state_dict()
    new_cfg, new = with_biases(cfg, state, data)
    assert new_cfg.bias and torch.equal(new["layers.0.weight"], state["layers.0.weight"])
    assert float(new["layers.0.bias"].abs().sum()) == 0.0


def test_repair_biases_adds_zero_biases_where_a_writer_has_neither_norm_nor_bias():
    data = splits()
    bare = ModelConfig("mlp", [5, 6], False)
    state = build_model(bare, SHAPE, 4).state_dict()
    cfg, new, (ref,) = repair_biases(bare, state, [state], model_spec(bare, SHAPE, 4), data)
    assert cfg.bias and float(new["layers.1.bias"].abs().sum()) == 0.0 and "layers.1.bias" in ref
    biased = ModelConfig("mlp", [5, 6], True)
    state = build_model(biased, SHAPE, 4).state_dict()
    assert repair_biases(biased, state, [], model_spec(biased, SHAPE, 4), data)[1] is state  # nothing to add


def test_repair_on_a_traced_model_names_the_layers_it_leaves_and_refuses_a_model_with_none_to_correct(caplog):
    shape = (1, 8, 8)
    custom = ModelConfig("custom", target="tests.custom_nets.SmallNet", kwargs={"width": 4, "head_bias": False})
    state = build_model(custom, shape, 3).state_dict()
    with caplog.at_level("WARNING"):
        check_repair(["repair"], custom, model_spec(custom, shape, 3), state)
    assert "corrects 3 of 4 layers; head.0 has no bias and no norm after it" in caplog.text
    bare = ModelConfig("custom", target="tests.custom_nets.BareMLP")
    with pytest.raises(FusionctlError, match=r"post=\[repair\] on .* corrects a layer's statistics in its bias or in the norm after it; "
                                             r"no layer of this model has either; fuse without it"):
        check_repair(["bn_reset", "repair"], bare, model_spec(bare, shape, 3), build_model(bare, shape, 3).state_dict())
    check_repair(["bn_reset"], bare, model_spec(bare, shape, 3), build_model(bare, shape, 3).state_dict())  # nothing to say


def test_cost_auto_scores_candidates_after_bn_reset_for_bn_nets_else_after_repair_where_it_can_correct():
    shape = (1, 8, 8)
    assert scoring_step(vgg(True).state_dict(), True) == "bn_reset"
    assert scoring_step(vgg(False).state_dict(), True) == "repair"
    bare = ModelConfig("custom", target="tests.custom_nets.BareMLP")
    state = build_model(bare, shape, 3).state_dict()
    assert not repairable(model_spec(bare, shape, 3), state)
    assert scoring_step(state, repairable(model_spec(bare, shape, 3), state)) is None


def test_repair_corrects_every_layer_with_a_bias_or_norm_and_leaves_the_others_as_they_are():
    """SmallNet's head.0 is a Linear without bias: the three BatchNorms take their corrections, the
    head keeps its weight, and the model runs (a bare point is skipped, not an error)."""
    import fusionctl
    from tests.custom_nets import SmallNet

    data = splits()
    x = data.train.x[:128]
    torch.manual_seed(0)
    refs = [SmallNet(3, 4, width=4, head_bias=False).eval() for _ in range(2)]
    merged = SmallNet(3, 4, width=4, head_bias=False).eval()
    spec = fusionctl.derive_spec(merged, x[:2])
    targets = target_stats(refs, spec, [0.5, 0.5], x)
    head = merged.head[0].weight.clone()
    repair(merged, spec, targets, x)
    after = channel_stats(merged, repair_points(merged, spec), x)
    writers = [u.writer for g in spec.groups for u in spec.units.get(g, ())]
    assert sorted(writers) == ["block.0", "block.3", "head.0", "stem.0"]
    for writer, (mu, sd), (mu_t, sd_t) in zip(writers, after, targets):
        if writer == "head.0":
            assert not torch.allclose(mu, mu_t, atol=1e-3)
        else:
            assert torch.allclose(mu, mu_t, atol=1e-3) and torch.allclose(sd, sd_t, rtol=1e-2, atol=1e-4), writer
    assert torch.equal(merged.head[0].weight, head)


def test_augmentation_crops_and_flips():
    g = torch.Generator().manual_seed(0)
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).reshape(2, 1, 4, 4)
    same = augment_batch(x, g, pad=0)
    for i in range(2):
        assert torch.equal(same[i], x[i]) or torch.equal(same[i], x[i].flip(2))
    out = augment_batch(x, torch.Generator().manual_seed(1), pad=1)
    assert out.shape == x.shape
    # every output is a shifted (and maybe flipped) window of the zero-padded image
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1))
    for i in range(2):
        windows = [padded[i, :, r : r + 4, c : c + 4] for r in range(3) for c in range(3)]
        assert any(torch.equal(out[i], w) or torch.equal(out[i], w.flip(2)) for w in windows)


def test_finetune_lowers_training_loss():
    data = splits()
    m = vgg(bn=True)
    rows = finetune(m, data, OptimConfig(lr=0.05, momentum=0.9), 4, 32, 0, "cpu")
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
