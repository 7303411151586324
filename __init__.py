"""ember: a Triton-based compiler for PyTorch programs.

    sg = ember.trace(fn_or_module, *example_args)   # one static graph; print(sg) shows the IR
    f = ember.compile(fn_or_module)                  # traces per input signature, then reuses
"""

__version__ = "0.1.0"

from . import ir, optim  # noqa: E402,F401
from .api.artifact import ArtifactError  # noqa: E402,F401
from .api.compiled import CompiledFunction, compile
from .api.custom_op import CustomOp, custom_op  # noqa: E402,F401
from .api.distributed import DDPError, DistributedStep  # noqa: E402,F401
from .api.dynamo import register as _register_dynamo_backend  # noqa: E402
from .api.eager import EagerStats, clear_eager_cache, eager, eager_stats, reset_eager_stats  # noqa: E402,F401
from .api.explain import explain  # noqa: E402,F401
from .api.export import export_onnx  # noqa: E402,F401
from .api.load import load  # noqa: E402,F401
from .api.module import CompiledModule  # noqa: E402,F401
from .api.save import save  # noqa: E402,F401
from .api.static import StaticGraph, trace  # noqa: E402,F401
from .api.train import CompiledStep, compile_step  # noqa: E402,F401
from .codegen.onnx import OnnxExportError  # noqa: E402,F401
from .codegen.source_cache import clear_cache  # noqa: E402,F401
from .frontend.capture import CaptureError  # noqa: E402,F401

_register_dynamo_backend()  # torch.compile(model, backend="ember"); also an entry point in pyproject.toml

__all__ = ["ir", "optim", "trace", "compile", "compile_step", "CompiledStep", "explain",
           "StaticGraph", "CompiledFunction", "CompiledModule", "CaptureError", "clear_cache",
           "eager", "eager_stats", "reset_eager_stats", "clear_eager_cache", "EagerStats",
           "custom_op", "CustomOp", "save", "load", "ArtifactError",
           "export_onnx", "OnnxExportError", "DDPError", "DistributedStep"]
