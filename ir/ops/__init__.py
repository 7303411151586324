"""Importing this package registers every IR op."""

from . import constant, extern, layout, matmul, pointwise, reduction  # noqa: F401
