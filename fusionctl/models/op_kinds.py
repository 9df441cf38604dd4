"""The ops and modules the tracer (tracer.py) knows, by how they move the axes of their inputs, and
which axes an op works on."""

from __future__ import annotations

from torch import nn

UNARY = {"relu", "relu_", "gelu", "silu", "sigmoid", "tanh", "hardswish", "hardsigmoid", "leaky_relu", "elu", "selu",
         "celu", "softplus", "mish", "relu6", "hardtanh", "dropout", "dropout1d", "dropout2d", "alpha_dropout",
         "stochastic_depth", "contiguous", "clone", "detach", "float", "double", "half", "to", "type_as", "neg", "abs",
         "exp", "square", "sqrt", "softmax", "log_softmax", "identity", "cos", "sin", "log", "rsqrt", "reciprocal", "erf",
         "type", "expm1", "log1p", "log2", "log10", "exp2", "sign", "tan", "atan", "sinh", "cosh", "asinh", "erfc",
         "logsigmoid", "log_sigmoid", "softsign", "tanhshrink", "hardshrink", "softshrink", "threshold", "_threshold",
         "rrelu", "nan_to_num", "special_expm1", "special_erfc", "floor", "ceil", "round", "trunc"}
# ^ element-wise or along one axis (x.type(dtype) casts): every axis keeps its element
# element-wise over broadcast operands (addcmul, addcdiv, lerp and where take three)
BINARY = {"add", "iadd", "sub", "isub", "mul", "imul", "truediv", "itruediv", "div", "maximum", "minimum", "addcmul", "addcdiv",
          "lerp", "where", "gt", "lt", "ge", "le", "eq", "ne", "masked_fill", "pow", "clamp", "clip", "clamp_min", "clamp_max"}
# new tensors that read only their input's shape, dtype and device (Swin's shifted-window mask starts as x.new_zeros)
CREATION = {"new_zeros", "new_ones", "new_full", "new_empty", "zeros_like", "ones_like", "full_like", "empty_like", "rand_like",
            "randn_like", "arange"}
# of those, the ones constant along every axis: any permutation leaves them as they are
CONSTANT = {"new_zeros", "new_ones", "new_full", "zeros_like", "ones_like", "full_like"}
REDUCE = {"mean", "sum", "amax", "amin", "max", "min", "logsumexp", "std", "var"}
POOL = {"max_pool1d", "max_pool2d", "max_pool3d", "avg_pool1d", "avg_pool2d", "avg_pool3d", "adaptive_avg_pool1d",
        "adaptive_avg_pool2d", "adaptive_avg_pool3d", "adaptive_max_pool1d", "adaptive_max_pool2d", "adaptive_max_pool3d",
        "interpolate", "upsample", "upsample_nearest", "upsample_bilinear"}  # over every axis after (N, C)
MATMUL = {"matmul", "mm", "bmm"}
GROUPED_MM = {"_grouped_mm", "grouped_mm"}  # torch's per-expert matmul (Hugging Face's mixtures of experts)
RESHAPE = {"flatten", "unflatten", "ravel", "view", "reshape", "squeeze", "unsqueeze", "reshape_as", "view_as"}
# along one axis, the positions before each one accumulate (cumsum); like a roll, they mix that axis's entries
CUMULATIVE = {"cumsum", "cumprod", "logcumsumexp"}
PERMUTE = {"permute", "transpose", "movedim", "swapaxes"}
COMPLEX_VIEWS = {"view_as_complex", "view_as_real"}  # a last axis of two reals as one complex number, and back
# steps from a parameter to the weight an op uses, through which its first argument is that parameter
WEIGHT_STEPS = {"getitem", "t", "to", "type", "float", "contiguous", "sub", "mul", "batch_norm", "reshape_as"}
SPLIT = {"chunk", "split", "tensor_split", "split_with_sizes", "unbind"}
PASS_MODULES = (nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Hardswish, nn.Hardsigmoid, nn.LeakyReLU, nn.ELU,
                nn.Mish, nn.Softplus, nn.SELU, nn.CELU, nn.LogSigmoid, nn.Softsign, nn.Tanhshrink, nn.Hardshrink,
                nn.Softshrink, nn.Threshold, nn.RReLU, nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.AlphaDropout,
                nn.Softmax, nn.LogSoftmax)
POOL_MODULES = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d,
                nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d, nn.Upsample)
PAD_MODULES = (nn.modules.padding._ConstantPadNd, nn.modules.padding._ReflectionPadNd, nn.modules.padding._ReplicationPadNd,
               nn.modules.padding._CircularPadNd)
BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
LAST_AXES_NORMS = (nn.LayerNorm, nn.RMSNorm)


def spatial_axes(name: str, ndim: int) -> int:
    """How many trailing axes a pooling or resampling op works on: its 1d/2d/3d, else all after (N, C)."""
    for k in (1, 2, 3):
        if name.lower().endswith(f"{k}d"):
            return k
    return ndim - 2


def shifted_axes(name: str, args: tuple, kwargs: dict, ndim: int) -> list[int]:
    """The axes of roll(input, shifts, dims), flip(input, dims) / x.flip(*dims) or cumsum(input, dim); a roll without
    dims flattens (every axis)."""
    if name in CUMULATIVE:
        return [args[1] if len(args) > 1 else kwargs["dim"]]
    if name == "flip":
        dims = args[1:] or [kwargs["dims"]]
    else:
        dims = args[2:] or ([kwargs["dims"]] if kwargs.get("dims") is not None else [range(ndim)])
    return [d for item in dims for d in (item if isinstance(item, (tuple, list, range)) else [item])]


def transposed_linear(module: nn.Module) -> bool:
    """Hugging Face's Conv1D (GPT-2): a Linear whose weight is stored (in, out), applied by torch.addmm."""
    weight, bias = getattr(module, "weight", None), getattr(module, "bias", None)
    return type(module).__name__ == "Conv1D" and not isinstance(module, nn.Conv1d) and isinstance(weight, nn.Parameter) and \
        weight.dim() == 2 and isinstance(bias, nn.Parameter) and bias.shape == weight.shape[1:]


def weight_out_axis(module: nn.Module) -> int:
    """The axis of a layer's weight that indexes its outputs: 1 for a transposed conv's (in, out, ...)
    and for Hugging Face's Conv1D's (in, out)."""
    return 1 if isinstance(module, nn.modules.conv._ConvTransposeNd) or transposed_linear(module) else 0
