"""The permutation self-check (fusion/spec_check.py): a spec that moves the function is caught,
at random init too (BatchNorm's fresh statistics, zero biases), and a right one passes."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torchvision

import fusionctl
from fusionctl.errors import FusionctlError
from fusionctl.fusion.spec_check import check_permutation
from fusionctl.models.trace import derive_spec
from tests import custom_nets
from tests.helpers import needs_grouped_mm


def test_right_specs_keep_the_function_to_round_off():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
    for model in (torchvision.models.resnet18(num_classes=10), custom_nets.GroupedQueryNet(packed="split"), custom_nets.DualPathNet()):
        check = check_permutation(model.eval(), derive_spec(model, x), x)
        assert not check.wrong and check.change < 1e-13 and 0 < check.roundoff < 1e-12, (type(model).__name__, check)


def test_a_statistic_left_in_place_is_caught_at_random_init():
    """A fresh BatchNorm's running mean is all zeros, so permuting it or not is the same: the
    check's jitter (each entry scaled and shifted) makes it count."""
    torch.manual_seed(0)
    model, x = torchvision.models.resnet18(num_classes=10).eval(), torch.randn(2, 3, 32, 32)
    spec = derive_spec(model, x)
    assert not model.bn1.running_mean.any()
    unmoved = dataclasses.replace(spec, axes={**spec.axes, "bn1.running_mean": (None,)})
    assert check_permutation(model, unmoved, x).wrong


def test_query_rows_left_in_place_are_caught():
    """The packed grouped-query projection as traced before a95e9e9: its query piece read as
    channels no group carries while the heads moved (3-6 % relative change)."""
    model, x = custom_nets.GroupedQueryNet(packed="split").eval(), torch.randn(2, 3, 8, 8)
    spec = derive_spec(model, x)
    name = spec.axes["qkv.weight"][0].group
    before = dataclasses.replace(spec, concat={name: (8,) + spec.concat[name][1:]})
    check = check_permutation(model, before, x)
    assert check.wrong and check.change > 1e-2, check


def test_a_wrong_traced_spec_stops_the_fusion_with_one_line(monkeypatch):
    model, x = custom_nets.GroupedQueryNet(packed="split").eval(), torch.randn(2, 3, 8, 8)
    spec = derive_spec(model, x)
    assert "checked: a random permutation of every group moves the outputs by" in str(fusionctl.derive_spec(model, x).coverage)
    name = spec.axes["qkv.weight"][0].group
    monkeypatch.setattr(fusionctl.api, "_derive_spec", lambda m, i: dataclasses.replace(spec, concat={name: (8,) + spec.concat[name][1:]}))
    with pytest.raises(FusionctlError, match=r"the alignment spec traced from GroupedQueryNet does not keep its function .* tracing bug") as info:
        fusionctl.fuse_models([model, model], example_inputs=x)
    assert "\n" not in str(info.value)


class Float32NormNet(torch.nn.Module):
    """An RMSNorm taken in float32 whatever the input's precision, as Hugging Face's LLaMA does."""

    def __init__(self):
        super().__init__()
        self.a, self.b = torch.nn.Linear(5, 64), torch.nn.Linear(64, 3)

    def forward(self, x):
        h = self.a(x).float()
        h = (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6)).to(x.dtype)
        return self.b(torch.relu(h))


def test_round_off_is_measured_at_the_lowest_precision_the_model_computes_in():
    """Permuting the units reorders the float32 sum inside the norm: a change of float32 round-off
    (1e-8), far above float64's, which is not a wrong permutation."""
    torch.manual_seed(0)
    model, x = Float32NormNet().eval(), torch.randn(2, 5)
    check = check_permutation(model, derive_spec(model, x), x)
    assert check.precision == "float32" and check.roundoff > 1e-7 and not check.wrong, check
    mlp = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    assert check_permutation(mlp, derive_spec(mlp, x), x).precision == "float64"


class NoDoubleNet(torch.nn.Module):
    """An op without float64 (a custom kernel; torch's grouped matmul had none before the check computed it)."""

    def __init__(self):
        super().__init__()
        self.a, self.b = torch.nn.Linear(5, 16), torch.nn.Linear(16, 3)

    def forward(self, x):
        if self.a.weight.dtype == torch.float64:
            raise RuntimeError("Expected mat_a to be Float32, BFloat16 or Float16 matrix, got Double")
        return self.b(torch.relu(self.a(x)))


