"""ember: a Triton-based compiler for PyTorch programs."""

__version__ = "0.1.0"

from . import ir  # noqa: E402,F401
