"""Importing this package registers every IR op."""

from . import (  # noqa: F401
    adaptive_pool,
    attention,
    constant,
    conv,
    cross_entropy,
    extern,
    gradient,
    index,
    interpolate,
    layout,
    matmul,
    pointwise,
    random,
    reduction,
    scan,
    scatter,
    search,
    special,
    trig,
    window,
)
