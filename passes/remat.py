"""Partition a joint forward+backward graph into a forward and a backward graph, recomputing cheap
values in the backward instead of saving them (rematerialization).

Policy: a **min-cut**, as in AOTAutograd's `min_cut_rematerialization_partition`. Every value `v` of
the joint graph becomes two vertices `v_in -> v_out` of a flow network, joined by an edge whose
capacity is the cost of saving `v` (its bytes, times 1.1 per step of distance from the backward, so
that among equal sizes the value nearest the backward is saved and less is recomputed; a primal
input costs a tenth of its bytes, since the caller holds it anyway, so layout views and pointwise
functions of inputs are recomputed from the inputs rather than saved); every use
`u -> v` is an infinite edge `u_out -> v_in`. The source feeds the primal inputs and every value the
forward computes anyway with an op that must not be recomputed (matmul, reductions, extern calls:
expensive, or random); the backward's needs feed the sink (values depending on a cotangent must be
computed in the backward; the gradients must be available there). A minimum cut is the cheapest set
of values to save: whatever the backward needs beyond them (pointwise and layout ops, constants) is
recomputed there. Constants (`full`, `arange`, `iota`) have no inputs, so they are never saved.

`policy="naive"` is the baseline without recomputation: the backward gets every value the forward
computes that a backward node uses (what a tape would keep), and nothing is recomputed.

Convention (what the autograd bridge builds on)
-----------------------------------------------
`partition(joint, num_inputs, num_outputs, policy="mincut") -> Partition` takes a joint graph whose
first `num_inputs` inputs are the primal inputs and whose remaining inputs are cotangents, and whose
first `num_outputs` outputs are the forward outputs and whose remaining outputs are gradients (the
layout `autodiff.vjp_graph` produces). It returns:

- `forward`: primal inputs -> forward outputs + saved activations (`num_saved` of them, after the
  forward outputs; a saved value may also be a forward output, then it is listed twice);
- `backward`: saved activations + the primal inputs listed in `saved_inputs` (by index; the caller
  passes its own input tensors, the forward does not return them) + cotangents -> gradients.

`saved_bytes` counts both (activations and saved inputs); `saved_activation_bytes` only the former.
Both graphs are verified; run them through `passes.run_pipeline` before compiling.
"""

from __future__ import annotations

from dataclasses import dataclass

import networkx as nx

from ..ir import Graph, Node, TensorType, Value, get_op, verify

# Op kinds never recomputed in the backward when the forward computes them anyway.
NO_RECOMPUTE_KINDS = ("matmul", "conv", "attention", "reduction", "scan", "scatter", "extern", "composite")
POLICIES = ("mincut", "naive")
# Saving a primal input costs little: the caller holds it anyway (eager autograd saves it by reference).
PRIMAL_SAVE_FACTOR = 0.1


@dataclass
class Partition:
    forward: Graph
    backward: Graph
    num_outputs: int              # forward outputs; forward.outputs[num_outputs:] are the saved activations
    saved_inputs: list[int]       # primal input indices the backward also takes (after the saved activations)
    saved_types: list[TensorType]  # types of saved activations, then of saved inputs
    policy: str

    @property
    def num_saved(self) -> int:
        return len(self.forward.outputs) - self.num_outputs

    @property
    def saved_activation_bytes(self) -> int:
        return sum(t.nbytes for t in self.saved_types[:self.num_saved])

    @property
    def saved_bytes(self) -> int:
        return sum(t.nbytes for t in self.saved_types)


def _ancestors(roots, stop: set[Value] = frozenset()) -> set[Node]:
    """Nodes needed to compute `roots`, not looking past values in `stop`."""
    seen: set[Node] = set()
    stack = [v for v in roots if v not in stop]
    visited: set[Value] = set()
    while stack:
        v = stack.pop()
        if v in visited:
            continue
        visited.add(v)
        p = v.producer
        if p is None or p in seen:
            continue
        seen.add(p)
        stack.extend(x for x in p.inputs if x not in stop)
    return seen


def _extract(joint: Graph, inputs: list[Value], outputs: list[Value], names: list[str]) -> Graph:
    """A graph computing `outputs` from `inputs` with the joint graph's nodes (in its order)."""
    stop = set(inputs)
    needed = _ancestors(outputs, stop)
    g = Graph()
    env = {v: g.add_input(v.type, name) for v, name in zip(inputs, names)}
    for node in joint.nodes:
        if node not in needed:
            continue
        missing = [v for v in node.inputs if v not in env]
        if missing:
            raise RuntimeError(f"partition: {node} needs %{missing[0].name}, which is neither computed nor an input")
        new = Node(node.op, [env[v] for v in node.inputs], node.attrs, [v.type for v in node.outputs], node.label)
        g.nodes.append(new)
        env.update(zip(node.outputs, new.outputs))
    for v in outputs:
        if v not in env:
            raise RuntimeError(f"partition: output %{v.name} is neither computed nor an input")
    g.set_outputs(env[v] for v in outputs)
    return verify(g)


