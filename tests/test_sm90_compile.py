"""Generated kernels also compile for a GPU (sm_90), checked on CPU with triton.compile.

The interpreter runs kernels without proving they lower to PTX (e.g. it accepts calls that the
GPU code generator rejects). The default run compiles one kernel of each kind, planned for a GPU
(its launch config): pointwise, half rounding, generator, cat, row (persistent, looped, whole),
reduction (persistent, looped), matmul, matmul with epilogue, 64-bit indexing, multi-tensor and
multi-row (horizontal fusion), conv2d with epilogue and its input and weight gradients. Planned launches
compile with the specialization Triton's JIT gives their arguments (`_jit_specialization`: divisibility
hints, ints equal to 1 as constexprs), so what is checked is what a GPU runs: pointwise and row kernels
load and store vectors and never spill, and a remainder calls libdevice's exact fmod. `-m slow` compiles
a corpus covering every kind x dtype x index width x constexpr mode, and then every kernel that
earlier tests in the session generated (minutes on 2 cores; unspecialized: no argument values are kept).
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import re
import subprocess
import tempfile
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor

import pytest
import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from ember.codegen import generated_kernels
from ember.codegen.kernel import GPU_OPTIONS, record_spec, spec_count
from ember.codegen.source_cache import load_module
from ember.ir import Graph, TensorType, parse_graph
from ember.runtime import compile_graph, compile_ir
from ember.runtime.plan import Buf, BufSpec, Host, LaunchStep

T = TensorType
FLOATS = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
INTS = [torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8, torch.bool]
TARGET = GPUTarget("cuda", 90, 32)
F32 = torch.float32


# -- default: one kernel per kind ---------------------------------------------------------------------

def _graph(inputs: list[tuple[tuple[int, ...], torch.dtype]], body: Callable) -> Graph:
    g = Graph()
    xs = [g.add_input(T(shape, dt)) for shape, dt in inputs]
    out = body(g, *xs)
    g.set_outputs(out if isinstance(out, list) else [out])
    return g


def _softmax(g: Graph, x):
    m = g.add("amax", [x], dims=(1,), keepdim=True)
    ex = g.add("exp", [g.add("sub", [x, m])])
    return g.add("div", [ex, g.add("sum", [ex], dims=(1,), keepdim=True)])


def _cross_entropy_rows(g: Graph, x, t):  # per-row loss: max and sum of exp in one sweep, the target picked
    xf = g.add("convert", [x], dtype=F32)
    m = g.add("amax", [xf], dims=(1,), keepdim=True)
    s = g.add("sum", [g.add("exp", [g.add("sub", [xf, m])])], dims=(1,), keepdim=True)
    picked = g.add("convert", [g.add("pick", [x, g.add("check_index", [t], size=5000, error="target")], dims=(1,))],
                   dtype=F32)
    return g.add("sub", [g.add("add", [m, g.add("log", [s])]), picked])


def _mean_of_row_sums(g: Graph, x):  # a loss: rows reduced, then across rows (one "whole" program)
    s = g.add("sum", [g.add("exp", [x])], dims=(1,), keepdim=False)
    return g.add("div", [g.add("sum", [s], dims=(0,), keepdim=False), g.add("full", [], shape=(), value=4.0,
                                                                              dtype=F32)])


def _variance(g: Graph, x):
    mean = g.add("div", [g.add("sum", [x], dims=(1,), keepdim=True),
                         g.add("full", [], shape=(), value=float(x.shape[1]), dtype=F32)])
    d = g.add("sub", [x, mean])
    return g.add("sum", [g.add("mul", [d, d])], dims=(1,), keepdim=False)


_POOL = dict(kernel_size=(3, 3), stride=(2, 2), padding=(1, 1), dilation=(1, 1), ceil_mode=True)

_CONV = dict(stride=(2, 2), padding=(1, 1), dilation=(1, 1), groups=2)

# kind -> (graph, a fragment its kernel's source must hold: the variant it is)
KINDS: dict[str, tuple[Callable[[], Graph], str]] = {
    "pointwise": (lambda: _graph([((4, 5, 6), F32), ((6,), F32)],
                                 lambda g, x, y: g.add("exp", [g.add("add", [x, y])])), "tl.exp"),
    "pointwise_bf16_rounding": (lambda: _graph([((4, 6), F32)],
                                               lambda g, x: g.add("convert", [x], dtype=torch.bfloat16)),
                                "bitcast=True"),
    "generator": (lambda: _graph([], lambda g: g.add("arange", [], start=0, step=1, length=5, dtype=torch.int64)),
                  "def pw_arange"),
    "cat": (lambda: _graph([((4, 5), F32), ((4, 3), F32)], lambda g, x, y: g.add("cat", [x, y], dim=1)), "def pw_cat"),
    # gathers (ir/ops/index.py): indices loaded, checked (the error flag), the table loaded there
    "gather": (lambda: _graph([((9, 6), torch.float16), ((2, 3), torch.int32), ((3, 6), torch.float16)],
                              lambda g, w, i, p: g.add("add", [g.add("index", [w, i], dim=0, wrap=True), p])),
               "tl.store(err_ptr"),
    # a binary search (ir/ops/search.py), unrolled: each step loads the sequence at its own positions
    "searchsorted": (lambda: _graph([((13,), torch.float16), ((3, 5), torch.float16)], lambda g, s, v: g.add(
        "searchsorted", [s, v], right=True, out_int32=True)), "tl.where(live"),
    # window ops (ir/ops/window.py): max pooling's value and index in one loop, with a relu epilogue;
    # a bilinear backward gather (weights in float32, explicit scales)
    "window": (lambda: _graph([((2, 3, 9, 8), torch.bfloat16)], lambda g, x: [
        g.add("relu", [g.add("max_pool", [x], **_POOL)]), g.add("max_pool_index", [x], **_POOL)]), "tl.where"),
    "window_backward": (lambda: _graph([((2, 3, 5, 9), torch.float16)], lambda g, x: g.add(
        "upsample_linear_backward", [x], output_size=(5, 9), input_size=(3, 4), align_corners=False,
        scales=(1.7, None))), "tl.floor"),
    "row": (lambda: _graph([((3, 24), F32)], _softmax), "tl.reduce"),
    # looped rows (ir/row_sweeps.py): softmax's max and sum in one sweep (online rescaling), a variance
    # by Welford's update (count, mean, M2 per lane), each then combined across lanes
    "row_looped": (lambda: _graph([((3, 5000), F32)], _softmax), "tl.exp(old"),
    "row_looped_welford": (lambda: _graph([((3, 5000), F32)], _variance), "/ tl.maximum("),
    # a column reduction (the kept dim innermost): [BM, BR] tiles with BM along it, looped when R > BR
    "row_column": (lambda: _graph([((600, 96), torch.float16)], lambda g, x: g.add("sum", [x], dims=(0,),
                                                                                keepdim=False)), "for c0 in range"),
    "row_cross_entropy": (lambda: _graph([((3, 5000), torch.bfloat16), ((3, 1), torch.int64)], _cross_entropy_rows),
                          "_r0), mask=rmask & ok"),
    "row_whole": (lambda: _graph([((4, 24), F32)], _mean_of_row_sums), ", 0, tl.standard"),
    "reduction": (lambda: _graph([((6, 50), F32)], lambda g, x: g.add("prod", [x], dims=(1,), keepdim=False)),
                  "def red_prod"),
    "reduction_looped": (lambda: _graph([((3, 2000), F32)], lambda g, x: g.add("argmax", [x], dim=1, keepdim=False)),
                         "for r0 in range"),
    "matmul": (lambda: _graph([((7, 9), F32), ((9, 5), F32)], lambda g, a, b: g.add("matmul", [a, b])), "tl.dot"),
    "matmul_epilogue": (lambda: _graph(
        [((2, 8, 16), torch.float16), ((16, 24), torch.float16), ((24,), torch.float16)],
        lambda g, x, w, b: g.add("gelu", [g.add("add", [g.add("matmul", [x, w]), b])])), "tl.dot"),
    "index_int64": (lambda: _graph([((8, 16), F32)], lambda g, x: g.add("mul", [x, x])), "tl.int64) * "),
    # convolutions (codegen/conv.py): conv2d with a bias + relu epilogue, its input and weight gradients
    "conv_epilogue": (lambda: _graph(
        [((2, 4, 9, 8), torch.float16), ((6, 2, 3, 3), torch.float16), ((6, 1, 1), torch.float16)],
        lambda g, x, w, b: g.add("relu", [g.add("add", [g.add("conv2d", [x, w], **_CONV), b])])), "tl.dot"),
    "conv_input_grad": (lambda: _graph([((2, 6, 5, 4), F32), ((6, 2, 3, 3), F32)], lambda g, ct, w: g.add(
        "conv2d_input_grad", [ct, w], size=(9, 8), **_CONV)), "thc // SH"),
    "conv_weight_grad": (lambda: _graph([((2, 4, 9, 8), F32), ((2, 6, 5, 4), F32)], lambda g, x, ct: g.add(
        "conv2d_weight_grad", [x, ct], kernel=(3, 3), **_CONV)), "tl.dot"),
    # horizontal fusion (codegen/multi.py): independent updates of two shapes in one launch, each program
    # selecting its member; the 0-dim operand one shared pointer, loaded once per program
    "multi": (lambda: _graph([((4, 5), torch.bfloat16), ((7,), torch.bfloat16), ((), F32)], lambda g, x, y, s: [
        g.add("convert", [g.add("mul", [g.add("convert", [v], dtype=F32), s])], dtype=torch.bfloat16)
        for v in (x, y)]), "tl.where(sel, m1_numel"),
    # horizontal fusion of small row groups (codegen/multi_row.py): a persistent softmax, a looped row sum
    # and a whole (loss-like) group, each its own inlined body and tiles, branched on by program id
    "multi_row": (lambda: _graph([((3, 24), F32), ((3, 5000), F32), ((4, 24), F32)], lambda g, x, y, z: [
        _softmax(g, x), g.add("sum", [y], dims=(1,), keepdim=False), _mean_of_row_sums(g, z)]),
        "elif pid < first2:"),
    # a scan kernel with its module-level combine, rows of two blocks (the carried prefix)
    "scan": (lambda: _graph([((2, 5000), torch.float16)], lambda g, x: g.add("cumprod", [x], dim=1)),
             "tl.associative_scan(x, 1, _prod_combine)"),
    # rows that fit a row kernel: the scan is its tile op, with a prologue (passes/fusion.py)
    "scan_in_row": (lambda: _graph([((5, 40), torch.int32)],
                                   lambda g, x: g.add("cumsum", [g.add("mul", [x, x])], dim=0)),
                    "tl.standard._sum_combine)"),
    # (value, index) pairs scanned together: cummax's indices, carried across blocks
    "scan_index": (lambda: _graph([((2, 5000), torch.bfloat16)], lambda g, x: g.add("cummax_index", [x], dim=1)),
                   "tl.associative_scan((x, "),
    # float32 accumulates in float64 (torch's CPU acc_type): float64 exp and log
    "scan_logcumsumexp": (lambda: _graph([((4, 30), F32)], lambda g, x: g.add("logcumsumexp", [x], dim=1)),
                          "_logsumexp_combine)"),
    # flash attention (codegen/attention.py): fp16 forward, causal with grouped-query heads and a
    # boolean mask (online softmax); its backward kernels (dQ with delta, then dK/dV over the group)
    "attention": (lambda: _graph([((2, 4, 40, 64), torch.float16), ((2, 2, 40, 64), torch.float16),
                                  ((2, 2, 40, 64), torch.float16), ((40, 40), torch.bool)],
                                 lambda g, q, k, v, m: g.add("attention", [q, k, v, m], scale=0.125,
                                                             is_causal=True)), "m_safe"),
    "attention_grad_q": (lambda: _graph(
        [((2, 4, 40, 64), torch.bfloat16), ((2, 2, 40, 64), torch.bfloat16), ((2, 2, 40, 64), torch.bfloat16),
         ((2, 4, 40, 64), torch.bfloat16), ((2, 4, 40), F32), ((2, 4, 40, 64), torch.bfloat16)],
        lambda g, q, k, v, o, lse, do: g.add("attention_grad_q", [q, k, v, o, lse, do], scale=0.125,
                                             is_causal=True)), "tl.store(dl_ptr"),
    "attention_grad_kv": (lambda: _graph(
        [((2, 4, 40, 64), torch.bfloat16), ((2, 2, 40, 64), torch.bfloat16), ((2, 2, 40, 64), torch.bfloat16),
         ((2, 4, 40), F32), ((2, 4, 40), F32), ((2, 4, 40, 64), torch.bfloat16)],
        lambda g, q, k, v, lse, delta, do: g.add("attention_grad_kv", [q, k, v, lse, delta, do], scale=0.125,
                                                 is_causal=True)), "for g in range(0, G)"),
    # the deterministic scatter (index_add after its sort): binary searches, then runs summed in order
    "scatter": (lambda: _graph([((4, 11, 3), torch.float16), ((11,), torch.int32), ((11,), torch.int64),
                                ((11,), torch.int32), ((4, 7, 3), torch.float16)],
                               lambda g, s, k, o, i, x: g.add("segment_add", [s, k, o, i, x], dim=1, size=7,
                                                              init=None)),
                "for j in range(0, longest)"),
    # the deterministic write (scatter / index_put after their sort): each run's last source, bfloat16 by bits
    "scatter_write": (lambda: _graph([((4, 11, 3), torch.bfloat16), ((11,), torch.int64), ((11,), torch.int64),
                                      ((11,), torch.int64), ((4, 7, 3), torch.bfloat16)],
                                     lambda g, s, k, o, i, x: g.add("segment_write", [s, k, o, i, x], dim=1, size=7,
                                                                    init=None)),
                      "(lo2 - 1) * ord_st"),
}


def _planned_jobs(plan_steps: list, bufs: list[BufSpec] | None = None) -> list[tuple]:
    """(source, name, signature, constexprs, attrs) of each kernel launch of a plan, specialized as
    Triton's JIT would specialize that launch (`_jit_specialization`); `bufs`: the plan's buffers (a
    pointer into an alias buffer is aligned as its offset makes it; without them every pointer is)."""
    jobs = []
    for step in plan_steps:
        if isinstance(step, LaunchStep):
            args = [a.index if isinstance(a, Buf) else a for a in step.args]
            spec = record_spec(step.kernel, args, step.constexprs)
            aligned = [not isinstance(a, Buf) or bufs is None or _aligned(bufs[a.index]) for a in step.args]
            jobs.append((spec.source, spec.name,
                         *_jit_specialization(spec.jit, spec.signature, dict(spec.constexprs), args, aligned)))
    return jobs


def _aligned(buf: BufSpec) -> bool:
    """Is the buffer's pointer 16-byte aligned? torch's allocations are (to 256 bytes); an alias buffer
    (a slice of another, runtime/cat_slots.py) starts `offset` elements in."""
    return buf.kind != "alias" or buf.offset * torch.empty((), dtype=buf.dtype).element_size() % 16 == 0


def _jit_specialization(fn, signature: dict[str, str], consts: dict, args: list,
                        aligned: list[bool]) -> tuple[dict, dict, dict]:
    """(signature, constexprs, attrs) Triton's JIT compiles a launch with these argument values (its
    `JITFunction._pack_args`, from the same `specialize_impl`): an int equal to 1 becomes a constexpr;
    ints divisible by 16 and 16-byte aligned pointers get `tt.divisibility` 16, which is what lets the
    compiler prove contiguous, aligned blocks and emit vector loads. (ASTSource's `attrs`: parameter
    index path -> [[attribute, value]], as `CUDABackend.parse_attr` makes them.)"""
    from triton.backends.nvidia.compiler import CUDABackend
    from triton.runtime.jit import native_specialize_impl

    signature, consts, attrs = dict(signature), dict(consts), {}
    runtime = [n for n, t in signature.items() if t != "constexpr"]
    assert len(runtime) == len(args), (runtime, args)
    for name, value, align in zip(runtime, args, aligned):
        if signature[name].startswith("*"):  # a buffer (an index here): a tensor at an aligned address
            kind, attr = "ptr", "D" if align else ""
        elif signature[name] in ("fp32", "fp64"):  # a host scalar: annotated, never specialized
            kind, attr = signature[name], ""
        else:
            kind, attr = native_specialize_impl(CUDABackend, value, False, True, True)
        if kind == "constexpr":
            signature[name], consts[name] = "constexpr", value
        elif attr:
            attrs[(fn.arg_names.index(name),)] = CUDABackend.parse_attr(attr)
    return signature, consts, attrs


@pytest.mark.parametrize("kind", list(KINDS))
def test_one_kernel_of_each_kind_compiles_for_sm90(kind, monkeypatch):
    build, fragment = KINDS[kind]
    if kind == "index_int64":  # any index past this takes the 64-bit variant
        monkeypatch.setattr("ember.runtime.plan.INT32_LIMIT", 10)
    g = build()
    assert str(parse_graph(str(g))) == str(g)
    plan = compile_graph(g, device="cuda").plan  # a GPU's launch config; nothing runs
    jobs = _planned_jobs(plan.steps, plan.bufs)
    assert len(jobs) == 1, [j[1] for j in jobs]
    assert fragment in jobs[0][0], jobs[0][0]
    error = _compile_one(jobs[0])
    assert error is None, error


# Host scalars (runtime/plan.py `Host`): an optimizer's hyperparameters, input 0 held on the host,
# reach pointwise, multi-tensor and row kernels as float parameters of their dtype, never loaded.
HOST_KINDS: dict[str, Callable[[torch.dtype], Graph]] = {
    "pointwise": lambda dt: _graph([((3,), dt), ((4, 5), dt)], lambda g, hp, x: g.add(
        "mul", [x, g.add("select", [hp], dim=0, index=1)])),
    "multi": lambda dt: _graph([((3,), dt), ((4, 5), dt), ((7,), dt)], lambda g, hp, x, y: [
        g.add("mul", [v, g.add("select", [hp], dim=0, index=k)]) for k, v in enumerate((x, y))]),
    "row": lambda dt: _graph([((3,), dt), ((3, 24), dt)], lambda g, hp, x: _softmax(
        g, g.add("mul", [x, g.add("select", [hp], dim=0, index=2)]))),
}


@pytest.mark.parametrize("dtype", [F32, torch.float64])
@pytest.mark.parametrize("kind", list(HOST_KINDS))
def test_host_scalars_are_float_parameters_on_sm90(kind, dtype):
    g = HOST_KINDS[kind](dtype)
    plan = compile_ir(g, "cuda", optimize=False, host=frozenset({0})).plan  # nothing runs
    (step,) = plan.launches
    assert not plan.host_pointer and Buf(0) not in step.args
    assert [a.element for a in step.args if isinstance(a, Host)] == ([0, 1] if kind == "multi" else [1 if kind ==
                                                                                                    "pointwise" else 2])
    (job,) = _planned_jobs(plan.steps, plan.bufs)
    name = {F32: "float32", torch.float64: "float64"}[dtype]
    assert f"_val: tl.{name}" in job[0], job[0]
    ptx = _compile(job).asm["ptx"]
    assert re.search(rf"\.param \.f{dtype.itemsize * 8} ", ptx), ptx[:2000]


# split reductions (codegen/row.py `split_plan`): stage 1 (programs per row block and slice, partials)
# and stage 2 (their combine), for a row group and for the reduction kernel's (value, index) pairs
SPLITS: dict[str, Callable[[], Graph]] = {
    "row": lambda: _graph([((8192, 4096), torch.bfloat16)], lambda g, x: g.add("sqrt", [
        g.add("sum", [g.add("mul", [x, x])], dims=(0, 1), keepdim=False)])),
    "reduction": lambda: _graph([((8192, 4096), F32)], lambda g, x: g.add("argmax", [x], dim=None, keepdim=False)),
    "column": lambda: _graph([((65536, 768), F32)], lambda g, x: g.add("sum", [x], dims=(0,), keepdim=False)),
}


@pytest.mark.parametrize("kind", list(SPLITS))
def test_split_reduction_stages_compile_for_sm90(kind):
    plan = compile_graph(SPLITS[kind](), device="cuda").plan  # nothing runs
    jobs = _planned_jobs(plan.steps, plan.bufs)
    assert [s.split_stage for s in plan.launches] == [1, 2]
    assert "c_lo" in jobs[0][0] and "sidx" in jobs[1][0]
    for job in jobs:
        error = _compile_one(job)
        assert error is None, error


def test_gpu_kernels_do_not_contract_floating_point():
    # GPU_OPTIONS (codegen/kernel.py): x * y + z stays a rounded multiply and a rounded add, as the
    # interpreter computes it, not one fma
    g = _graph([((64,), F32)] * 3, lambda g, x, y, z: g.add("add", [g.add("mul", [x, y]), z]))
    (job,) = _planned_jobs(compile_graph(g, device="cuda").plan.steps)
    ptx = _compile(job).asm["ptx"]
    assert "mul.rn.f32" in ptx and "add.rn.f32" in ptx and "fma.rn.f32" not in ptx, ptx


# Memory-bound kernels as a GPU runs them (the JIT's specialization: contiguous, sizes and pointers
# divisible by 16): every global load and store a 64- or 128-bit vector, no local memory (spills).
VECTOR_KINDS: dict[str, Callable[[torch.dtype], Graph]] = {
    "pointwise": lambda dt: _graph([((64, 256), dt), ((256,), dt)],
                                   lambda g, x, y: g.add("exp", [g.add("add", [x, y])])),
    "row": lambda dt: _graph([((64, 256), dt)], _softmax),
    "row_looped": lambda dt: _graph([((64, 6144), dt)], _softmax),  # past ROW_BLOCK_LIMIT, short of a split
}


def _resource_usage(compiled) -> dict[str, int]:
    """The kernel's registers, stack and local memory as ptxas allotted them (`cuobjdump -res-usage`
    on its cubin: spills land in local memory; Triton's own `n_spills` needs a GPU driver)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "kernel.cubin")
        with open(path, "wb") as f:
            f.write(compiled.asm["cubin"])
        out = subprocess.run([triton.knobs.nvidia.cuobjdump.path, "-res-usage", path], capture_output=True,
                             text=True, check=True).stdout
    usage = {k: int(v) for k, v in re.findall(r"\b(REG|STACK|SHARED|LOCAL):(\d+)", out)}
    assert {"REG", "STACK", "LOCAL"} <= set(usage), out
    return usage


