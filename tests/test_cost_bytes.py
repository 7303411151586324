"""The cost model (passes/cost.py) against an independent count: the bytes each generated kernel loads
and stores when Triton's interpreter runs it (tests/byte_counter.py).

Per launch, `group_cost` of the launch's schedule entry must equal the counted bytes exactly. The
convention (see passes/cost.py): an element counts once per load instruction of a kernel, so tiles
that several programs load (matmul's A tile once per N block, a broadcast bias per row block) count
once, and a looped row kernel's sweeps count once each.
"""

import pytest
import torch
import torch.nn.functional as F
from byte_counter import count_bytes
from models import TransformerBlock
from testing import assert_close
from torch import nn

import ember
from ember.passes.cost import group_cost
from ember.runtime.driver import Executable

r = torch.randn


def _ce(x, t):
    return F.cross_entropy(x, t)


_QKV = (r(1, 2, 24, 8), r(1, 2, 24, 8), r(1, 2, 24, 8))
_FLASH = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
_FLASH_BACKWARD = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward

# name -> (fn, args). Small shapes (the interpreter runs each program instance in Python); rows over
# ROW_BLOCK_LIMIT (4096) take the looped row kernel.
PROGRAMS = {
    # pointwise: broadcasting, views (a slice, a transpose, an expanded slice), mixed dtypes
    "broadcast_chain": (lambda x, y, z: torch.tanh(x * y + z).exp(), (r(4, 8, 16), r(8, 1), r(16))),
    "strided_slice": (lambda x: x[:, ::2] * 2, (r(8, 32),)),
    "transpose_add": (lambda x, y: x.t() + y, (r(16, 8), r(8, 16))),
    "expanded_slice": (lambda x: x[:, :1].expand(8, 32) * 2, (r(8, 32),)),
    "half_mix": (lambda x, y: (x.half() * y).float(), (r(8, 16), r(8, 16).half())),
    "two_outputs": (lambda x: (x.sin(), x.cos() * 2), (r(4, 16),)),
    "arange": (lambda x: x + torch.arange(16.0), (r(4, 16),)),
    # rows that fit one block
    "softmax": (lambda x: torch.softmax(x, -1), (r(4, 33),)),
    "softmax_middle_dim": (lambda x: torch.softmax(x, 1), (r(3, 7, 5),)),
    "layernorm": (lambda x, w, b: F.layer_norm(x, (48,), w, b), (r(6, 48), r(48), r(48))),
    "row_and_tile_load": (lambda x, t: (x - t[:, None]).sum(-1) + t, (r(4, 40), r(4))),
    "cross_entropy": (_ce, (r(8, 40), torch.randint(0, 40, (8,)))),
    # looped rows: one sweep per group of reductions over tiles (ir/row_sweeps.py), one more to store tiles
    "softmax_looped": (lambda x: torch.softmax(x, -1), (r(2, 5000),)),
    "layernorm_looped": (lambda x, w, b: F.layer_norm(x, (5000,), w, b), (r(2, 5000), r(5000), r(5000))),
    "cross_entropy_looped": (_ce, (r(2, 5000), torch.randint(0, 5000, (2,)))),
    "softmax_mean_looped": (lambda x: torch.softmax(x, -1).mean(), (r(2, 5000),)),
    # matmul alone (one and several N blocks), batched, transposed, with epilogues
    "matmul": (lambda a, b: a @ b, (r(16, 24), r(24, 12))),
    "matmul_n_blocks": (lambda a, b: a @ b, (r(32, 48), r(48, 300))),
    "bmm_broadcast": (lambda a, b: a @ b, (r(2, 8, 16), r(16, 12))),
    "matmul_transposed": (lambda a, b: a @ b.t(), (r(8, 16), r(12, 16))),
    "linear_gelu": (lambda x, w, b: F.gelu(F.linear(x, w, b)), (r(8, 16), r(32, 16), r(32))),
    "matmul_residual": (lambda a, b, c: a @ b + c, (r(8, 16), r(16, 12), r(8, 12))),
    "matmul_operand_in_epilogue": (lambda a: a @ a + a, (r(16, 16),)),
    # convolutions (implicit GEMMs): every operand element once per load instruction, however many
    # taps gather it; the epilogue's loads as matmul's
    "conv_bias_relu": (lambda x, w, b: F.conv2d(x, w, b, padding=1).relu(), (r(2, 3, 7, 6), r(4, 3, 3, 3), r(4))),
    "conv_many_channels": (lambda x, w: F.conv2d(x, w, padding=1, groups=2), (r(1, 40, 5, 5), r(6, 20, 3, 3))),
    "conv_backward": (lambda g, x, w: torch.ops.aten.convolution_backward(
        g, x, w, [4], [1, 1], [1, 1], [1, 1], False, [0, 0], 1, [True, True, False])[:2],
        (r(2, 4, 7, 6), r(2, 3, 7, 6), r(4, 3, 3, 3))),
    # reductions the row kernel does not take, and reductions over other dims
    "argmax": (lambda x: x.argmax(1), (r(8, 40),)),
    "prod_looped": (lambda x: x.prod(1), (r(2, 3000),)),
    "sum_dim0": (lambda x: x.sum(0), (r(8, 40),)),
    "sum_transposed": (lambda x: x.t().sum(-1), (r(40, 8),)),
    # scans: in a row kernel with prologue and epilogue, or alone over rows of several blocks
    "cumsum_transposed": (lambda x: torch.cumsum(x.t() * 2, 1).exp(), (r(12, 5),)),
    "cumprod_looped": (lambda x: torch.cumprod(x, 1), (1 + 0.001 * r(2, 5000),)),
    # cat: each piece read as often as it appears
    "cat": (lambda x, y: torch.cat([x, y.t(), x], 0), (r(4, 8), r(8, 3))),
    "cat_then_relu": (lambda x, y: torch.cat([x, y], 1).relu(), (r(4, 8), r(4, 3))),
    # window ops (ir/ops/window.py): each tap of the unrolled window loop is a load instruction
    "max_pool_relu": (lambda x: F.max_pool2d(x, 3, 2, 1).relu(), (r(2, 3, 9, 8),)),
    "max_pool_indices": (lambda x: F.max_pool2d(x, (3, 2), (2, 1), (1, 0), dilation=(1, 2), ceil_mode=True,
                                                return_indices=True), (r(2, 3, 9, 8),)),
    "avg_pool_padded": (lambda x: F.avg_pool2d(x, 3, 1, 1, count_include_pad=False), (r(2, 3, 7, 6),)),
    "adaptive_avg_pool": (lambda x: F.adaptive_avg_pool2d(x, (3, 4)), (r(2, 3, 7, 10),)),
    "adaptive_avg_pool_backward": (lambda g, x: torch.ops.aten._adaptive_avg_pool2d_backward(g, x),
                                   (r(2, 3, 3, 4), r(2, 3, 7, 10))),
    "upsample_nearest": (lambda x: F.interpolate(x, scale_factor=2.5), (r(2, 3, 4, 5),)),
    "upsample_bilinear": (lambda x: F.interpolate(x, size=(7, 9), mode="bilinear"), (r(2, 3, 4, 5),)),
    "upsample_bilinear_backward": (lambda g: torch.ops.aten.upsample_bilinear2d_backward(
        g, [7, 9], [2, 3, 4, 5], True, None, None), (r(2, 3, 7, 9),)),
    # gathers: the indices, and the table's elements they pick (distinct indices: the counter counts
    # distinct addresses, the cost model one table element per output element)
    "embedding_positions": (lambda w, i, p: F.embedding(i, w) + p, (r(16, 8), torch.randperm(16)[:6].view(2, 3),
                                                                    r(3, 8))),
    "index_select": (lambda x, i: x.index_select(1, i) * 2, (r(4, 10), torch.randperm(10)[:5])),
    "gather": (lambda x, i: torch.gather(x, 1, i), (r(4, 10), torch.stack([torch.randperm(10)[:3] for _ in range(4)]))),
    # flash attention (codegen/attention.py): q, k, v and the mask read once, out and lse written once;
    # its backward: q, k, v, lse, delta, dO read once (and delta's row kernel reads O and dO)
    "attention": (lambda q, k, v, m: F.scaled_dot_product_attention(q, k, v, attn_mask=m, enable_gqa=True),
                  (r(1, 4, 24, 8), r(1, 2, 24, 8), r(1, 2, 24, 8), torch.rand(24, 24) < 0.8)),
    "attention_backward": (lambda g, q, k, v, o, lse: _FLASH_BACKWARD(g, q, k, v, o, lse, 0.0, True),
                           (r(1, 2, 24, 8), *_QKV, *_FLASH(*_QKV, 0.0, True))),
}


