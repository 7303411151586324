"""The IR on its own: building, printing/parsing, verifying, and the reference interpreter."""

import pytest
import torch

from ember.ir import Graph, Node, ParseError, TensorType, VerificationError, evaluate, parse_graph, verify
from ember.passes import PIPELINE, run_pipeline

f32 = torch.float32


def roundtrip(g: Graph) -> Graph:
    text = str(g)
    g2 = parse_graph(text)
    assert str(g2) == text
    verify(g2)
    return g2


def small_graph() -> Graph:
    g = Graph()
    x = g.add_input(TensorType((4, 8), f32), "x")
    w = g.add_input(TensorType((8, 3), f32), "w")
    m = g.add("matmul", [x, w])
    s = g.add("amax", [m], dims=(1,), keepdim=True)
    e = g.add("exp", [g.add("sub", [m, s])])
    h = g.add("convert", [e], dtype=torch.float16)
    c = g.add("clamp", [x], min=-0.5, max=float("inf"))
    n = g.add("full", [], shape=(), value=float("nan"), dtype=f32)
    ext = g.add("extern", [x], target="aten.cumsum.default", args=(("__input__", 0), 1))
    g.set_outputs([h, c, n, ext])
    return g


def test_printer_shows_one_line_per_node():
    g = small_graph()
    text = str(g)
    assert text.splitlines()[0] == "graph(%x: f32[4, 8], %w: f32[8, 3]) {"
    assert "%0: f32[4, 3] = matmul(%x, %w)" in text
    assert "{dims=(1,), keepdim=True}" in text
    assert len(text.splitlines()) == len(g.nodes) + 3


def test_roundtrip_preserves_semantics():
    g = small_graph()
    g2 = roundtrip(g)
    x, w = torch.randn(4, 8), torch.randn(8, 3)
    for a, b in zip(evaluate(g, x, w), evaluate(g2, x, w)):
        torch.testing.assert_close(a, b, equal_nan=True)


def test_roundtrip_multi_output_and_special_literals():
    text = """graph(%a: f32[2, 5]) {
  %0: f32[2, 5], %1: i64[2, 5] = extern(%a) {target='aten.sort.default', args=(('__input__', 0), -1, False)}
  %2: f32[2, 5] = clamp(%0) {min=-inf, max=1e-05}
  %3: i64[5] = arange() {start=0, step=1, length=5, dtype=i64}
  return (%2, %1, %3)
}"""
    g = parse_graph(text)
    assert str(g) == text
    a = torch.randn(2, 5)
    out, idx, ar = evaluate(verify(g), a)
    torch.testing.assert_close(out, a.sort(-1).values.clamp(max=1e-5))
    torch.testing.assert_close(idx, a.sort(-1).indices)
    torch.testing.assert_close(ar, torch.arange(5))


@pytest.mark.parametrize("text, message", [
    ("graph(%a: f32[2]) {\n  %0: f32[2] = exp(%b)\n  return (%0)\n}", "undefined"),
    ("graph(%a: f32[2]) {\n  %0: f32[2] = exp(%a) {k=foo()}\n  return (%0)\n}", "attribute"),
    ("graph(%a: q9[2]) {\n  return (%a)\n}", "dtype"),
    ("graph(%a: f32[2]) {\n  return (%z)\n}", "undefined"),
])
def test_parser_rejects_malformed_text(text, message):
    with pytest.raises(ParseError, match=message):
        parse_graph(text)


def _broken(kind: str) -> Graph:
    g = Graph()
    x = g.add_input(TensorType((4, 8), f32), "x")
    y = g.add("exp", [x])
    if kind == "wrong type":
        g.nodes.append(Node("neg", [y], {}, [TensorType((4, 9), f32)]))
    elif kind == "use before def":
        late = Node("neg", [x], {}, [TensorType((4, 8), f32)])
        g.nodes.insert(0, Node("abs", [late.out], {}, [TensorType((4, 8), f32)]))
        g.nodes.append(late)
    elif kind == "wrong arity":
        g.nodes.append(Node("exp", [y, y], {}, [TensorType((4, 8), f32)]))
    elif kind == "unknown op":
        g.nodes.append(Node("frobnicate", [y], {}, [TensorType((4, 8), f32)]))
    elif kind == "bad attrs":
        g.nodes.append(Node("sum", [y], {"dims": (5,), "keepdim": False}, [TensorType((4,), f32)]))
    elif kind == "mixed dtypes":
        i = g.add_input(TensorType((4, 8), torch.int32), "i")
        g.nodes.append(Node("add", [y, i], {}, [TensorType((4, 8), f32)]))
    elif kind == "undefined output":
        other = Node("neg", [x], {}, [TensorType((4, 8), f32)])
        g.set_outputs([other.out])
        return g
    g.set_outputs([g.nodes[-1].outputs[0]])
    return g


@pytest.mark.parametrize("kind, message", [
    ("wrong type", "type rule gives"),
    ("use before def", "not defined before"),
    ("unknown op", "unknown op"),
    ("wrong arity", "takes 1 input"),
    ("bad attrs", "dims"),
    ("mixed dtypes", "one dtype"),
    ("undefined output", "not defined"),
])
def test_verifier_rejects_malformed_graphs(kind, message):
    with pytest.raises(VerificationError, match=message):
        verify(_broken(kind))


def test_type_rules_reject_bad_ops_when_building():
    g = Graph()
    a = g.add_input(TensorType((3, 4), f32))
    b = g.add_input(TensorType((5, 4), f32))
    with pytest.raises(ValueError, match="broadcast"):
        g.add("add", [a, b])
    with pytest.raises(ValueError, match="contraction"):
        g.add("matmul", [a, b])
    with pytest.raises(ValueError, match="reshape"):
        g.add("reshape", [a], shape=(5,))


@pytest.mark.parametrize("op, dims, keepdim, correction", [
    ("mean", (1,), False, None), ("mean", (0, 2), True, None),
    ("var", (1,), False, 1), ("var", (0, 1, 2), True, 0), ("std", (2,), False, 1), ("std", (0, 2), True, 2),
])
def test_composites_decompose_to_primitives_with_same_values(op, dims, keepdim, correction):
    g = Graph()
    x = g.add_input(TensorType((3, 5, 7), torch.float64), "x")
    attrs = {"dims": dims, "keepdim": keepdim}
    if correction is not None:
        attrs["correction"] = correction
    g.set_outputs([g.add(op, [x], **attrs)])
    lowered = run_pipeline(g).graph
    assert all(n.op not in ("mean", "var", "std") for n in lowered.nodes)
    roundtrip(lowered)
    a = torch.randn(3, 5, 7, dtype=torch.float64)
    ref = getattr(torch, op)(a, dim=dims, keepdim=keepdim, **({} if correction is None else {"correction": correction}))
    torch.testing.assert_close(evaluate(g, a)[0], ref)
    torch.testing.assert_close(evaluate(lowered, a)[0], ref)


def test_pipeline_keeps_snapshots_and_removes_dead_code():
    g = Graph()
    x = g.add_input(TensorType((4,), f32), "x")
    g.add("exp", [x])  # dead
    g.set_outputs([g.add("mean", [x], dims=(0,), keepdim=False)])
    result = run_pipeline(g)
    assert [name for name, _ in result.snapshots][:2] == ["input", "decompose"]
    assert len(result.snapshots) == len(PIPELINE) + 1
    assert all(n.op != "exp" for n in result.graph.nodes)
    assert "mean" in result.snapshots[0][1] and "mean" not in result.snapshots[-1][1]