@pytest.mark.parametrize("dtype", [F32, torch.float16], ids=str)
@pytest.mark.parametrize("kind", list(VECTOR_KINDS))
def test_specialized_kernels_load_vectors_and_never_spill(kind, dtype):
    plan = compile_graph(VECTOR_KINDS[kind](dtype), device="cuda").plan
    jobs = _planned_jobs(plan.steps, plan.bufs)
    assert jobs and all(job[0].count("tl.load") for job in jobs)
    for job in jobs:
        assert job[4], "no divisibility hints: the test would see what no GPU runs"
        compiled = _compile(job)
        ptx = compiled.asm["ptx"]
        accesses = re.findall(r"\b(?:ld|st)\.global[.\w]*", ptx)
        assert accesses and all(re.search(r"\.v[24]\.", a) for a in accesses), (job[1], sorted(set(accesses)))
        assert ".local" not in ptx
        usage = _resource_usage(compiled)
        assert usage["LOCAL"] == 0 and usage["STACK"] == 0, (job[1], usage)
    if kind == "pointwise" and dtype == F32:  # without the JIT's hints the same kernel loads scalars
        assert "ld.global.v" not in _compile(jobs[0][:4]).asm["ptx"]


@pytest.mark.parametrize("head_dim", [64, 128])
def test_attention_kernels_use_tensor_cores_without_spills(head_dim):
    """The flash kernels (codegen/attention.py) as a GPU plans them for fp16 (GPT's causal attention):
    tensor-core MMAs, everything in registers (the launch config's tiles and warps are chosen so)."""
    g = Graph()
    q, k, v = (g.add_input(T((4, 16, 1024, head_dim), torch.float16)) for _ in range(3))
    out, lse = g.add("attention", [q, k, v], scale=0.125, is_causal=True)
    dq, delta = g.add("attention_grad_q", [q, k, v, out, lse, out], scale=0.125, is_causal=True)
    g.set_outputs([out, dq, *g.add("attention_grad_kv", [q, k, v, lse, delta, out], scale=0.125, is_causal=True)])
    plan = compile_graph(g, device="cuda").plan
    for step, job in zip(plan.launches, _planned_jobs(plan.steps, plan.bufs), strict=True):
        source, name, signature, consts, attrs = job
        fn = getattr(load_module(source), name)
        compiled = triton.compile(ASTSource(fn=fn, signature=signature, constexprs=consts, attrs=attrs), target=TARGET,
                                  options=dict(GPU_OPTIONS, num_warps=step.num_warps))
        assert "mma" in compiled.asm["ptx"], name
        usage = _resource_usage(compiled)
        assert usage["LOCAL"] == 0 and usage["STACK"] == 0, (name, usage)


