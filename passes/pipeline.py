"""The ordered pass pipeline. Each pass is `Graph -> Graph`; the verifier runs after each and a
snapshot of the printed IR is kept, so `ember.explain` can show the graph after every pass."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from ..ir import Graph, verify
from .attention import fuse_attention
from .constant_fold import constant_fold
from .cse import cse
from .dce import dce
from .decompose import decompose
from .materialize_outputs import materialize_outputs
from .simplify import simplify

Pass = Callable[[Graph], Graph]

PIPELINE: list[tuple[str, Pass]] = [
    ("decompose", decompose),
    ("constant_fold", constant_fold),
    ("simplify", simplify),
    ("attention", fuse_attention),  # explicit softmax(q k^T) v -> one flash kernel
    ("cse", cse),
    ("dce", dce),
    ("materialize_outputs", materialize_outputs),
]


@dataclass
class PipelineResult:
    graph: Graph
    snapshots: list[tuple[str, str]] = field(default_factory=list)  # (pass name, printed IR after it)


def run_pipeline(graph: Graph, passes: list[tuple[str, Pass]] | None = None,
                 on_pass: Callable[[str], None] | None = None) -> PipelineResult:
    """`on_pass(name)` is called as each pass starts (the frontend's progress report of a long compile)."""
    verify(graph)
    result = PipelineResult(graph, [("input", str(graph))])
    for name, fn in passes if passes is not None else PIPELINE:
        if on_pass is not None:
            on_pass(name)
        graph = verify(fn(graph))
        result.snapshots.append((name, str(graph)))
    result.graph = graph
    return result
