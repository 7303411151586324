"""Guards, recompile reasons, the recompile limit and dynamic dims of `ember.compile`."""

from __future__ import annotations

import logging
import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.testing import assert_close

import ember
from ember.api.compiled import RecompileLimitWarning
from ember.api.guards import call_signature
from ember.api.signature import signature_key
from ember.codegen import kernel as kernel_mod
from ember.codegen import source_cache


class MLP(nn.Module):
    def __init__(self, d: int = 8, h: int = 16):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(d, h), nn.Linear(h, d)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class Attention(nn.Module):
    def __init__(self, d: int = 16, heads: int = 2):
        super().__init__()
        self.heads = heads
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)

    def forward(self, x):
        b, s, d = x.shape
        q, k, v = self.qkv(x).view(b, s, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        att = torch.softmax(q @ k.transpose(-2, -1) * (1.0 / math.sqrt(d // self.heads)), dim=-1)
        return self.proj((att @ v).transpose(1, 2).reshape(b, s, d))


def _counts() -> tuple[int, int]:
    """(distinct kernel sources generated, source-cache misses) so far in this process (monotonic
    counters: the caches themselves are bounded and stop growing when full)."""
    return kernel_mod.kernel_count(), source_cache.load_count()


def test_dtype_change_recompiles_with_reason(caplog):
    cf = ember.compile(lambda x: x * 2 + 1)
    x = torch.randn(4, 3)
    assert_close(cf(x), x * 2 + 1)
    assert cf.recompile_reasons == []
    with caplog.at_level(logging.INFO, logger="ember"):
        xh = x.half()
        assert_close(cf(xh), xh * 2 + 1)
    assert cf.recompile_reasons == ["input 0 (x): dtype changed float32 -> float16"]
    assert "dtype changed float32 -> float16" in caplog.text
    assert "recompile 1: input 0 (x): dtype changed" in cf.guard_report()


def test_requires_grad_change_recompiles_with_reason():
    cf = ember.compile(lambda x: x.sin())
    x = torch.randn(5)
    with torch.no_grad():
        cf(x)
        assert_close(cf(x.clone().requires_grad_()), x.sin())
    assert cf.recompile_reasons == ["input 0 (x): requires_grad changed False -> True"]


def test_device_change_recompiles_with_reason():
    cf = ember.compile(lambda x: x + 1)
    cf(torch.randn(3))
    try:  # meta tensors capture fine; running kernels on them may not, the reason is recorded first
        cf(torch.randn(3, device="meta"))
    except Exception:  # noqa: BLE001
        pass
    assert cf.recompile_reasons == ["input 0 (x): device changed cpu -> meta"]


def test_train_eval_recompiles_with_reason():
    m = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5)).requires_grad_(False)
    cf = ember.compile(m)
    x = torch.randn(2, 4)
    m.eval()
    assert_close(cf(x), m(x))
    m.train()
    cf(x)
    m.eval()
    assert_close(cf(x), m(x))                      # back to the first program: no new recompile
    assert len(cf.recompile_reasons) == 1
    assert cf.recompile_reasons[0].startswith("module training flag changed: Sequential False -> True")


def test_guard_signature_is_the_cache_key():
    # one key: the cache of graphs and the programs' guards must never disagree on what matches
    m = MLP().eval()
    x = torch.randn(3, 8)
    for fn, args in ((m, (x,)), (m, (x[:2],)), (lambda x, n, y: x * n + y, (x, [2, "a"], x[1:]))):
        sig = call_signature(fn, args, {})
        assert sig.key() == signature_key(fn, args, {}) and hash(sig.key()) == hash(signature_key(fn, args, {}))
    assert sig.aliases == ((0, 1),) and sig.tensor_names == ["x", "y"]
    assert call_signature(m.train(), (x,), {}).key() != call_signature(m.eval(), (x,), {}).key()


def test_non_tensor_argument_change_names_the_value():
    cf = ember.compile(lambda x, n: x * n)
    x = torch.randn(3)
    cf(x, 2)
    assert_close(cf(x, 3), x * 3)
    assert cf.recompile_reasons == ["input 1 (n): changed int 2 -> int 3"]


def test_parameter_replacement_is_noticed_and_versions_do_not_recompile(caplog):
    m = MLP().requires_grad_(False)
    cf = ember.compile(m)
    x = torch.randn(3, 8)
    assert_close(cf(x), m(x), rtol=1e-4, atol=1e-5)
    with torch.no_grad():                                    # a version change: values only
        m.fc1.weight.mul_(-0.5)
    assert_close(cf(x), m(x), rtol=1e-4, atol=1e-5)
    with caplog.at_level(logging.INFO, logger="ember"):      # same metadata: noticed, graph reused
        m.fc1.weight = nn.Parameter(torch.randn(16, 8), requires_grad=False)
        assert_close(cf(x), m(x), rtol=1e-4, atol=1e-5)
    assert cf.recompile_reasons == [] and len(cf.cache) == 1
    assert cf.notices and cf.notices[0].startswith("parameter fc1.weight replaced")
    assert "parameter fc1.weight replaced" in caplog.text
    m.fc2.bias = nn.Parameter(torch.randn(8))                  # new metadata: requires_grad
    with torch.no_grad():
        assert_close(cf(x), m(x), rtol=1e-4, atol=1e-5)
    assert cf.recompile_reasons == ["parameter/buffer fc2.bias: requires_grad changed False -> True"]


def test_recompile_limit_falls_back_to_eager_with_one_warning():
    traces = []

    def f(x, k):
        traces.append(k)
        return x * k + 1

    cf = ember.compile(f, recompile_limit=2)
    x = torch.randn(4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for k in range(6):
            assert_close(cf(x, k), x * k + 1)
        assert_close(cf(x, 1), x + 1)           # compiled programs are still used
    limit = [w for w in caught if issubclass(w.category, RecompileLimitWarning)]
    assert len(limit) == 1 and "recompile limit (2)" in str(limit[0].message)
    assert len(cf.recompile_reasons) == 2 and len(cf.programs) == 3
    assert traces[:3] == [0, 1, 2] and cf.fallback_reason == "input 1 (k): changed int 2 -> int 3"


def test_automatic_dynamic_after_one_change():
    cf = ember.compile(lambda x: torch.softmax(x, -1) * 2)
    for b in (2, 3, 4, 6):
        x = torch.randn(b, 8)
        assert_close(cf(x), torch.softmax(x, -1) * 2)
    assert cf.recompile_reasons == ["input 0 (x): shape changed [2, 8] -> [3, 8] (dim 0); marking x dim 0 dynamic"]
    assert len(cf.programs) == 2 and len(cf.cache) == 4


def test_dynamic_static_flag_recompiles_per_shape():
    cf = ember.compile(lambda x: x + 1, dynamic=False)
    for n in (2, 3, 4):
        cf(torch.randn(n))
    assert len(cf.recompile_reasons) == 2 and "marking" not in cf.recompile_reasons[0]


def test_failed_size_guard_recompiles_with_reason():
    def f(x):
        return x * 2 if x.shape[0] > 4 else x + 1

    cf = ember.compile(f, dynamic=True)
    for n in (6, 8):
        x = torch.randn(n, 3)
        assert_close(cf(x), x * 2)
    assert cf.recompile_reasons == []
    x = torch.randn(3, 3)
    assert_close(cf(x), x + 1)
    assert len(cf.recompile_reasons) == 1
    assert "x.size(0)" in cf.recompile_reasons[0] and "x.size(0) = 3" in cf.recompile_reasons[0]


@pytest.mark.parametrize("model, shapes", [
    (MLP(), [(2, 8), (3, 8), (5, 8), (7, 8), (4, 8)]),
    (Attention(), [(2, 4, 16), (3, 4, 16), (2, 6, 16), (4, 5, 16), (3, 3, 16)]),
], ids=["mlp", "attention"])
def test_dynamic_builds_each_kernel_once(model, shapes):
    torch.manual_seed(0)
    model = model.eval().requires_grad_(False)
    cf = ember.compile(model, dynamic=True)
    built, names = [], []
    for shape in shapes:
        before = _counts()
        x = torch.randn(*shape)
        assert_close(cf(x), model(x), rtol=1e-4, atol=1e-5)
        after = _counts()
        built.append((after[0] - before[0], after[1] - before[1]))
        names.append(sorted(k.name for k in cf.graphs[-1].kernels))
    assert all(b == (0, 0) for b in built[1:]), built          # later sizes: no new source, no cache miss
    assert all(n == names[0] for n in names), names             # the same kernels serve every size
    assert cf.recompile_reasons == [] and len(cf.programs) == 1 and len(cf.cache) == len(shapes)


def test_explain_reports_recompile_reasons():
    cf = ember.compile(lambda x: x.exp() + 1, dynamic=False)
    with torch.no_grad():
        cf(torch.randn(3))
        cf(torch.randn(3, dtype=torch.float64))
    report = str(ember.explain(cf, torch.randn(3)))
    assert "Guards and recompiles" in report and "dtype changed float32 -> float64" in report
