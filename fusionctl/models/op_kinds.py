"""The ops and modules the tracer (tracer.py) knows, by how they move the axes of their inputs."""

from __future__ import annotations

from torch import nn

UNARY = {"relu", "relu_", "gelu", "silu", "sigmoid", "tanh", "hardswish", "hardsigmoid", "leaky_relu", "elu", "selu", "celu",
         "softplus", "mish", "relu6", "hardtanh", "dropout", "dropout1d", "dropout2d", "alpha_dropout", "stochastic_depth",
         "contiguous", "clone", "detach", "float", "double", "half", "to", "type_as", "neg", "abs", "exp", "square", "sqrt",
         "softmax", "log_softmax", "identity", "cos", "sin", "log", "rsqrt", "reciprocal",
         "erf"}  # element-wise or along one axis: every axis keeps its element
# element-wise over broadcast operands (addcmul, addcdiv, lerp and where take three)
BINARY = {"add", "iadd", "sub", "isub", "mul", "imul", "truediv", "itruediv", "div", "maximum", "minimum", "addcmul", "addcdiv",
          "lerp", "where", "gt", "lt", "ge", "le", "eq", "ne", "masked_fill", "pow", "clamp", "clip", "clamp_min", "clamp_max"}
# new tensors that read only their input's shape, dtype and device (Swin's shifted-window mask starts as x.new_zeros)
CREATION = {"new_zeros", "new_ones", "new_full", "new_empty", "zeros_like", "ones_like", "full_like", "empty_like", "rand_like",
            "randn_like", "arange"}
REDUCE = {"mean", "sum", "amax", "amin", "max", "min", "logsumexp", "std", "var"}
POOL = {"max_pool1d", "max_pool2d", "max_pool3d", "avg_pool1d", "avg_pool2d", "avg_pool3d", "adaptive_avg_pool1d",
        "adaptive_avg_pool2d", "adaptive_avg_pool3d", "adaptive_max_pool1d", "adaptive_max_pool2d", "adaptive_max_pool3d",
        "interpolate", "upsample", "upsample_nearest", "upsample_bilinear"}  # over every axis after (N, C)
MATMUL = {"matmul", "mm", "bmm"}
RESHAPE = {"flatten", "view", "reshape", "squeeze", "unsqueeze", "reshape_as", "view_as"}
PERMUTE = {"permute", "transpose", "movedim", "swapaxes"}
SPLIT = {"chunk", "split", "tensor_split", "split_with_sizes", "unbind"}
PASS_MODULES = (nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Hardswish, nn.Hardsigmoid, nn.LeakyReLU, nn.ELU,
                nn.Mish, nn.Softplus, nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.AlphaDropout, nn.Softmax, nn.LogSoftmax)
POOL_MODULES = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d,
                nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d, nn.Upsample)
PAD_MODULES = (nn.modules.padding._ConstantPadNd, nn.modules.padding._ReflectionPadNd, nn.modules.padding._ReplicationPadNd,
               nn.modules.padding._CircularPadNd)
BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
LAST_AXES_NORMS = (nn.LayerNorm, nn.RMSNorm)