def test_a_model_without_float64_is_checked_in_its_own_precision():
    torch.manual_seed(0)
    model, x = NoDoubleNet().eval(), torch.randn(2, 5)
    spec = derive_spec(model, x)
    check = check_permutation(model, spec, x)
    assert check.precision == "float32" and not check.wrong, check
    assert check_permutation(model, dataclasses.replace(spec, axes={**spec.axes, "b.weight": (None, None)}), x).wrong


def test_the_check_moves_every_group():
    """Two heads that move only whole stay in place half the time under a random permutation; the
    check draws again until every group moves, so a slip in such a group cannot pass unseen."""
    from fusionctl.fusion.spec_check import _moving_couplings

    model, x = custom_nets.RotaryAttentionNet().eval(), torch.randn(2, 3, 8, 8)
    spec = derive_spec(model, x)
    assert spec.blocks("q") == 2 and not spec.within("q")
    state = model.state_dict()
    for seed in range(8):
        p = _moving_couplings(spec, state, torch.Generator().manual_seed(seed))["q"]
        assert not torch.equal(p.index, torch.arange(len(p.index)))


class NoisyNet(torch.nn.Module):
    """Random in eval mode too (noise injected at inference, MC dropout)."""

    def __init__(self):
        super().__init__()
        self.a, self.b = torch.nn.Linear(5, 16), torch.nn.Linear(16, 3)

    def forward(self, x):
        return self.b(torch.nn.functional.dropout(torch.relu(self.a(x)), 0.5, training=True))


def test_a_forward_random_in_eval_mode_is_not_checked_and_the_callers_random_state_is_kept():
    """Two runs of it differ as much as a wrong permutation would: the check says it cannot judge
    it instead of stopping it as a tracing bug."""
    model, x = NoisyNet().eval(), torch.randn(2, 5)
    spec = derive_spec(model, x)
    torch.manual_seed(3)
    check = check_permutation(model, spec, x)
    after = torch.rand(3)
    assert check.skipped.startswith("two runs on the same inputs differ") and not check.wrong, check
    assert str(check).startswith("not checked: two runs") and torch.equal(after, torch.manual_seed(3) and torch.rand(3))
    assert "not checked: two runs" in str(fusionctl.derive_spec(model, x).coverage)
    assert check_permutation(NoDoubleNet(), derive_spec(model, x), torch.randn(2, 7)).skipped.startswith("the model did not run")


@needs_grouped_mm
def test_grouped_matmuls_of_stacked_experts_are_checked_in_float64():
    """torch's grouped matmul has no float64 kernel; the check computes it by its definition, so a
    mixture of experts is checked to float64 round-off, and an expert's units left in place are caught."""
    model, x = custom_nets.StackedExpertsNet().eval(), torch.randn(2, 3, 8, 8)
    spec = derive_spec(model, x)
    check = check_permutation(model, spec, x)
    assert check.precision == "float64" and check.change < 1e-13 and not check.wrong, check
    down = spec.axes["down_proj"]
    assert check_permutation(model, dataclasses.replace(spec, axes={**spec.axes, "down_proj": (None, down[1], None)}), x).wrong


def test_a_model_returning_a_dataclass_keeps_its_logits_in_place_and_is_checked():
    """A language model's output object (a dataclass holding the logits, not a dict): the logits are the
    model's output, as when returned bare or in a dict, and the check compares the tensors it holds."""
    ids = torch.randint(0, 13, (2, 5), generator=torch.Generator().manual_seed(0))
    specs = {}
    for as_dict in (False, True):
        torch.manual_seed(0)
        model = custom_nets.TokenLMNet(as_dict=as_dict).eval()
        specs[as_dict] = fusionctl.derive_spec(model, ids)
        assert "head" not in specs[as_dict].groups  # the vocabulary never moves
        assert "checked: a random permutation" in str(specs[as_dict].coverage)
    assert str(specs[False].coverage) == str(specs[True].coverage)
    check = check_permutation(custom_nets.TokenLMNet().eval(), specs[False], ids)
    assert not check.skipped and not check.wrong and check.roundoff > 0  # it read the dataclass's logits
