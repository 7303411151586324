"""`ember.export_onnx` (api/export.py, codegen/onnx.py, each op's `onnx` rule): the exported model run
in onnxruntime against eager PyTorch on fresh random inputs (not the example's).

- Every model of the zoo (tests/zoo.py) in eval mode, forward only: float32 chain tolerance
  (testing.CHAIN_TOLERANCES), as the zoo's own tests; onnxruntime sums in another order than torch.
- Every op whose registry entry has an `onnx` rule, on the samples of its declared `domains` (as
  tests/test_registry.py draws them), as a one-node graph: against the reference interpreter
  (`ember.ir.evaluate`), exactly for integers and bools, at the one-kernel tolerance for floats
  (testing.TOLERANCES; half types: the rule computes in float32 and rounds once, as kernels do, while
  the reference rounds some ops more often: `prod` after each reduced dim).
- An op without a mapping: `OnnxExportError` naming the op (the torch op of an extern) and the line.
Capture only: no Triton kernel is generated or run here.
"""

from __future__ import annotations

import onnx  # the `onnx` extra (the `test` extra includes it)
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from models import MLP, TransformerBlock
from testing import CHAIN_TOLERANCES, TOLERANCES
from zoo import ZOO

import ember
from ember.codegen.kernel import kernel_count
from ember.codegen.onnx import OPSET, OnnxExportError, to_onnx
from ember.ir import OPS, Graph, TensorType, evaluate
from ember.ir.domains import Domain


def run(model, *inputs: torch.Tensor) -> list[torch.Tensor]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = {i.name: x.numpy() for i, x in zip(session.get_inputs(), inputs, strict=True)}
    return [torch.from_numpy(y) for y in session.run(None, feeds)]


def assert_runs_like_eager(exported, model, x: torch.Tensor) -> None:
    """The exported model in onnxruntime against `model` in eager on `x`, at the chain tolerance."""
    (y,) = run(exported, x)
    with torch.no_grad():
        ref = model(x)
    rtol, atol = CHAIN_TOLERANCES[x.dtype if x.is_floating_point() else torch.float32]
    torch.testing.assert_close(y, ref, rtol=rtol, atol=atol)


@pytest.mark.parametrize("name", sorted(ZOO))
def test_zoo_model_runs_in_onnxruntime_like_eager(name, tmp_path):
    entry = ZOO[name]
    model = entry.make().eval()
    x, _ = entry.batch()
    path = tmp_path / f"{name}.onnx"
    kernels = kernel_count()
    ember.export_onnx(model, path, x)
    assert kernel_count() == kernels  # capture and passes only: no Triton kernel generated
    exported = onnx.load(path)
    assert exported.opset_import[0].version == OPSET >= 17
    # the weights travel as initializers; the one model input is the forward's argument
    assert [i.name for i in exported.graph.input] == ["idx" if name in ("gpt", "llama") else "x"]
    names = {t.name for t in exported.graph.initializer}
    assert {"p_" + n.replace(".", "_") for n, _ in model.named_parameters()} <= names
    for _ in range(2):  # fresh batches, not the example
        assert_runs_like_eager(exported, model, entry.batch()[0])


@pytest.mark.parametrize("make,shape", [(MLP, (5, 8)), (lambda: TransformerBlock(causal=True, classes=3), (2, 6, 16))],
                         ids=["mlp", "transformer_block"])
def test_shared_models_like_eager(make, shape):
    """tests/models.py: an MLP, and a block with an explicit causal softmax(q k^T) v (a row kernel
    in ember, ReduceMax / Exp / ReduceSum here) and a mean-pooled head."""
    model = make().eval()
    exported = ember.export_onnx(model, None, torch.randn(shape))
    assert_runs_like_eager(exported, model, torch.randn(shape))


def test_graph_is_readable_and_attention_is_one_ir_node():
    model = ZOO["gpt"].make().eval()
    x, _ = ZOO["gpt"].batch()
    exported = ember.export_onnx(model, None, x)
    ops = {n.name.split("/")[0] for n in exported.graph.node}
    assert {"attention", "matmul", "index", "output"} <= ops  # node names carry the IR op
    values = {o for n in exported.graph.node for o in n.output}
    assert "output" in values and all(n.name.split("/")[1] in values for n in exported.graph.node)


