"""Training under torch.distributed: DistributedDataParallel over the gloo backend, two CPU processes
started by torch.multiprocessing (spawn). Each process trains the same model (different initial values:
DDP broadcasts rank 0's) on its own data, once eagerly with DDP and once per ember mode, and the
parameters and buffers after every step must equal eager DDP's (api/distributed.py says what works
and what is refused). One spawn runs every scenario: a process start and `import ember` cost seconds
on a loaded machine; the tests below read its results."""

from __future__ import annotations

import copy
import faulthandler
import os
import socket
import sys
import time
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

import ember

STEPS = 3
WORLD = 2
TIMEOUT_S = 150  # a stuck collective fails the test (with each process's stack) instead of hanging CI


class Net(nn.Module):
    """A user class: Dynamo compiles the frames of user modules (torch's own, like nn.Sequential, run
    eagerly inside DDP). Batch norm: DDP broadcasts rank 0's running statistics before each forward."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(6, 8)
        self.norm = nn.BatchNorm1d(8)
        self.fc2 = nn.Linear(8, 3)

    def forward(self, x):
        return self.fc2(torch.relu(self.norm(self.fc1(x))))


class SideNet(nn.Module):
    """`a` trained; `b` computed, reaching the loss only where `use_b`; `c` only through .detach()."""

    def __init__(self, use_b: bool, pooled: bool = False):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(4, 3), nn.Linear(4, 3), nn.Linear(4, 3)
        self.use_b, self.pooled = use_b, pooled

    def forward(self, x):
        side = self.b(x)
        out = self.a(x) + self.c(x).detach()
        if self.pooled:  # b in the output, not in the loss (a BERT-style pooler)
            return out, side
        return out + side if self.use_b else out


def _side_scenarios(rank: int) -> dict:
    """Parameters the loss does not reach, with find_unused_parameters=True: b is used on rank 1 only
    (DDP averages its gradient with rank 0's share zero), c nowhere (no .grad: the optimizer skips it).
    Eager DDP against compile_step; the refusals where eager DDP fails."""
    torch.manual_seed(rank)
    model = SideNet(use_b=rank == 1)
    torch.manual_seed(200 + rank)
    data = [(torch.randn(5, 4), torch.randint(0, 3, (5,))) for _ in range(STEPS)]
    sgd = dict(lr=0.1, momentum=0.9, weight_decay=0.1)  # a skipped parameter would move by these
    out: dict = {}
    for name in ("eager", "compile_step"):
        net = copy.deepcopy(model)
        ddp = DDP(net, find_unused_parameters=True)
        if name == "eager":
            opt = torch.optim.SGD(ddp.parameters(), **sgd)
            call = _eager_step(ddp, opt)
        else:
            opt = ember.optim.SGD(ddp.parameters(), **sgd)
            call = ember.compile_step(ddp, F.cross_entropy, opt)
        out[name] = _train(net, call, data)
        out[name]["with_state"] = [n for n, p in net.named_parameters() if p in opt.state]
    out["initial"] = _state(DDP(copy.deepcopy(model)).module)
    opt = ember.optim.SGD(model.parameters(), lr=0.1)
    out["refused"] = {
        "no_find_unused": _refusal(lambda: ember.compile_step(DDP(model), F.cross_entropy, opt)(*data[0])),
        "pooled": _refusal(lambda: ember.compile_step(DDP(SideNet(False, pooled=True), find_unused_parameters=True),
                                                      lambda out, y: F.cross_entropy(out[0], y), opt)(*data[0])),
    }
    return out


# -- the worker (runs in each spawned process) ---------------------------------------------------------
def _state(net: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def _launch_counter() -> list[int]:
    """Counts ember kernel launches from here on (proof that a mode ran ember, not eager PyTorch)."""
    from ember.runtime import executor

    count = [0]
    run = executor.Prepared.run

    def counted(self, *args, **kwargs):
        count[0] += sum(launcher is not None for launcher, *_ in self.steps)
        return run(self, *args, **kwargs)

    executor.Prepared.run = counted
    return count


def _train(net: nn.Module, call, data) -> dict:
    """`call(x, y) -> loss` per step; the inner module's parameters and buffers after each."""
    losses, states = [], []
    for x, y in data:
        losses.append(float(call(x, y)))
        states.append(_state(net))
    return {"loss": losses, "states": states}


def _eager_step(model: nn.Module, opt):
    def step(x, y):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss.detach()
    return step


def _refusal(fn) -> str:
    try:
        fn()
    except ember.DDPError as e:
        return str(e)
    return "not refused"


def _scenarios(rank: int) -> dict:
    launches = _launch_counter()
    torch.manual_seed(rank)  # each process starts from other values: DDP's constructor broadcasts rank 0's
    model = Net()
    torch.manual_seed(100 + rank)  # each process trains on its own data
    data = [(torch.randn(4, 6), torch.randint(0, 3, (4,))) for _ in range(STEPS)]
    out: dict = {}

    def run(name: str, make) -> None:
        net = copy.deepcopy(model)
        before = launches[0]
        out[name] = _train(net, make(net), data)
        out[name]["launches"] = launches[0] - before

    sgd = dict(lr=0.1, momentum=0.9)
    run("eager", lambda net: _eager_step(ddp := DDP(net), torch.optim.SGD(ddp.parameters(), **sgd)))
    run("ddp_of_compiled", lambda net: _eager_step(ddp := DDP(ember.compile(net)), torch.optim.SGD(ddp.parameters(),
                                                                                                   **sgd)))

    def step(net):
        ddp = DDP(net)
        fn = ember.compile_step(ddp, F.cross_entropy, ember.optim.SGD(ddp.parameters(), **sgd))
        out["step_type"] = type(fn).__name__

        def call(x, y):
            loss = fn(x, y)
            out.setdefault("grads_left", []).extend(p.grad is not None for p in net.parameters())
            return loss
        return call
    run("compile_step", step)
    run("compile_step_of_compiled", lambda net: (lambda ddp: ember.compile_step(  # DDP(ember.compile(model))
        ddp, F.cross_entropy, ember.optim.SGD(ddp.parameters(), **sgd)))(DDP(ember.compile(net))))

    # Dynamo: small buckets, so DDPOptimizer splits the forward into several graphs, each compiled by ember
    from ember.api import dynamo

    dynamo.reset_compiled_graphs()
    # DDPOptimizer requires the first bucket (1 MiB by default) to be no larger than the others; this
    # process's DDP and Dynamo read the constant when they are built.
    dist._DEFAULT_FIRST_BUCKET_BYTES = 64
    run("dynamo", lambda net: _eager_step(ddp := torch.compile(DDP(net, bucket_cap_mb=100 / 2**20), backend="ember"),
                                          torch.optim.SGD(ddp.parameters(), **sgd)))
    out["dynamo_graphs"] = [g.kind for g in dynamo.compiled_graphs() if g.graph is not None]

    net = copy.deepcopy(model)
    ddp = DDP(net)
    opt = ember.optim.SGD(ddp.parameters(), **sgd)
    out["refused"] = {
        "compile": _refusal(lambda: ember.compile(ddp)),
        "trace": _refusal(lambda: ember.trace(ddp, data[0][0])),
        "nested": _refusal(lambda: ember.compile_step(nn.Sequential(ddp), F.cross_entropy, opt)),
    }
    step = ember.compile_step(ddp, F.cross_entropy, opt)
    with ddp.no_sync():
        out["refused"]["no_sync"] = _refusal(lambda: step(*data[0]))
    out["refused_state"] = _state(net)  # the refused calls changed nothing
    out["initial"] = _state(DDP(copy.deepcopy(model)).module)
    out["side"] = _side_scenarios(rank)
    return out


def _worker(rank: int, port: int, folder: str) -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    faulthandler.dump_traceback_later(TIMEOUT_S - 10, exit=True)  # a hang prints where each process is
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD,
                            timeout=timedelta(seconds=TIMEOUT_S - 20))
    torch.save(_scenarios(rank), os.path.join(folder, f"rank{rank}.pt"))
    dist.barrier()
    dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip interpreter teardown: destructors of gloo/DDP objects at exit have been seen to block.
    os._exit(0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    folder = tmp_path_factory.mktemp("ddp")
    context = mp.spawn(_worker, args=(_free_port(), str(folder)), nprocs=WORLD, join=False)
    deadline = time.monotonic() + TIMEOUT_S
    while not context.join(timeout=1):  # raises with the worker's traceback if one failed
        if time.monotonic() > deadline:
            for p in context.processes:
                p.kill()
            pytest.fail(f"the DDP workers did not finish in {TIMEOUT_S} s")
    return [torch.load(folder / f"rank{r}.pt") for r in range(WORLD)]


# -- the checks ----------------------------------------------------------------------------------------
def assert_like_eager(ranks: list[dict], mode: str) -> None:
    for rank, res in enumerate(ranks):
        for step, (got, want) in enumerate(zip(res[mode]["states"], res["eager"]["states"])):
            for key in want:
                torch.testing.assert_close(got[key], want[key], rtol=1e-5, atol=1e-6,
                                           msg=lambda m: f"{mode}, rank {rank}, {key} after step {step}: {m}")
        torch.testing.assert_close(res[mode]["loss"], res["eager"]["loss"], rtol=1e-5, atol=1e-6)


def test_eager_ddp_reference_is_a_real_all_reduce(ranks):
    # The reference itself: both processes start from rank 0's values and stay equal although their data
    # differ (so the modes below are compared against averaged gradients, not against local ones).
    assert not torch.equal(ranks[0]["eager"]["states"][0]["fc1.weight"], ranks[0]["initial"]["fc1.weight"])
    for key, v in ranks[0]["initial"].items():
        torch.testing.assert_close(ranks[1]["initial"][key], v, rtol=0, atol=0)
    for key, v in ranks[0]["eager"]["states"][-1].items():
        if "running" not in key and "num_batches" not in key:  # (each process updates its own statistics)
            torch.testing.assert_close(ranks[1]["eager"]["states"][-1][key], v, rtol=0, atol=0)
    assert ranks[0]["eager"]["loss"] != ranks[1]["eager"]["loss"]
    assert ranks[0]["eager"]["launches"] == 0


def test_ddp_of_ember_compile_matches_eager_ddp(ranks):
    # DDP's gradient hooks fire on the gradients ember's backward hands to autograd.
    assert_like_eager(ranks, "ddp_of_compiled")
    assert all(r["ddp_of_compiled"]["launches"] > 0 for r in ranks)


def test_compile_step_of_ddp_averages_gradients_like_eager_ddp(ranks):
    # graph(forward + backward) -> all-reduce -> graph(optimizer update), parameters, momentum and
    # batch-norm statistics (rank 0's broadcast before each forward, then this process's batch).
    assert ranks[0]["step_type"] == "DistributedStep"
    assert_like_eager(ranks, "compile_step")
    assert all(r["compile_step"]["launches"] > 0 for r in ranks)
    for r in ranks:  # .grad untouched, as compile_step without DDP
        assert len(r["grads_left"]) == STEPS * 6 and not any(r["grads_left"])
    assert_like_eager(ranks, "compile_step_of_compiled")  # the step compiles the module inside ember.compile


def test_compile_step_of_ddp_skips_unused_parameters_as_eager_ddp_does(ranks):
    for rank, res in enumerate(r["side"] for r in ranks):
        for step, (got, want) in enumerate(zip(res["compile_step"]["states"], res["eager"]["states"])):
            for key in want:
                torch.testing.assert_close(got[key], want[key], rtol=1e-5, atol=1e-6,
                                           msg=lambda m: f"rank {rank}, {key} after step {step}: {m}")
        torch.testing.assert_close(res["compile_step"]["loss"], res["eager"]["loss"], rtol=1e-5, atol=1e-6)
        # c: no gradient on any process: untouched, no momentum state; b: updated on both (used on rank 1)
        assert res["compile_step"]["with_state"] == res["eager"]["with_state"] == ["a.weight", "a.bias", "b.weight",
                                                                                  "b.bias"]
        final = res["compile_step"]["states"][-1]
        assert all(torch.equal(final[k], res["initial"][k]) for k in ("c.weight", "c.bias"))
        assert not torch.equal(final["b.weight"], res["initial"]["b.weight"])
        assert "find_unused_parameters=True" in res["refused"]["no_find_unused"]
        assert "c.weight, c.bias" in res["refused"]["no_find_unused"]
        assert "the model's output depends on some of them" in res["refused"]["pooled"]


def test_torch_compile_of_ddp_with_the_ember_backend(ranks):
    assert_like_eager(ranks, "dynamo")
    for r in ranks:
        assert r["dynamo"]["launches"] > 0
        # DDPOptimizer split the forward at the small buckets: several graphs reached ember
        assert r["dynamo_graphs"].count("forward") >= 2, r["dynamo_graphs"]


def test_what_cannot_work_is_refused_with_the_reason(ranks):
    refused = ranks[0]["refused"]
    assert "ember.compile: cannot compile a DistributedDataParallel module" in refused["compile"]
    assert "DDP(ember.compile(model))" in refused["compile"]
    assert "ember.trace: cannot compile a DistributedDataParallel module" in refused["trace"]
    assert "module holding DistributedDataParallel ('0')" in refused["nested"]
    assert "no_sync()" in refused["no_sync"]
    for r in ranks:
        for key, v in r["initial"].items():  # nothing ran: rank 0's broadcast values, untouched
            torch.testing.assert_close(r["refused_state"][key], v, rtol=0, atol=0)



def test_compile_step_of_an_ember_compiled_module():
    # (one process) compile_step compiles the module inside ember.compile's wrapper, the same parameters
    torch.manual_seed(0)
    model = Net()
    ref = copy.deepcopy(model)
    compiled = ember.compile(model)
    step = ember.compile_step(compiled, F.cross_entropy, ember.optim.SGD(compiled.parameters(), lr=0.1, momentum=0.9))
    eager = _eager_step(ref, torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9))
    for _ in range(2):
        x, y = torch.randn(4, 6), torch.randint(0, 3, (4,))
        torch.testing.assert_close(step(x, y), eager(x, y), rtol=1e-5, atol=1e-6)
    for (key, got), want in zip(model.state_dict().items(), ref.state_dict().values()):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6, msg=key)
    assert step.num_kernels > 0
