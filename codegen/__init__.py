"""Codegen: IR node groups -> Triton kernel source, one emitter per kernel kind, cached by hash."""

from .conv import ConvEpilogue, conv_args, emit_conv
from .kernel import Kernel, KernelSpec, generated_kernels
from .matmul import MatmulEpilogue, emit_matmul, matmul_args, matmul_group_args
from .pointwise import PointwiseGroup, emit_pointwise, pointwise_args
from .reduction import emit_reduction, reduction_args
from .row import RowLayout, emit_row, row_checked, row_layout, row_load_strides, row_params
from .scatter import emit_scatter, scatter_args

__all__ = [
    "ConvEpilogue", "conv_args", "emit_conv",
    "Kernel", "KernelSpec", "generated_kernels", "PointwiseGroup", "emit_pointwise", "pointwise_args",
    "emit_reduction", "reduction_args", "emit_matmul", "matmul_args", "MatmulEpilogue", "matmul_group_args",
    "RowLayout", "emit_row", "row_checked", "row_layout", "row_load_strides", "row_params",
    "emit_scatter", "scatter_args",
]