def test_gpu_fmod_is_libdevice_not_a_division():
    # fmod(1e10, 3.3): a rounded division, truncation and fma give 323.7, libdevice's fmod torch's 0.296
    g = _graph([((256,), F32), ((256,), F32)], lambda g, x, y: g.add("remainder", [x, y]))
    plan = compile_graph(g, device="cuda").plan
    (job,) = _planned_jobs(plan.steps, plan.bufs)
    assert job[3]["INTERP"] is False  # planned for a GPU: the libdevice branch
    ptx = _compile(job).asm["ptx"]
    assert "fmodf" in ptx and "div.rn.f32" not in ptx, ptx
    # the interpreter's spelling (Triton's float `%`), compiled: the inexact sequence this replaces
    naive = _compile((*job[:3], {**job[3], "INTERP": True}, job[4])).asm["ptx"]
    assert "div.rn.f32" in naive and "cvt.rzi.f32.f32" in naive and "fmodf" not in naive


def test_elements_near_int32_take_64_bit_index_math():
    # the last block's masked lanes index past numel: an int32 index there would wrap negative and
    # pass the mask, so a size within a block of 2**31 already plans the 64-bit variant (nothing runs)
    for n, wide in ((2**31 - 4096, True), (2**30, False)):
        g = _graph([((n,), torch.float16)], lambda g, x: g.add("exp", [x]))
        ((source, *_),) = _planned_jobs(compile_graph(g, device="cuda").plan.steps)
        assert ("tl.int64" in source) == wide, source


