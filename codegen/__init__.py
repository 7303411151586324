"""Codegen: IR node groups -> Triton kernel source, one emitter per kernel kind, cached by hash."""

from .kernel import Kernel, KernelSpec, generated_kernels
from .matmul import emit_matmul, matmul_args
from .pointwise import PointwiseGroup, emit_pointwise, pointwise_args
from .reduction import emit_reduction, reduction_args

__all__ = [
    "Kernel", "KernelSpec", "generated_kernels", "PointwiseGroup", "emit_pointwise", "pointwise_args",
    "emit_reduction", "reduction_args", "emit_matmul", "matmul_args",
]
