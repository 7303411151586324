"""What eager mode did: the counters behind `ember.eager_stats()`."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass
class EagerStats:
    """What eager mode did since the last `reset_eager_stats()`.

    `seen`: every aten op call the mode saw, by op name; `ember`: calls run on ember kernels;
    `fallthrough`: calls run by torch, with `reasons` (op name -> why); `graphs_built`: IR graphs
    lowered and compiled (one per op group and input shape); `kernels_built`: kernel sources
    generated (a new batch size generates none: sizes are kernel arguments); `kernel_configs_built`:
    new (kernel, signature, constexpr) launch configurations; `launches`: kernel launches; `errors`:
    op name -> failure that made an op fall through (non-strict mode)."""

    seen: Counter = field(default_factory=Counter)
    ember: Counter = field(default_factory=Counter)
    fallthrough: Counter = field(default_factory=Counter)
    reasons: dict[str, str] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    graphs_built: int = 0
    kernels_built: int = 0
    kernel_configs_built: int = 0
    launches: int = 0
    kernel_names: set[str] = field(default_factory=set)  # distinct kernels launched

    @property
    def ops_seen(self) -> int:
        return sum(self.seen.values())

    @property
    def ops_ember(self) -> int:
        return sum(self.ember.values())

    @property
    def ops_fallthrough(self) -> int:
        return sum(self.fallthrough.values())

    def summary(self) -> str:
        lines = [f"ember eager: {self.ops_seen} op calls, {self.ops_ember} on ember kernels, "
                 f"{self.ops_fallthrough} by torch; {self.graphs_built} graphs, {self.kernels_built} kernels "
                 f"({self.kernel_configs_built} launch configs) built, {self.launches} launches"]
        for name, n in self.fallthrough.most_common():
            lines.append(f"  torch  {name:40s} x{n}  ({self.reasons.get(name, '')})")
        return "\n".join(lines)

    __str__ = summary


_stats = EagerStats()


def eager_stats() -> EagerStats:
    """The live statistics object of eager mode (see `EagerStats`)."""
    return _stats


def reset_eager_stats() -> None:
    global _stats
    _stats = EagerStats()
