"""Passes preserve semantics (checked with the reference interpreter) and do the rewrite they promise."""

import pytest
import torch

from ember.ir import Graph, TensorType, evaluate, parse_graph, verify
from ember.passes.constant_fold import constant_fold
from ember.passes.cse import cse
from ember.passes.dce import dce
from ember.passes.materialize_outputs import materialize_outputs
from ember.passes.simplify import simplify

f32 = torch.float32


def check_same(before: Graph, after: Graph, *args):
    verify(after)
    assert str(parse_graph(str(after))) == str(after)
    for a, b in zip(evaluate(before, *args), evaluate(after, *args)):
        torch.testing.assert_close(a, b, equal_nan=True)


def ops(g: Graph) -> list[str]:
    return [n.op for n in g.nodes]


def scalar(g, value, dtype=f32):
    return g.add("full", [], shape=(), value=value, dtype=dtype)


def test_cse_merges_identical_nodes_but_not_externs():
    g = Graph()
    x = g.add_input(TensorType((3, 4), f32), "x")
    a, b = g.add("exp", [x]), g.add("exp", [x])
    s1 = g.add("sum", [a], dims=(1,), keepdim=False)
    s2 = g.add("sum", [b], dims=(1,), keepdim=False)
    s3 = g.add("sum", [b], dims=(0,), keepdim=False)
    r1 = g.add("extern", [x], target="aten.rand_like.default", args=(("__input__", 0),))
    r2 = g.add("extern", [x], target="aten.rand_like.default", args=(("__input__", 0),))
    g.set_outputs([s1, s2, s3, r1, r2])
    out = dce(cse(g))
    assert ops(out).count("exp") == 1 and ops(out).count("sum") == 2 and ops(out).count("extern") == 2
    assert out.outputs[0] is out.outputs[1]
    x0 = torch.randn(3, 4)
    ref, got = evaluate(g, x0), evaluate(out, x0)
    for i in range(3):
        torch.testing.assert_close(ref[i], got[i])


def test_constant_fold_uses_the_ops_own_rounding():
    g = Graph()
    x = g.add_input(TensorType((5,), torch.float16), "x")
    c = g.add("div", [scalar(g, 1.0, torch.float16), scalar(g, 3.0, torch.float16)])
    c = g.add("add", [c, scalar(g, 2.0, torch.float16)])
    g.set_outputs([g.add("mul", [x, c])])
    out = dce(constant_fold(g))
    assert ops(out) == ["full", "mul"]
    folded = out.nodes[0].attrs["value"]
    assert folded == (torch.tensor(1.0, dtype=torch.float16) / 3 + 2).item()
    check_same(g, out, torch.randn(5, dtype=torch.float16))


def test_simplify_identities_and_layout_chains():
    g = Graph()
    x = g.add_input(TensorType((2, 3, 4), f32), "x")
    y = g.add("mul", [x, scalar(g, 1.0)])
    y = g.add("add", [scalar(g, 0.0), y])
    y = g.add("sub", [y, scalar(g, 0.0)])
    y = g.add("div", [y, scalar(g, 1.0)])
    y = g.add("convert", [y], dtype=f32)
    p = g.add("permute", [g.add("permute", [y], dims=(2, 0, 1))], dims=(1, 2, 0))  # back to identity
    r = g.add("reshape", [g.add("reshape", [p], shape=(6, 4))], shape=(4, 6))
    e = g.add("exp", [r])
    g.set_outputs([e])
    out = dce(simplify(g))
    assert ops(out) == ["reshape", "exp"], str(out)
    check_same(g, out, torch.randn(2, 3, 4))


def test_simplify_keeps_broadcasting_and_non_identities():
    g = Graph()
    x = g.add_input(TensorType((3,), f32), "x")
    ones = g.add("full", [], shape=(2, 3), value=1.0, dtype=f32)
    y = g.add("mul", [x, ones])  # broadcasts to (2, 3): not a no-op
    z = g.add("sub", [scalar(g, 0.0), x])  # 0 - x is negation, not x
    w = g.add("div", [x, scalar(g, 1.0)])
    w = g.add("div", [w, scalar(g, 1.0)])
    q = g.add("div", [g.add("convert", [x], dtype=torch.int32), scalar(g, 1, torch.int32)], rounding_mode="floor")
    g.set_outputs([y, z, w, q])
    out = dce(simplify(g))
    assert ops(out).count("mul") == 1 and ops(out).count("sub") == 1 and ops(out).count("div") == 1
    check_same(g, out, torch.randn(3))


@pytest.mark.parametrize("view", ["none", "permute", "reshape"])
def test_outputs_never_alias_inputs(view):
    g = Graph()
    x = g.add_input(TensorType((2, 3), f32), "x")
    y = g.add("mul", [x, scalar(g, 1.0)])
    if view == "permute":
        y = g.add("permute", [y], dims=(1, 0))
    elif view == "reshape":
        y = g.add("reshape", [y], shape=(6,))
    g.set_outputs([y])
    simplified = dce(simplify(g))
    out = materialize_outputs(simplified)
    assert out.outputs[0].producer is not None and out.outputs[0].producer.op == "copy"
    check_same(g, out, torch.randn(2, 3))