def test_tuned_matmul_config_compiles_for_sm90_on_tensor_cores_without_spills():
    # 4096^3 fp16 plans the table's large tile (codegen/matmul_configs.py); compiled as the JIT launches
    # it (its specialization, its own warps and stages): Hopper's wgmma, loads pipelined through shared
    # memory (cp.async), the stages' tiles within sm_90's shared memory, no local memory (spills)
    from ember.codegen.matmul_configs import SMEM

    plan = compile_graph(_graph([((4096, 4096), torch.float16)] * 2, lambda g, a, b: g.add("matmul", [a, b])),
                         device="cuda").plan
    (step,) = plan.launches
    (job,) = _planned_jobs(plan.steps, plan.bufs)
    source, name, signature, consts, attrs = job
    assert consts["BM"] >= 128 and consts["BN"] >= 128 and consts["GROUP_M"] > 1 and consts["EVEN_K"] is True
    compiled = triton.compile(ASTSource(fn=getattr(load_module(source), name), signature=signature, constexprs=consts,
                                        attrs=attrs), target=TARGET,
                              options={**GPU_OPTIONS, "num_warps": step.num_warps, "num_stages": step.num_stages})
    ptx = compiled.asm["ptx"]
    assert "wgmma.mma_async" in ptx and "cp.async" in ptx and ".local" not in ptx
    assert compiled.metadata.num_warps == step.num_warps == 8
    assert 0 < compiled.metadata.shared <= SMEM[90]
    usage = _resource_usage(compiled)
    assert usage["LOCAL"] == 0 and usage["STACK"] == 0, usage


