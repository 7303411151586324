"""The report `ember.explain` returns: text for a terminal, Graphviz for a picture.

Each row of the kernel table is one launch the runtime makes for the example call (a kernel of the
schedule, a copy the layout needed, or a torch call), with its launch config, bytes and flops.
"""

from __future__ import annotations

import shutil
import subprocess
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..ir import Graph, Node
from ..ir.kernel_group import KernelGroup
from ..ir.ops.custom import custom_op_of
from .static import StaticGraph


@dataclass
class KernelInfo:
    """One kernel: a generated Triton kernel, or (kind "extern") a torch op ember calls."""

    index: int
    kind: str
    ops: list[str]
    shape: tuple[int, ...]
    bytes_read: int
    bytes_written: int
    flops: int
    group: KernelGroup | None = field(repr=False)  # None: a copy the layout needed (no IR node)
    launch: str = ""                                # grid, block sizes, warps ("" for torch calls)
    grid: tuple[int, ...] = ()                      # programs per grid axis (() for torch calls)
    num_warps: int | None = None
    num_stages: int | None = None                   # software-pipelining stages (None: the interpreter)
    blocks: dict[str, int] = field(default_factory=dict)  # block sizes (a matmul's BLOCK_M, BLOCK_N, BLOCK_K)
    estimate_us: float | None = None                # roofline time on the target GPU (codegen/targets.py)

    @property
    def bytes_moved(self) -> int:
        return self.bytes_read + self.bytes_written

    @property
    def custom_ops(self) -> list[str]:
        """The user ops (`ember.custom_op`) this kernel runs, in order: Triton-body ops by name, the
        nodes a torch body (or a custom VJP: `<name>.vjp`) inlined by the label they keep."""
        groups = (self.group.members or [self.group]) if self.group is not None else []
        return list(dict.fromkeys(filter(None, (custom_op_of(n) for g in groups for n in g.nodes))))


@dataclass
class FallbackInfo:
    target: str   # the aten op torch runs, e.g. "aten.cumsum.default"
    reason: str
    count: int


@dataclass
class EagerOp:
    target: str
    bytes_read: int
    bytes_written: int


def _scaled(n: float, base: int, units: tuple[str, ...]) -> str:
    """`n` in the largest unit that keeps it under `base` (the first unit: an integer count)."""
    for unit in units:
        if abs(n) < base or unit == units[-1]:
            return f"{n:.0f} {unit}".rstrip() if unit == units[0] else f"{n:.1f} {unit}"
        n /= base
    raise AssertionError("unreachable")


def _fmt_bytes(n: float) -> str:
    return _scaled(n, 1024, ("B", "KB", "MB", "GB"))


def _fmt_count(n: float) -> str:
    return _scaled(n, 1000, ("", "K", "M", "G"))


def _ratio(a: int, b: int) -> str:
    return f"{a / b:.2f}x" if b else "-"


def _table(header: list[str], rows: list[list[str]], right: set[int], indent: str = "  ") -> list[str]:
    cols = list(zip(header, *rows))
    widths = [max(len(c) for c in col) for col in cols]
    def line(cells: list[str]) -> str:
        return indent + "  ".join(c.rjust(w) if i in right else c.ljust(w)
                                  for i, (c, w) in enumerate(zip(cells, widths))).rstrip()
    return [line(header)] + [line(r) for r in rows]