# -- op rules -----------------------------------------------------------------------------------------

F32, F16, I32, I64, B = torch.float32, torch.float16, torch.int32, torch.int64, torch.bool
SHAPES = {0: (), 1: ((6, 8),), 2: ((3, 1, 8), (4, 8)), 3: ((4, 1), (4, 8), (8,))}  # test_registry's
DTYPES = (F32, F16, I32, I64, B)  # onnxruntime's CPU kernels cover these; others go through the same rules


def _shapes(op: str, domain: Domain) -> tuple:
    return domain.shapes if domain.shapes is not None else SHAPES[OPS[op].arity]


def _cases() -> list:
    cases = []
    for name, op in sorted(OPS.items()):
        if op.onnx is None:
            continue
        for k, domain in enumerate(op.domains):
            for d in domain.dtypes:
                if d in DTYPES:
                    cases.append(pytest.param(name, k, d, id=f"{name}-{k}-{str(d)[6:]}"))
    return cases


@pytest.mark.parametrize("op,k,dtype", _cases())
def test_op_rule_matches_the_reference(op, k, dtype):
    domain = OPS[op].domains[k]
    shapes = _shapes(op, domain)
    g = Graph()
    xs = [g.add_input(TensorType(s, domain.input_dtype(i, dtype)), f"x{i}") for i, s in enumerate(shapes)]
    outs = g.add(op, xs, **domain.attrs_for(dtype))
    outs = outs if isinstance(outs, list) else [outs]
    # numpy has no bfloat16: such a result leaves the model as float32 (exactly)
    g.set_outputs([g.add("convert", [v], dtype=F32) if v.dtype == torch.bfloat16 else v for v in outs])
    inputs = [domain.sample(i, s, dtype) for i, s in enumerate(shapes)]
    expected = evaluate(g, *inputs)
    got = run(to_onnx(g), *inputs)
    for y, ref in zip(got, expected, strict=True):
        assert y.dtype == ref.dtype and y.shape == ref.shape, (y.dtype, y.shape, ref.dtype, ref.shape)
        if ref.is_floating_point():
            rtol, atol = TOLERANCES[ref.dtype]  # one kernel against the reference (tests/testing.py)
            torch.testing.assert_close(y, ref, rtol=rtol, atol=atol, equal_nan=True)
        else:
            assert torch.equal(y, ref), (y, ref)


def test_nan_propagates_as_in_torch():
    """onnxruntime's ReduceMax, ArgMax and MaxPool skip NaN; torch's amax/argmax/max_pool (and maximum,
    clamp) keep it; a pooling window without the NaN stays a number."""
    def f(x):
        return (x.amax(1), x.argmax(1), torch.maximum(x, x.flip(1)), x.clamp(-1, 1), x.softmax(1),
                F.max_pool1d(x[None], 2), F.adaptive_avg_pool1d(x[None], 2))  # 5 -> windows [0, 3), [2, 5)

    x = torch.randn(3, 5)
    x[0, 2] = x[2, 0] = float("nan")
    x[1, 3] = float("inf")
    got = run(ember.export_onnx(f, None, x), x)
    for y, ref in zip(got, f(x), strict=True):
        torch.testing.assert_close(y, ref, equal_nan=True)


def _views(x, i, j):
    y = x.permute(2, 0, 1).flip(0)[1:6:2]                      # permute, flip, strided slice
    z = torch.cat([y, y.select(1, 0).unsqueeze(1).expand(-1, 2, -1)], dim=1)
    w = x[i, j]                                                # advanced indexing, two indices
    g = torch.gather(x, 2, (i[:2, None, None] % 4).expand(2, 3, 2))
    return z.reshape(3, -1) @ torch.ones(z.shape[1] * z.shape[2], 4), w.cumsum(0), g, x.argmax(2, keepdim=True)