# -- slow: the corpus and every kernel of the session ---------------------------------------------------

def _plan(g: Graph, fuse: bool = False) -> None:
    assert str(parse_graph(str(g))) == str(g)
    assert compile_graph(g, fuse=fuse).plan.steps  # planning emits and records every launch; nothing runs


def _corpus_fused() -> None:
    """Fused kernels: row groups (persistent and looped) and matmul epilogues, per float dtype."""
    for dt in FLOATS:
        for cols in (24, 5000):
            g = Graph()
            x, w = g.add_input(T((3, cols), dt)), g.add_input(T((cols,), dt))
            m = g.add("amax", [x], dims=(1,), keepdim=True)
            ex = g.add("exp", [g.add("sub", [x, m])])
            s = g.add("sum", [ex], dims=(1,), keepdim=True)
            sm = g.add("mul", [g.add("div", [ex, s]), w])
            g.set_outputs([sm, g.add("log", [g.add("sum", [ex], dims=(1,), keepdim=False)])])
            _plan(g, fuse=True)
        g = Graph()
        x, wt, b, r = (g.add_input(T(s, dt)) for s in ((2, 8, 16), (16, 24), (24,), (2, 8, 24)))
        h = g.add("gelu", [g.add("add", [g.add("matmul", [x, wt]), b])])
        g.set_outputs([g.add("add", [h, r])])
        _plan(g, fuse=True)
        # flash attention forward (causal, additive mask) and backward (grouped key/value heads)
        g = Graph()
        q, k, v, m = (g.add_input(T(s, dt)) for s in ((1, 4, 24, 16), (1, 2, 24, 16), (1, 2, 24, 8), (24, 24)))
        out, lse = g.add("attention", [q, k, v, m], scale=0.25, is_causal=True)
        dq, delta = g.add("attention_grad_q", [q, k, v, out, lse, out], scale=0.25, is_causal=False)
        g.set_outputs([dq, *g.add("attention_grad_kv", [q, k, v, lse, delta, out], scale=0.25, is_causal=False)])
        _plan(g, fuse=True)