def counted_vs_cost(exe: Executable, launches) -> dict[int, tuple[tuple[int, int], tuple[int, int]]]:
    """Schedule entry -> ((counted read, written), (cost read, written)) for the plan that just ran."""
    steps = exe.plan.launches
    assert len(steps) == len(launches), "each launch of the plan ran once"
    counted: dict[int, list[int]] = {}
    for step, rec in zip(steps, launches):
        assert step.kernel.name == rec.kernel
        # A copy the layout needed belongs to no entry: the cost model does not see it.
        assert step.entry is not None, f"a copy kernel {step.ops}: these programs should need none"
        c = counted.setdefault(step.entry, [0, 0])
        c[0] += rec.read
        c[1] += rec.written
    assert set(counted) == {e.index for e in exe.schedule.kernels}, "every kernel entry launched"
    result = {}
    for i, (read, written) in counted.items():
        cost = group_cost(exe.schedule.entries[i].group, 1, exe.schedule.host_values)
        result[i] = ((read, written), (cost.bytes_read, cost.bytes_written))
    return result


def run_counted(fn, args):
    with torch.no_grad():
        sg = ember.trace(fn, *args)
        with count_bytes() as launches:
            got = sg(*args)
        assert_close(got, fn(*args), 1e-4, 1e-5)
    return sg.compiled, launches