def test_layout_and_indexing_like_eager():
    x = torch.randn(4, 3, 7)
    i, j = torch.randint(-4, 4, (5,)), torch.randint(0, 3, (5,))
    model = ember.export_onnx(_views, None, x, i, j)
    assert [v.name for v in model.graph.input] == ["x", "i", "j"]
    assert [v.name for v in model.graph.output] == ["output_0", "output_1", "output_2", "output_3"]
    x, i, j = torch.randn(4, 3, 7), torch.randint(-4, 4, (5,)), torch.randint(0, 3, (5,))
    for y, ref in zip(run(model, x, i, j), _views(x, i, j), strict=True):
        torch.testing.assert_close(y, ref, rtol=1.3e-5, atol=1e-5)


def test_pooling_and_interpolation_like_eager():
    def f(x):
        p = F.max_pool2d(x, 3, 2, 1, ceil_mode=True) + F.avg_pool2d(x, 3, 2, 1, ceil_mode=True, count_include_pad=False)
        return F.interpolate(p, size=(5, 7), mode="nearest"), F.adaptive_avg_pool2d(x, (3, 4))

    x = torch.randn(2, 3, 9, 10)
    model = ember.export_onnx(f, None, x)
    x = torch.randn(2, 3, 9, 10)
    for y, ref in zip(run(model, x), f(x), strict=True):
        torch.testing.assert_close(y, ref, rtol=1.3e-5, atol=1e-5)


def test_half_precision_model_like_eager():
    """float16 weights and inputs: each op computes in float32 and rounds, as kernels (and torch's CPU
    kernels) do; chain tolerance, as eager rounds after every op and the model after every node."""
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.LayerNorm(16),
                                torch.nn.Linear(16, 4)).half().eval()
    x = torch.randn(3, 8, dtype=torch.float16)
    exported = ember.export_onnx(model, None, x)
    assert_runs_like_eager(exported, model, torch.randn(3, 8, dtype=torch.float16))


# -- refusals ---------------------------------------------------------------------------------------------


def test_op_without_mapping_is_named_with_the_users_line():
    def f(x):
        y = x.exp()
        return torch.lgamma(y) + 1  # the line the error names

    with pytest.raises(OnnxExportError, match=r"IR op 'lgamma' has no ONNX mapping.*test_onnx.py:\d+: "
                                              r"return torch.lgamma\(y\) \+ 1"):
        ember.export_onnx(f, None, torch.rand(4))


def test_extern_names_the_torch_op():
    def f(x):
        return torch.linalg.inv(x) * 2

    with pytest.raises(OnnxExportError, match=r"IR op 'extern' \(the torch call aten\.linalg_inv_ex.*\) has no ONNX "
                                              r"mapping.*test_onnx.py:\d+: return torch.linalg.inv"):
        ember.export_onnx(f, None, torch.randn(3, 3) + 3 * torch.eye(3))


def test_rule_refusal_is_named():
    """A rule raising NotImplementedError (here: a dtype ONNX has no element type for) names the op."""
    g = Graph()
    x = g.add_input(TensorType((3,), F32), "x")
    g.set_outputs([g.add("convert", [x], dtype=torch.complex64)])
    with pytest.raises(OnnxExportError, match=r"IR op 'convert' cannot be exported: dtype torch.complex64"):
        to_onnx(g)


def test_names_never_clash():
    """Inputs named like the generated value names (`v0`) or outputs (`output`) keep their names."""
    def f(v0, output):
        return v0 * output + 1, v0.exp()

    a, c = torch.randn(3), torch.randn(3)
    model = ember.export_onnx(f, None, a, c)
    assert [i.name for i in model.graph.input] == ["v0", "output"]
    for y, ref in zip(run(model, a, c), f(a, c), strict=True):
        torch.testing.assert_close(y, ref)


def test_train_mode_updates_are_dropped_with_a_warning():
    """A train-mode BatchNorm computes with batch statistics (exported) and updates its running ones
    (not exportable: a warning names them); exporting changes nothing in the module."""
    model = torch.nn.BatchNorm1d(4)
    x = torch.randn(6, 4)
    with pytest.warns(UserWarning, match=r"updates b_running_mean, b_running_var"):
        exported = ember.export_onnx(model, None, x)
    assert torch.equal(model.running_mean, torch.zeros(4)) and int(model.num_batches_tracked) == 0
    (y,) = run(exported, x)
    torch.testing.assert_close(y, model(x).detach(), rtol=1.3e-5, atol=1e-5)
