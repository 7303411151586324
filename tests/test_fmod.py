"""fmod, remainder and floor division are exact in every kernel kind (ir/ops/pointwise.py `_fmod`).

A float `%` is exact only under Triton's interpreter (numpy's fmod); compiled for a GPU it is a
division, a truncation and an fma (fmod(1e10, 3.3) = 323.7, torch's is 0.296). The kernels spell
`(a % b) if INTERP else libdevice.fmod(a, b)`; the planner passes INTERP per launch (True when
interpreted). Here: the interpreter's branch gives torch's bits on magnitudes where the naive
formula is far off, in pointwise, row, multi-tensor and multi-row kernels; the GPU branch is planned
for CUDA launches (its PTX: tests/test_sm90_compile.py).
"""

from __future__ import annotations

import pytest
import torch

import ember
from ember.ir import Graph, TensorType
from ember.runtime import compile_graph, compile_ir

# |a / b| up to 2**100 (the naive a - trunc(a / b) * b loses every bit there), tiny and subnormal
# magnitudes, signs of both operands and of zero
A = [1e10, -1e10, 3e38, -3e38, 7.5, -7.5, 1e-30, -1e-30, 5.0, -0.0, 0.0, 1e-40, 123456.789, 2.0**100]
B = [3.3, 3.3, 7.0, -7.0, -2.0, 2.0, 3e-31, 3e-31, -3.0, 2.0, -2.0, 3e-41, 0.1, 3.0]


def _exact(actual: torch.Tensor, expected: torch.Tensor) -> None:
    torch.testing.assert_close(actual, expected, rtol=0, atol=0, equal_nan=True)
    assert torch.equal(torch.signbit(actual), torch.signbit(expected))  # -0.0 kept


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_pointwise_fmod_remainder_floor_division_are_exact(dtype):
    x = torch.tensor(A, dtype=torch.float64).to(dtype)
    y = torch.tensor(B, dtype=torch.float64).to(dtype)
    y = torch.where(y == 0, torch.ones_like(y), y)  # (a half subnormal divisor may flush to 0)

    def f(x, y):
        return torch.fmod(x, y), torch.remainder(x, y), x % 3.3, torch.div(x, y, rounding_mode="floor")

    got, want = ember.compile(f)(x, y), f(x, y)
    for a, e in zip(got[:3], want[:3]):
        _exact(a, e)
    torch.testing.assert_close(got[3], want[3], rtol=0, atol=0, equal_nan=True)  # (floor division's -0.0: not checked)
    if dtype == torch.float32:  # the case the GPU's naive `%` got wrong
        assert got[0][0].item() == pytest.approx(0.2961, abs=1e-3)


def _graph(shapes: list[tuple[int, ...]], body) -> Graph:
    g = Graph()
    xs = [g.add_input(TensorType(s, torch.float32)) for s in shapes]
    g.set_outputs(body(g, *xs))
    return g


def _inputs(shapes: list[tuple[int, ...]]) -> list[torch.Tensor]:
    # magnitudes up to 1e10 against divisors near 1: the naive formula is off by hundreds there
    return [torch.randn(s) * 10.0 ** torch.randint(-3, 11, s) if s else torch.tensor(3.3) for s in shapes]


def _check(graph: Graph, shapes, kind: str) -> None:
    xs = _inputs(shapes)
    exe = compile_ir(graph)
    assert kind in {s.kernel.kind for s in exe.plan.launches}
    launches = [s for s in exe.plan.launches if s.kernel.kind == kind]
    assert all(s.constexprs["INTERP"] is True for s in launches)  # interpreted: the exact `%`
    want = ember.ir.evaluate(graph, *xs)
    for a, e in zip(exe(xs), want):
        torch.testing.assert_close(a, e, rtol=1e-6, atol=0)  # sums: summation order only
    # planned for a GPU, the same kernels take libdevice's fmod
    cuda = [s for s in compile_graph(graph, device="cuda").plan.launches if s.kernel.kind == kind]
    assert cuda and all(s.constexprs["INTERP"] is False for s in cuda)
    assert all("libdevice.fmod" in s.kernel.source for s in cuda)


def test_row_kernel_remainder_is_exact():
    shapes = [(6, 40), ()]
    g = _graph(shapes, lambda g, x, s: [g.add("sum", [g.add("remainder", [x, s])], dims=(1,), keepdim=False),
                                        g.add("fmod", [x, s])])
    _check(g, shapes, "row")


def test_multi_tensor_kernel_remainder_is_exact():
    shapes = [(4, 5), (7,), ()]
    g = _graph(shapes, lambda g, x, y, s: [g.add("remainder", [v, s]) for v in (x, y)])
    _check(g, shapes, "multi")
    (launch,) = compile_ir(g).plan.launches
    assert [n for n, t in launch.kernel.params if t == "constexpr"].count("INTERP") == 1


def test_multi_row_kernel_shares_one_interp_switch():
    shapes = [(3, 24), (5, 40), ()]
    g = _graph(shapes, lambda g, x, y, s: [g.add("sum", [g.add("fmod", [v, s])], dims=(1,), keepdim=False)
                                           for v in (x, y)])
    _check(g, shapes, "multi")
    (launch,) = compile_ir(g).plan.launches
    assert "elif" in launch.kernel.source or "else:" in launch.kernel.source  # two members, one kernel
    assert [n for n, t in launch.kernel.params if t == "constexpr"].count("INTERP") == 1


def test_kernels_without_fmod_take_no_interp_switch():
    g = _graph([(4, 5)], lambda g, x: [g.add("exp", [x])])
    (launch,) = compile_ir(g).plan.launches
    assert "INTERP" not in dict(launch.kernel.params) and "INTERP" not in launch.constexprs
