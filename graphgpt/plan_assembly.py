"""Plan assembly: the planned programs' graphs and memory as plan.json's data (identity, settings,
arena, tensors, constants, launches), before the kernels are lowered."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from .ir import PERSISTENT_OPS, Graph
from .ops import REGISTRY
from .ops.source import const_tensor_values
from .passes.memory import CONST, Layout, ProgramMemory
from .plan import ALIGN, CONSTANTS_FILE, SCHEMA_VERSION, Buffer, Launch, Program
from .tensor_files import safetensors_bytes
from .target import Target
from .tokenizer import Tokenizer


def plan_data(model_path: Path, model_cfg: dict, opt_cfg: dict, tokenizer: Tokenizer, layout: Layout,
              programs: dict[str, tuple[Graph, ProgramMemory]], target: Target) -> dict:
    """plan.json's contents before kernel lowering: the identity, settings, arena, tensors, constants
    and every program's launches, for `target`."""
    by_name = {}  # gradient accumulators are not listed: they are their parameters' "grad" slots
    for graph, _ in programs.values():
        for n in graph.of_op(*PERSISTENT_OPS):
            a = n.attr
            if "grad_of" in a or n.name in by_name:
                continue
            t = {"name": n.name, "kind": n.op, "dtype": n.dtype, "shape": list(n.shape), "offset": layout.tensors[n.name],
                 "init": a.get("init", "zeros"), "std": a.get("std", 0.0)}
            if n.op == "param":
                t["grad"] = layout.grads[n.name]
            by_name[n.name] = t
    # by kind, each in the model's order (which initial weights are drawn in), not the arena's
    tensors = sorted(by_name.values(), key=lambda t: PERSISTENT_OPS.index(t["kind"]))
    work = max(m.work_size for _, m in programs.values())
    layout.regions["work"] = [layout.work_base, work]
    identity = {"model": model_path.read_text(), "config": model_cfg, "optimizer": opt_cfg,
                "tokenizer": tokenizer.to_json()}
    consts = {"dtype": CONST, "values": [[off, value] for value, off in
                                         sorted(layout.consts.items(), key=lambda kv: kv[1])]}
    tables = _const_tensors(programs)
    if tables:
        consts["tensors"] = [{"name": n.name, "dtype": n.dtype, "shape": list(n.shape),
                              "offset": layout.const_tensors[n.name]} for n in tables]
    return {
        "schema_version": SCHEMA_VERSION,
        "model_hash": hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest(),
        "model_file": model_path.name,
        "target": target.to_json(),
        "config": model_cfg,
        "optimizer": opt_cfg,
        "arena": {"bytes": layout.work_base + work, "align": ALIGN, "regions": layout.regions},
        "tensors": tensors,
        "consts": consts,
        "programs": {name: _program(g, mem) for name, (g, mem) in programs.items()},
        "tokenizer": tokenizer.to_json(),
    }


def _const_tensors(programs: dict[str, tuple[Graph, ProgramMemory]]) -> list:
    """The plan's constant tensors, one node per name, in the order of first appearance (their
    order in the arena)."""
    return list({n.name: n for graph, _ in programs.values() for n in graph.of_op("const_tensor")}.values())


def constant_files(programs: dict[str, tuple[Graph, ProgramMemory]]) -> dict[str, bytes]:
    """CONSTANTS_FILE: each constant tensor's values, computed in float64 and stored as float32
    (nothing where the plan has none)."""
    tables = _const_tensors(programs)
    if not tables:
        return {}
    return {CONSTANTS_FILE: safetensors_bytes({n.name: const_tensor_values(n.attr).astype(np.float32) for n in tables})}


def _program(graph: Graph, mem: ProgramMemory) -> Program:
    def buf(nid: int) -> Buffer:
        n = graph.nodes[nid]
        return Buffer(n.dtype, mem.offsets[nid], n.shape)

    launches, projections = [], graph.projections()
    for nid in mem.launches:
        n = graph.nodes[nid]
        outs = {"out": buf(nid)} if not n.specs else {"out": buf(projections[nid][0]),
                                                       "outs": tuple(buf(o) for o in projections[nid])}
        launches.append(Launch(op=n.op, kind=REGISTRY[n.op].kind, **outs, ins=tuple(buf(i) for i in n.inputs),
                               attrs={k: v for k, v in n.attrs}, node=nid, where=n.where))
    for new, state in mem.copies:
        launches.append(Launch(op="copy", kind=REGISTRY["copy"].kind, out=buf(state), ins=(buf(new),),
                               node=new, where="update of " + graph.nodes[state].name))
    inputs = {n.name: buf(n.id) for n in graph.of_op("input")}
    return Program(
        inputs=dict(sorted(inputs.items())),
        outputs={k: buf(v) for k, v in graph.outputs.items()},
        launches=tuple(launches),
        memory={"work_peak": mem.work_size, "work_sum": mem.work_sum, "work_lower_bound": mem.lower_bound},
        matmul_flops=program_stats(graph, mem)["flops"],  # per run, of the matrix products (for MFU)
    )


def program_stats(graph: Graph, mem: ProgramMemory) -> dict:
    """Launches, FLOPs and an estimate of the bytes a step moves (each launch reads its inputs
    and writes its output once; views move nothing)."""
    moved, projections = 0, graph.projections()
    for nid in mem.launches:
        n = graph.nodes[nid]
        if REGISTRY[n.op].kind != "collective":
            written = sum(graph.nodes[o].nbytes for o in projections[nid]) if n.specs else n.nbytes
            moved += written + sum(graph.nodes[i].nbytes for i in set(n.inputs))
    moved += sum(graph.nodes[new].nbytes * 2 for new, _ in mem.copies)
    flops = sum(REGISTRY[n.op].flops(n.attr, n.spec, *(graph.nodes[i].spec for i in n.inputs))
                for n in graph.nodes.values())
    return {"launches": len(mem.launches) + len(mem.copies), "bytes": moved, "flops": flops}
