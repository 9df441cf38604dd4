"""Hugging Face language models (transformers, a test extra): tiny random ones from scripts/survey_hf.py
trace fully, keep their function under every traced permutation, and fuse with permuted copies
of themselves back to themselves, so a change in the tracer or in transformers shows here."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

import fusionctl
from fusionctl.fusion.spec_check import check_permutation
from tests.helpers import needs_transformers_torch
from tests.test_api import permuted_copy

needs_transformers_torch()
_SURVEY = importlib.util.spec_from_file_location("survey_hf", Path(__file__).parents[1] / "scripts" / "survey_hf.py")
survey_hf = importlib.util.module_from_spec(_SURVEY)
_SURVEY.loader.exec_module(survey_hf)

# attention kinds: grouped key/value heads with rotary positions (llama, mistral, qwen2), sliding windows and
# soft-capping (gemma2), a fused qkv split in three (phi3), learned positions and Conv1D (gpt2), partial rotary
# and a packed per-head qkv (gpt_neox); mixtures of experts with a router (mixtral, qwen3_moe)
ARCHS = ["llama", "mistral", "qwen2", "gemma2", "phi3", "gpt2", "gpt_neox", "mixtral", "qwen3_moe"]


def ids(seed=0, n=2, length=8):
    return torch.randint(3, 100, (n, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("arch", ARCHS)
def test_a_tiny_hugging_face_lm_traces_fully_and_keeps_its_function_under_every_permutation(arch):
    model = survey_hf.tiny_model(arch)
    x = ids()
    spec = fusionctl.derive_spec(model, x)
    assert spec.coverage.permutable == spec.coverage.hidden > 0, str(spec.coverage)
    check = check_permutation(model, spec, x)
    assert not check.skipped and not check.wrong, str(check)


@pytest.mark.parametrize("arch", ["llama", "gpt2", "mixtral", "gpt_oss"])
def test_a_hugging_face_lm_fused_with_its_permuted_copy_returns_its_function(arch):
    """Next-token labels per position (the shifted pairs), the output a CausalLMOutput object. The
    mixtures' experts move too; activation matching matches them and their hidden units (no module
    outputs either) on their weights, in rounds, since each group's cost reads the other's coupling."""
    model = survey_hf.tiny_model(arch)
    seqs = ids(1, n=24, length=9)
    data = [(seqs[i:i + 8, :-1], seqs[i:i + 8, 1:]) for i in range(0, 24, 8)]
    x = data[0][0]
    other = permuted_copy(model, x)
    assert any(not torch.equal(a, b) for a, b in zip(other.state_dict().values(), model.state_dict().values()))
    with torch.no_grad():
        for method in ("wb", "wm", "am"):
            fused = fusionctl.fuse_models([model, other], method=method, data=data)
            assert torch.allclose(fused(x).logits, model(x).logits, atol=1e-4), method


def test_hugging_faces_eager_expert_loop_is_refused_with_the_setting_that_traces_the_same_mixture():
    """Where torch has no grouped matmul, Hugging Face runs a mixture's experts as a loop over those a batch
    uses, which fx cannot follow: the error names the setting whose form it traces (experts moved too)."""
    model, x = survey_hf.tiny_model("mixtral"), ids()
    model.config._experts_implementation = "eager"
    with pytest.raises(fusionctl.FusionctlError, match='set model.config._experts_implementation = "batched_mm"'):
        fusionctl.derive_spec(model, x)
    model.config._experts_implementation = "batched_mm"
    spec = fusionctl.derive_spec(model, x)
    assert spec.coverage.permutable == spec.coverage.hidden > 0 and "experts of 2 mixtures" in str(spec.coverage), str(spec.coverage)
    check = check_permutation(model, spec, x)
    assert not check.skipped and not check.wrong, str(check)