def _mincut_saved(joint: Graph, primals: list[Value], tangents: list[Value], fwd_outs: list[Value],
                  grads: list[Value]) -> set[Value]:
    primal_set = set(primals)
    fw_values = primal_set | {v for n in _ancestors(fwd_outs) for v in n.outputs}
    tangent_dep: set[Value] = set(tangents)
    for n in joint.nodes:
        if any(v in tangent_dep for v in n.inputs):
            tangent_dep.update(n.outputs)

    # Distance of each value from the backward (0: depends on a cotangent), to break ties.
    users = joint.users()
    dist: dict[Value, int] = {}
    for v in reversed(list(joint.inputs) + [v for n in joint.nodes for v in n.outputs]):
        if v in tangent_dep:
            dist[v] = 0
        else:
            dist[v] = min((dist[w] + 1 for u in users.get(v, []) for w in u.outputs), default=100)

    G = nx.DiGraph()
    inf = float("inf")
    G.add_node("source")
    G.add_node("sink")
    for v in dist:
        weight = max(v.type.nbytes, 1) * (PRIMAL_SAVE_FACTOR if v in primal_set else 1.1 ** min(dist[v], 100))
        G.add_edge((v, "in"), (v, "out"), capacity=weight)
        p = v.producer
        if v in tangent_dep:
            G.add_edge((v, "in"), "sink", capacity=inf)  # depends on a cotangent: computed in the backward
        elif p is None or (v in fw_values and get_op(p.op).kind in NO_RECOMPUTE_KINDS):
            G.add_edge("source", (v, "in"), capacity=inf)  # a primal, or computed in the forward and kept there
        for x in p.inputs if p is not None else ():
            G.add_edge((x, "out"), (v, "in"), capacity=inf)
    for v in grads:
        G.add_edge((v, "out"), "sink", capacity=inf)  # the backward returns it: saved or computed there
    _, (reachable, _) = nx.minimum_cut(G, "source", "sink")
    return {v for v in dist if (v, "in") in reachable and (v, "out") not in reachable}


def _naive_saved(joint: Graph, primals: list[Value], fwd_outs: list[Value], grads: list[Value]) -> set[Value]:
    fw_nodes = _ancestors(fwd_outs)
    fw_values = set(primals) | {v for n in fw_nodes for v in n.outputs}
    bw_nodes = _ancestors(grads, fw_values)
    return {v for n in bw_nodes for v in n.inputs if v in fw_values} | {v for v in grads if v in fw_values}


def partition(joint: Graph, num_inputs: int, num_outputs: int, policy: str = "mincut") -> Partition:
    """Split `joint` (primal inputs + cotangents -> forward outputs + gradients) into forward and
    backward graphs; see the module docstring for the convention and the policy."""
    if policy not in POLICIES:
        raise ValueError(f"partition policy must be one of {POLICIES}, got {policy!r}")
    if any(v.name is None for v in joint.inputs):
        joint.name_values()
    primals, tangents = list(joint.inputs[:num_inputs]), list(joint.inputs[num_inputs:])
    fwd_outs, grads = list(joint.outputs[:num_outputs]), list(joint.outputs[num_outputs:])
    if policy == "mincut":
        saved = _mincut_saved(joint, primals, tangents, fwd_outs, grads)
    else:
        saved = _naive_saved(joint, primals, fwd_outs, grads)
    # Keep only what the backward actually reads (a cut may list values nothing downstream needs).
    stop = saved | set(tangents)
    read = {v for n in _ancestors(grads, stop) for v in n.inputs} | set(grads)
    saved = {v for v in saved if v in read}
    order = {v: i for i, v in enumerate(list(joint.inputs) + [v for n in joint.nodes for v in n.outputs])}
    saved_inputs = [i for i, v in enumerate(primals) if v in saved]
    activations = sorted((v for v in saved if v.producer is not None), key=order.__getitem__)
    if any(v in set(tangents) for v in saved):
        raise RuntimeError("partition: a cotangent was chosen as a saved value")

    forward = _extract(joint, primals, fwd_outs + activations, [v.name or f"in{i}" for i, v in enumerate(primals)])
    bw_inputs = activations + [primals[i] for i in saved_inputs] + tangents
    bw_names = ([f"saved{k}" for k in range(len(activations))] + [primals[i].name or f"in{i}" for i in saved_inputs]
                + [v.name or f"ct{k}" for k, v in enumerate(tangents)])
    backward = _extract(joint, bw_inputs, grads, bw_names)
    types = [v.type for v in activations] + [primals[i].type for i in saved_inputs]
    return Partition(forward, backward, num_outputs, saved_inputs, types, policy)
