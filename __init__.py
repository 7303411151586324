"""ember: a Triton-based compiler for PyTorch programs.

    sg = ember.trace(fn_or_module, *example_args)   # one static graph; print(sg) shows the IR
    f = ember.compile(fn_or_module)                  # traces per input signature, then reuses
"""

__version__ = "0.1.0"

from . import ir  # noqa: E402,F401
from .frontend.api import CompiledFunction, StaticGraph, compile, trace  # noqa: E402,F401
from .frontend.capture import CaptureError  # noqa: E402,F401
from .frontend.explain import explain  # noqa: E402,F401

__all__ = ["ir", "trace", "compile", "explain", "StaticGraph", "CompiledFunction", "CaptureError"]
