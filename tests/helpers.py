"""Small builders shared by the tests: random models and planted permutations."""

from __future__ import annotations

import pytest
import torch

from fusionctl.config import ModelConfig, solver_settings
from fusionctl.fusion.transport import transport
from fusionctl.models import build_model, model_spec
from tests.custom_nets import HAS_GROUPED_MM, HAS_SDPA_GQA

needs_grouped_mm = pytest.mark.skipif(not HAS_GROUPED_MM, reason="this torch has no F.grouped_mm")
needs_sdpa_gqa = pytest.mark.skipif(not HAS_SDPA_GQA, reason="this torch's scaled_dot_product_attention has no enable_gqa")


def _fx_cats_a_proxied_slice() -> bool:
    """Whether torch.fx traces torch.cat of a slice of chunks (torch 2.4 refuses the proxy as a tensor list)."""
    try:
        torch.fx.symbolic_trace(lambda x: torch.cat(x.chunk(2, 1)[:1], 1))
    except TypeError:
        return False
    return True


needs_fx_cat_of_slices = pytest.mark.skipif(not _fx_cats_a_proxied_slice(), reason="this torch.fx cannot cat a slice of proxied chunks")


def needs_transformers_torch():
    """Skip unless transformers is installed and runs on this torch (transformers 5 needs torch >= 2.6)."""
    transformers = pytest.importorskip("transformers")  # a test extra, not a dependency
    if not transformers.utils.is_torch_available():
        pytest.skip(f"transformers {transformers.__version__} does not run on torch {torch.__version__}", allow_module_level=True)


def mlp(widths, bias=True, seed=0, input_shape=(1, 6, 6), classes=5):
    torch.manual_seed(seed)
    model = build_model(ModelConfig("mlp", list(widths), bias), input_shape, classes)
    # Spread biases away from zero so a wrong bias mapping shows in the outputs.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.5)
    return model.eval()


def permutation_couplings(spec, state, seed=0):
    """Random exact couplings P/n for every group, and the permuted state they undo."""
    g = torch.Generator().manual_seed(seed)
    couplings = {}
    for group, n in spec.group_sizes(state).items():
        perm = torch.randperm(n, generator=g)
        couplings[group] = torch.eye(n, dtype=torch.float64)[perm] / n
    return couplings, transport(state, spec, couplings)


def outputs(model_name, widths, bias, state, x, input_shape=(1, 6, 6), classes=5):
    m = build_model(ModelConfig(model_name, list(widths), bias), input_shape, classes)
    m.load_state_dict(state)
    with torch.no_grad():
        return m.eval()(x).double()


def spec_of(widths, bias):
    return model_spec(ModelConfig("mlp", list(widths), bias))


def settings(name: str = "wb", **values):
    """Method `name`'s settings: its defaults, then `values`."""
    return solver_settings(name, values)
