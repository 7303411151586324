"""PyTorch -> IR. Importing the package installs the VJP of `extern` calls (extern_vjp.py)."""

from . import extern_vjp  # noqa: F401