@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_cost_is_the_bytes_kernels_load_and_store(name):
    fn, args = PROGRAMS[name]
    exe, launches = run_counted(fn, args)
    for i, (counted, cost) in counted_vs_cost(exe, launches).items():
        assert counted == cost, (name, exe.schedule.entries[i].group)


def test_the_counter_counts_what_a_kernel_touches():
    """Hand-counted: x + y over [8, 32] float32 reads 2 x 1024 bytes and writes 1024; a broadcast [32]
    operand reads its 128 bytes once per instruction though every program loads it."""
    exe, launches = run_counted(lambda x, y: x + y, (r(8, 32), r(8, 32)))
    assert [(k.read, k.written) for k in launches] == [(2048, 1024)]
    exe, launches = run_counted(lambda x, y: x + y, (r(8, 32), r(32)))
    assert [(k.read, k.written) for k in launches] == [(1024 + 128, 1024)]
    assert launches[0].accessed_read == 2048  # the broadcast operand was loaded 8 times over


def test_matmul_counts_compulsory_tile_reads():
    """The convention: each A and B element once per matmul kernel. With several N blocks the programs
    do load A tiles again; the cost counts them once (the cache serves them)."""
    exe, launches = run_counted(*PROGRAMS["matmul_n_blocks"])
    (k,) = launches
    a, b, out = 32 * 48 * 4, 48 * 300 * 4, 32 * 300 * 4
    assert (k.read, k.written) == (a + b, out)
    assert exe.plan.launches[0].constexprs["BN"] < 300 and k.accessed_read > k.read
    cost = group_cost(exe.schedule.kernels[0].group)
    assert (cost.bytes_read, cost.bytes_written) == (a + b, out)


def test_looped_row_kernel_reloads_per_sweep():
    """layernorm over 5000 columns: x is swept twice (mean and variance together, Welford's: ir/row_sweeps.py;
    then normalize and store), the weight and bias only by the storing sweep."""
    exe, launches = run_counted(*PROGRAMS["layernorm_looped"])
    (k,) = launches
    x, wb = 2 * 5000 * 4, 5000 * 4
    assert (k.read, k.written) == (2 * x + 2 * wb, x)


def test_cost_of_a_model_forward_and_a_training_step():
    torch.manual_seed(0)
    block = TransformerBlock(16, 2, 2)
    exe, launches = run_counted(block, (r(2, 6, 16),))
    for i, (counted, cost) in counted_vs_cost(exe, launches).items():
        assert counted == cost, exe.schedule.entries[i].group

    mlp = nn.Sequential(nn.Linear(12, 24), nn.GELU(), nn.Linear(24, 24), nn.ReLU(), nn.Linear(24, 5))
    step = ember.compile_step(mlp, F.cross_entropy, ember.optim.AdamW(mlp.parameters(), lr=1e-2))
    x, y = r(16, 12), torch.randint(0, 5, (16,))
    with count_bytes() as launches:
        step(x, y)
    for i, (counted, cost) in counted_vs_cost(step.last.compiled, launches).items():
        assert counted == cost, step.last.compiled.schedule.entries[i].group
