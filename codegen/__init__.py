"""Codegen: IR node groups -> Triton kernel source, one emitter per kernel kind, cached by hash."""

from .kernel import Kernel, KernelSpec, generated_kernels
from .matmul import MatmulEpilogue, emit_matmul, matmul_args, matmul_group_args
from .pointwise import PointwiseGroup, emit_pointwise, pointwise_args
from .reduction import emit_reduction, reduction_args
from .row import RowLayout, emit_row, row_layout, row_load_strides, row_params

__all__ = [
    "Kernel", "KernelSpec", "generated_kernels", "PointwiseGroup", "emit_pointwise", "pointwise_args",
    "emit_reduction", "reduction_args", "emit_matmul", "matmul_args", "MatmulEpilogue", "matmul_group_args",
    "RowLayout", "emit_row", "row_layout", "row_load_strides", "row_params",
]
