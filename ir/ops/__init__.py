"""Importing this package registers every IR op."""

from . import constant, extern, gradient, layout, matmul, pointwise, random, reduction  # noqa: F401