def _corpus() -> None:
    for dt in FLOATS + INTS:
        g = Graph()
        x, y = g.add_input(T((4, 5, 6), dt)), g.add_input(T((6,), dt))
        outs = [g.add("maximum", [x, y]), g.add("eq", [x, y]), g.add("where", [g.add("ne", [x, y]), x, y]),
                g.add("cat", [x, x], dim=1), g.add("flip", [x], dims=(0,)), g.add("convert", [x], dtype=torch.float32),
                # rounding to half types is bit arithmetic (ir/ops/half.py), from every dtype
                g.add("convert", [x], dtype=torch.bfloat16), g.add("convert", [x], dtype=torch.float16),
                g.add("full", [], shape=(3,), value=1, dtype=dt),
                g.add("arange", [], start=0, step=1, length=5, dtype=dt if dt != torch.bool else torch.int64),
                g.add("sum", [x], dims=(0, 2), keepdim=False), g.add("prod", [x], dims=(1,), keepdim=True),
                g.add("amax", [x], dims=(2,), keepdim=False), g.add("amin", [x], dims=(), keepdim=False)]
        if dt != torch.bool:
            outs += [g.add("argmax", [x], dim=1, keepdim=False), g.add("argmin", [x], dim=None, keepdim=False),
                     g.add("sub", [x, y]), g.add("neg", [x]), g.add("remainder", [x, y])]
        if dt.is_floating_point:
            outs += [g.add(op, [x]) for op in ("exp", "log1p", "expm1", "tanh", "sigmoid", "erf", "round", "rsqrt")]
            outs += [g.add("pow", [x, y]), g.add("div", [x, y], rounding_mode="floor"), g.add("gelu", [x])]
            outs += [g.add("matmul", [x, g.add("permute", [x], dims=(0, 2, 1))])]
        else:
            outs += [g.add("bitwise_xor", [x, y]), g.add("bitwise_not", [x])]
        # Long rows take the looped reduction variant.
        z = g.add_input(T((3, 2000), dt))
        outs += [g.add(op, [z], dims=(1,), keepdim=False) for op in ("sum", "prod", "amax", "amin")]
        if dt != torch.bool:
            outs += [g.add(op, [z], dim=1, keepdim=False) for op in ("argmax", "argmin")]
        g.set_outputs(outs)
        _plan(g)
    for dt in FLOATS:  # convolutions (planned for the CPU: the interpreter's flattened-K variants)
        for cin, groups in ((4, 2), (40, 1)):
            g = Graph()
            x, w = g.add_input(T((2, cin, 9, 8), dt)), g.add_input(T((6, cin // groups, 3, 3), dt))
            ct = g.add_input(T((2, 6, 5, 4), dt))
            conv = dict(_CONV, groups=groups)
            y = g.add("conv2d", [x, w], **conv)
            g.set_outputs([g.add("relu", [g.add("add", [y, g.add_input(T((6, 1, 1), dt))])]),
                           g.add("conv2d_input_grad", [ct, w], size=(9, 8), **conv),
                           g.add("conv2d_weight_grad", [x, ct], kernel=(3, 3), **conv)])
            _plan(g, fuse=True)
    for a, b in [((7, 9), (9, 5)), ((2, 3, 7, 9), (3, 9, 5))]:
        for dt in FLOATS:
            g = Graph()
            g.set_outputs([g.add("matmul", [g.add_input(T(a, dt)), g.add_input(T(b, dt))])])
            _plan(g)


def _corpus_int64(monkeypatch) -> None:
    monkeypatch.setattr("ember.runtime.plan.INT32_LIMIT", 10)
    for dt in (torch.float32, torch.float16):
        g = Graph()
        x = g.add_input(T((8, 16), dt))
        g.set_outputs([g.add("mul", [x, x]), g.add("sum", [x], dims=(1,), keepdim=False),
                       g.add("argmax", [x], dim=0, keepdim=False),
                       g.add("matmul", [x, g.add("permute", [x], dims=(1, 0))]),
                       g.add("cat", [x, x], dim=0)])
        _plan(g)
        g = Graph()
        z = g.add_input(T((3, 2000), dt))
        g.set_outputs([g.add(op, [z], dims=(1,), keepdim=False) for op in ("sum", "amax")])
        _plan(g)


def _compile(job: tuple):
    """triton.compile of a job for sm_90: the compiled kernel (`.asm["ptx"]`, `.asm["cubin"]`). A job's
    fifth field, when it has one, is the JIT's specialization attrs (`_planned_jobs`); the session's
    recorded kernels (`_jobs`) carry no argument values, so they compile unspecialized."""
    source, name, signature, consts, *attrs = job
    fn = getattr(load_module(source), name)
    return triton.compile(ASTSource(fn=fn, signature=signature, constexprs=consts, attrs=attrs[0] if attrs else None),
                          target=TARGET, options=GPU_OPTIONS)


def _compile_one(job: tuple) -> str | None:
    try:
        _compile(job)
    except Exception as e:  # name the kernel; the Triton message alone rarely says which one
        return f"{job[1]} does not compile for sm_90 with {job[3]}: {e}\n{job[0]}"
    return None


def _jobs(specs) -> list[tuple]:
    """(source, name, signature, constexprs) of every distinct kernel configuration in `specs`."""
    jobs, seen = [], set()
    for spec in specs:
        consts = dict(spec.constexprs)
        if "INTERP" in consts:
            consts["INTERP"] = False  # the GPU path, not the interpreter's upcast
        precs = ["ieee", "tf32"] if "PREC" in consts and "*fp32" in spec.signature.values() else [consts.get("PREC")]
        for prec in precs:
            if prec is not None:
                consts = {**consts, "PREC": prec}
            key = (spec.source, tuple(sorted(spec.signature.items())), tuple(sorted(map(str, consts.items()))))
            if key not in seen:
                seen.add(key)
                jobs.append((spec.source, spec.name, spec.signature, consts))
    return jobs


def _job_hash(job: tuple) -> str:
    source, _, signature, consts = job
    key = repr((source, sorted(signature.items()), sorted(map(str, consts.items()))))
    return hashlib.sha256(key.encode()).hexdigest()


# `-m slow` compiles this file's corpus (every kernel kind, dtype, index width and constexpr mode)
# and every other kernel configuration the session generated, split into parametrized chunks, so
# pytest's progress moves and `-v` names the chunk.
SLOW_CHUNKS = 16


@pytest.fixture(scope="module")
def session_jobs() -> tuple[list[tuple], list[tuple]]:
    """(the corpus's kernel configurations, every other configuration of the session so far), listed
    once, at the first test that asks, so every chunk sees the same lists."""
    before = spec_count()  # (the record is a bounded LRU: positions in it shift, counts do not)
    with pytest.MonkeyPatch.context() as mp:
        _corpus()
        _corpus_fused()
        _corpus_int64(mp)
    corpus = _jobs(generated_kernels(since=before))
    known = {_job_hash(j) for j in corpus}
    others = [j for j in _jobs(s for s in generated_kernels() if s.seq < before) if _job_hash(j) not in known]
    return corpus, others


def _compile_all(jobs: list[tuple]) -> None:
    # triton.compile is single-threaded and ~0.3 s a kernel: spread the work over the cores.
    workers = min(len(jobs), os.cpu_count() or 1, 8)
    if workers > 1:
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
            errors = [e for e in pool.map(_compile_one, jobs, chunksize=4) if e]
    else:
        errors = [e for e in map(_compile_one, jobs) if e]
    if errors:
        pytest.fail(f"{len(errors)} of {len(jobs)} kernels fail to compile for sm_90; first:\n{errors[0]}")


@pytest.mark.slow
def test_corpus_covers_every_kernel_kind(session_jobs):
    kinds = {s.kernel.kind for s in generated_kernels()}
    assert kinds == {"pointwise", "reduction", "matmul", "row", "conv", "attention"}
    assert any(s.kernel.kind == "matmul" and "gelu" in s.kernel.ops for s in generated_kernels())
    assert any("tl.int64) * " in s.source for s in generated_kernels())
    assert len(session_jobs[0]) >= SLOW_CHUNKS  # no chunk is empty


@pytest.mark.slow
@pytest.mark.parametrize("chunk", range(SLOW_CHUNKS), ids=lambda c: f"chunk{c + 1}of{SLOW_CHUNKS}")
def test_every_session_kernel_compiles_for_sm90(session_jobs, chunk):
    corpus, others = session_jobs
    _compile_all((corpus + others)[chunk::SLOW_CHUNKS])
