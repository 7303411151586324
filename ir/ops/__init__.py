"""Importing this package registers every IR op."""

from . import constant, extern, layout, matmul, pointwise, random, reduction  # noqa: F401
