"""Every generated kernel also compiles for a GPU (sm_90), checked on CPU with triton.compile.

The interpreter runs kernels without proving they lower to PTX (e.g. it accepts calls that the
GPU code generator rejects). This file plans its own corpus, covering each kernel kind, dtype,
index width and constexpr mode, so it does not depend on test order, and then also compiles
every kernel that earlier tests in this session generated.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor

import pytest
import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from ember.codegen import generated_kernels
from ember.codegen.kernel import spec_count
from ember.codegen.source_cache import load_module
from ember.ir import Graph, TensorType, parse_graph
from ember.runtime import compile_graph

T = TensorType
FLOATS = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
INTS = [torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8, torch.bool]
TARGET = GPUTarget("cuda", 90, 32)


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


def _compile_one(job: tuple) -> str | None:
    source, name, signature, consts = job
    try:
        fn = getattr(load_module(source), name)
        triton.compile(ASTSource(fn=fn, signature=signature, constexprs=consts), target=TARGET)
    except Exception as e:  # name the kernel; the Triton message alone rarely says which one
        return f"{name} does not compile for sm_90 with {consts}: {e}\n{source}"
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


# The default run compiles this file's corpus (every kernel kind, dtype, index width and constexpr
# mode) plus a fixed-size sample of the kernels earlier tests generated (chosen by hash, so the same
# kernels for the same suite). `-m slow` compiles every kernel of the session: minutes on 2 cores.
# Both are split into parametrized chunks, so pytest's progress moves and `-v` names the chunk.
CHUNKS = 4
SESSION_SAMPLE = 32
SLOW_CHUNKS = 16


def _say(config: pytest.Config, line: str) -> None:
    """Write a line to the terminal even under `-q` and output capture (as pytest's live logs do)."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    capture = config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():
            if reporter._tw.width_of_current_line:  # after `-q`'s progress dots
                reporter._tw.line()
            reporter.write_line(line)


@pytest.fixture(scope="module")
def session_jobs() -> tuple[list[tuple], list[tuple]]:
    """(the corpus's kernel configurations, every other configuration of the session so far), listed
    once, at the first test of this file, so every chunk sees the same lists."""
    before = spec_count()  # (the record is a bounded LRU: positions in it shift, counts do not)
    with pytest.MonkeyPatch.context() as mp:
        _corpus()
        _corpus_fused()
        _corpus_int64(mp)
    corpus = _jobs(generated_kernels(since=before))
    known = {_job_hash(j) for j in corpus}
    others = [j for j in _jobs(s for s in generated_kernels() if s.seq < before) if _job_hash(j) not in known]
    return corpus, others


@pytest.fixture(scope="module")
def sm90_jobs(request, session_jobs) -> list[tuple]:
    corpus, others = session_jobs
    sample = sorted(others, key=_job_hash)[:SESSION_SAMPLE]
    _say(request.config, f"{__name__}: compiling {len(corpus)} corpus + {len(sample)} of {len(others)} session "
                         f"kernel configurations for sm_90 in {CHUNKS} chunks (all: -m slow)")
    return corpus + sample


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


def test_corpus_covers_every_kernel_kind(sm90_jobs):
    kinds = {s.kernel.kind for s in generated_kernels()}
    assert kinds == {"pointwise", "reduction", "matmul", "row"}
    assert any(s.kernel.kind == "matmul" and "gelu" in s.kernel.ops for s in generated_kernels())
    assert any("tl.int64) * " in s.source for s in generated_kernels())
    assert len(sm90_jobs) >= CHUNKS  # no chunk is empty


@pytest.mark.parametrize("chunk", range(CHUNKS), ids=lambda c: f"chunk{c + 1}of{CHUNKS}")
def test_generated_kernels_compile_for_sm90(sm90_jobs, chunk):
    _compile_all(sm90_jobs[chunk::CHUNKS])


@pytest.mark.slow
@pytest.mark.parametrize("chunk", range(SLOW_CHUNKS), ids=lambda c: f"chunk{c + 1}of{SLOW_CHUNKS}")
def test_every_session_kernel_compiles_for_sm90(session_jobs, chunk):
    corpus, others = session_jobs
    _compile_all((corpus + others)[chunk::SLOW_CHUNKS])