@dataclass
class ExplainReport:
    name: str
    ir_before: str
    ir_after: str
    snapshots: list[tuple[str, str]]        # (pass name, printed IR after it); the first is the input
    kernels: list[KernelInfo]
    compulsory_bytes: int
    eager_ops: list[EagerOp]                 # the non-view aten ops eager PyTorch runs
    unfused_kernels: int                     # one kernel per IR op (after the pipeline)
    unfused_bytes: int
    fallbacks: list[FallbackInfo]
    graph: Graph = field(repr=False)
    static_graph: StaticGraph = field(repr=False)
    show_passes: bool = False
    guards: str | None = None                # an ember.compile'd function's programs and recompile reasons
    schedule: Any = field(default=None, repr=False)  # the runtime's schedule (runtime/schedule.py)
    gpu: Any = None                          # the GPU planned for by name (codegen/targets.GpuSpec), if any
    memory: Any = None                       # the plan's temporaries (runtime/memory.py MemoryPlan)

    @property
    def estimate_us(self) -> float | None:
        """The kernels' roofline times summed (a GPU target by name only)."""
        return sum(k.estimate_us for k in self.kernels) if self.gpu is not None else None

    @property
    def bytes_moved(self) -> int:
        return sum(k.bytes_moved for k in self.kernels)

    @property
    def flops(self) -> int:
        return sum(k.flops for k in self.kernels)

    @property
    def num_kernels(self) -> int:
        """Kernels per call: generated ones plus torch fallback calls."""
        return len(self.kernels)

    @property
    def eager_kernels(self) -> int:
        return len(self.eager_ops)

    @property
    def eager_bytes(self) -> int:
        return sum(o.bytes_read + o.bytes_written for o in self.eager_ops)

    # -- text -----------------------------------------------------------------------------------
    def __str__(self) -> str:
        out = [f"ember.explain: {self.name}", ""]
        if self.show_passes:
            prev = None
            for name, text in self.snapshots:
                title = "IR captured from aten" if name == "input" else f"IR after pass '{name}'"
                if text == prev:
                    out += [f"{title}: unchanged", ""]
                else:
                    out += [title, textwrap.indent(text, "  "), ""]
                prev = text
        else:
            out += ["IR before passes", textwrap.indent(self.ir_before, "  "), "",
                    "IR after passes", textwrap.indent(self.ir_after, "  "), ""]
        out += self._kernel_lines() + [""] + self._total_lines() + [""] + self._fallback_lines()
        if self.guards:
            out += ["", "Guards and recompiles", self.guards]
        return "\n".join(out)

    __repr__ = __str__

    def _kernel_lines(self) -> list[str]:
        gen = sum(k.kind != "extern" for k in self.kernels)
        lines = [f"Kernels: {gen} generated, {len(self.kernels) - gen} torch fallback call(s)"]
        est = self.gpu is not None
        rows = [[f"k{k.index}", "torch" if k.kind == "extern" else k.kind, str(list(k.shape)),
                 _fmt_bytes(k.bytes_read), _fmt_bytes(k.bytes_written), _fmt_count(k.flops)]
                + ([f"{k.estimate_us:.1f}"] if est else []) + [k.launch] for k in self.kernels]
        table = _table(["#", "kind", "shape", "read", "written", "flops"] + (["est us"] if est else []) + ["launch"],
                       rows, {3, 4, 5, 6} if est else {3, 4, 5})
        width = max(len(t) for t in table) + 2
        lines.append(table[0].ljust(width) + "ops")
        for row, k in zip(table[1:], self.kernels):  # ops last, wrapped under their own column
            inlined = [c for c in k.custom_ops if c not in k.ops]  # torch bodies, VJPs: "[rms_norm] mul, sum, ..."
            text = (f"[{', '.join(inlined)}] " if inlined else "") + ", ".join(k.ops)
            wrapped = textwrap.wrap(text, max(40, 120 - width)) or [""]
            lines += [row.ljust(width) + wrapped[0]] + [" " * width + w for w in wrapped[1:]]
        return lines

    def _total_lines(self) -> list[str]:
        comp = self.compulsory_bytes
        rows = [
            ["compulsory (inputs read once, outputs written once)", "", _fmt_bytes(comp), "1.00x"],
            ["ember (fused kernels)", str(self.num_kernels), _fmt_bytes(self.bytes_moved),
             _ratio(self.bytes_moved, comp)],
            ["one kernel per IR op", str(self.unfused_kernels), _fmt_bytes(self.unfused_bytes),
             _ratio(self.unfused_bytes, comp)],
            ["eager PyTorch (one kernel per aten op)", str(self.eager_kernels), _fmt_bytes(self.eager_bytes),
             _ratio(self.eager_bytes, comp)],
        ]
        lines = ["Totals"] + _table(["", "kernels", "bytes", "vs compulsory"], rows, {1, 2, 3})
        lines.append(f"  flops: {_fmt_count(self.flops)}")
        if self.memory is not None and self.memory.offsets:
            lines.append(f"  temporaries: {len(self.memory.offsets)} in a {_fmt_bytes(self.memory.slab_bytes)} slab "
                         f"shared by lifetime ({_fmt_bytes(self.memory.separate_bytes)} one by one: runtime/memory.py)")
        if self.gpu is not None:
            lines.append(f"  roofline estimate on {self.gpu.name}: {self.estimate_us:.1f} us (bytes at "
                         f"{self.gpu.bandwidth / 1e12:.2f} TB/s or flops at peak, whichever is longer, plus a "
                         f"launch each: codegen/targets.py)")
        return lines

    def _fallback_lines(self) -> list[str]:
        if not self.fallbacks:
            return ["Fallbacks to torch: none"]
        rows = [[f.target, f"x{f.count}", f.reason] for f in self.fallbacks]
        return ["Fallbacks to torch (ops ember runs by calling torch)"] + _table(["op", "calls", "why"], rows, {1})

    # -- graphviz -------------------------------------------------------------------------------
    def to_dot(self) -> str:
        """Graphviz DOT of the fused graph: one cluster per kernel, views and inputs outside."""
        ids: dict[Node, str] = {n: f"n{i}" for i, n in enumerate(self.graph.nodes)}
        in_ids = {v: f"i{i}" for i, v in enumerate(self.graph.inputs)}
        groups = [k for k in self.kernels if k.group is not None]  # (layout copies have no IR node)
        clustered = {n for k in groups for n in k.group.nodes}
        lines = ["digraph ember {", "  rankdir=TB;", '  node [shape=box, fontname="monospace", fontsize=10];']
        for v, i in in_ids.items():
            lines.append(f'  {i} [label="{_esc(f"%{v.name}: {v.type}")}", shape=ellipse];')
        for k in groups:
            label = (f"k{k.index} {'torch' if k.kind == 'extern' else k.kind}: read {_fmt_bytes(k.bytes_read)}, "
                     f"write {_fmt_bytes(k.bytes_written)}")
            color = "firebrick" if k.kind == "extern" else "steelblue"
            lines += [f"  subgraph cluster_k{k.index} {{", f'    label="{_esc(label)}";',
                      f"    style=rounded; color={color};"]
            lines += [f"    {ids[n]} [label=\"{_node_label(n)}\"];" for n in k.group.nodes]
            lines.append("  }")
        drawn = set(clustered)
        for n in self.graph.nodes:
            if n in clustered or (n.op == "full" and n.outputs[0].type.rank == 0):
                continue  # 0-dim constants are literals inside the kernels that use them
            drawn.add(n)
            lines.append(f'  {ids[n]} [label="{_node_label(n)}", style=dashed];')
        for n in self.graph.nodes:
            if n not in drawn:
                continue
            for v in dict.fromkeys(n.inputs):
                src = in_ids.get(v) or (ids[v.producer] if v.producer in drawn else None)
                if src is not None:
                    lines.append(f"  {src} -> {ids[n]};")
        for j, v in enumerate(self.graph.outputs):
            src = in_ids.get(v) or ids.get(v.producer)
            lines += [f'  o{j} [label="output {j}: {_esc(str(v.type))}", shape=ellipse];', f"  {src} -> o{j};"]
        return "\n".join(lines + ["}"]) + "\n"

    def draw(self, path: str | Path) -> Path:
        """Render `to_dot()` to `path` (format from the suffix: .svg, .png, .pdf) with Graphviz."""
        path = Path(path)
        fmt = path.suffix.lstrip(".") or "svg"
        dot = shutil.which("dot")
        if dot is not None:
            subprocess.run([dot, f"-T{fmt}", "-o", str(path)], input=self.to_dot().encode(), check=True)
            return path
        try:
            import graphviz  # type: ignore[import-not-found]

            path.write_bytes(graphviz.Source(self.to_dot()).pipe(format=fmt))
            return path
        except Exception as e:  # missing package, or the package without its `dot` program
            raise RuntimeError(
                "report.draw() needs the Graphviz `dot` program (apt-get install graphviz, brew install graphviz "
                "or conda install graphviz; `pip install graphviz` alone is not enough). Without it, write "
                f"report.to_dot() to a .dot file and render it elsewhere. ({type(e).__name__}: {e})") from None


def _esc(s: str) -> str:
    return s.replace("\\", "\\\\").replace('"', '\\"')


def _node_label(n: Node) -> str:
    what = n.attrs["target"] if n.op == "extern" else n.op
    return f"{_esc(f'%{n.outputs[0].name} = {what}')}\\n{n.outputs[0].type}"
