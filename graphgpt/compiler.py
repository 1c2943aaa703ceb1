"""The compile driver: model file -> traced graphs -> joint graph -> passes -> plan on disk.

The programs compiled from one model:
- "train" (forward at batch_size x block_size, loss, backward, clipping, optimizer update), or
  with grad_accum=K > 1 instead "accumulate" (forward, loss, backward, the gradients folded into
  accumulators in the gradient region) and "update" (allreduce, clipping, optimizer update), run
  as K accumulates and one update per step;
- "eval" (forward at batch_size x block_size, loss: nothing is updated);
- "generate" (forward at sample_batch x block_size: logits, and the greedy next token of every
  position), which also fills the key/value caches (the prefill of decoding);
- "decode" (forward of one new position per sequence, sample_batch x 1, at the position input,
  against the caches: logits and greedy next tokens), for models whose attention is
  `causal_attention` and whose positions come from `position_rows`;
- "cast_weights", in plans that compute in a narrower type than float32: the weights' copies in
  that type, which every program reads instead of casting the weights (passes/weight_copies.py);
  the optimizer update keeps them current, and the runtime runs this program after anything else
  writes the weights.
They share the persistent arena (parameters, gradients, optimizer state, weight copies, caches,
constants) and the work region, which is as large as the largest program needs.
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import math
import signal
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from . import codegen, dsl, hf, model_size, optim, viz
from .errors import ArgumentParser, UserError
from .monitor import GuardedStdout
from .ir import INT, PERSISTENT_OPS, Graph
from .kernels.gemm import lower_matmul
from .ops import REGISTRY
from .passes.chunk_classifier import chunk_classifier
from .passes.embedding_grads import one_hot_embedding_grads
from .passes.fuse import fuse, gelu_epilogues
from .passes.memory import ALIGN, CONST, Layout, ProgramMemory, persistent_layout, plan_program
from .passes.multi_tensor import merge_launches
from .passes.remat import AUTO, POLICIES, choose, rematerialize
from .passes.schedule import schedule
from .passes.simplify import simplify
from .passes.streams import assign_streams
from .passes.sum_groups import group_sums
from .passes.weight_copies import with_weight_copies
from .plan import SCHEMA_VERSION, Buffer, check_out, save
from .schedule import DECODE_POSITION, NEXT_TOKEN
from .bpe import KIND as BPE_KIND
from .bpe import VOCAB_FILES, BpeTokenizer
from .tokenizer import Tokenizer, build_tokenizer

SIZES = ("n_layer", "n_head", "n_embd", "block_size", "batch_size", "sample_batch")  # CONFIG keys that must be >= 1
COMPUTE_DTYPES = ("f32", "bf16")  # dtype=: the type activations and GEMM operands are stored in
# How a model's attention may be computed: one fused kernel that keeps no (T x T) scores, or the
# explicit scores, causal softmax and two batched GEMMs (the probabilities then live in memory,
# where --remat attention can recompute them).
ATTENTION = ("fused", "softmax")
# settings every model has, unless its CONFIG says otherwise; sample_batch: the sequences the
# generation programs compute together
# classifier_chunks: the training step's logits are computed this many chunks of the batch at a
# time (passes/chunk_classifier.py; 0: as many as keep a chunk's logits within CHUNK_BYTES)
MODEL_DEFAULTS = {"dtype": "f32", "sample_batch": 1, "classifier_chunks": 0}


@dataclass
class Compiled:
    data: dict                                   # plan.json
    files: dict[str, str | bytes] = field(default_factory=dict)
    report: str = ""
    seconds: float = 0.0                         # how long the compile took


def optimizer_settings(opt: dict) -> str:
    """The optimizer and its learning-rate schedule in one line, as the report and the screen show them."""
    decay = f", weight decay {opt['weight_decay']:g}" if opt["optimizer"] == "adamw" else ""
    return (f"{opt['optimizer']}, lr {opt['lr']:g} -> min_lr {opt['min_lr']:g}, {opt['lr_schedule']} schedule, "
            f"warmup {opt['warmup_steps']} steps, decay_steps {opt['decay_steps']}, "
            f"betas {opt['beta1']:g}/{opt['beta2']:g}, eps {opt['eps']:g}{decay}, clip {opt['grad_clip']:g}, "
            f"grad_accum {opt['grad_accum']}")


def load_model(path: Path):
    """Import a model file; errors name the file and line."""
    if path.is_dir():
        raise UserError(f"model file {path} is a directory: name the model's .py file")
    if not path.is_file():
        raise UserError(f"model file {path} does not exist" if not path.exists() else f"model file {path} is not a regular file")
    spec = importlib.util.spec_from_file_location(f"graphgpt_model_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except SyntaxError as e:
        raise UserError(f"{path.name}{'' if e.lineno is None else f':{e.lineno}'}: syntax error: {e.msg}") from None
    except (Exception, SystemExit) as e:  # the model's own code failed or exited: point at its line
        raise UserError(f"{_user_frame(e, path)}: {_failure(e)} while the model file was imported") from None
    for attr in ("CONFIG", "forward"):
        if not hasattr(module, attr):
            raise UserError(f"{path.name} defines no {attr} (a model file needs CONFIG and forward)")
    if not (isinstance(module.CONFIG, dict) and all(isinstance(k, str) for k in module.CONFIG)):
        raise UserError(f"{path.name}: CONFIG must be a dict of settings by name, got {type(module.CONFIG).__name__}")
    if not callable(module.forward):
        raise UserError(f"{path.name}: forward must be a function forward(idx, cfg)")
    return module


def _failure(e: BaseException) -> str:
    """An exception the model file raised, in words; SystemExit is the model's sys.exit()."""
    if isinstance(e, SystemExit):
        return f"the model called sys.exit({e.code!r})"
    return f"{type(e).__name__}: {e}"


def _user_frame(e: BaseException, path: Path) -> str:
    frames = [f for f in traceback.extract_tb(e.__traceback__) if Path(f.filename).resolve() == path.resolve()]
    return f"{path.name}:{frames[-1].lineno}" if frames else path.name


def parse_overrides(pairs: list[str], defaults: dict) -> dict:
    """--set key=value, typed like the default it replaces."""
    out = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep:
            raise UserError(f"--set expects key=value, got '{pair}'")
        if key not in defaults:
            raise UserError(f"unknown --set key '{key}'; known keys: {', '.join(sorted(defaults))}")
        kind = type(defaults[key])
        try:  # an integer key takes digits only: 1e30 or 2.5 is no layer count
            out[key] = int(text) if kind is int else float(text) if kind is float else text
        except ValueError:
            shown = text if len(text) <= 40 else text[:37] + "..."
            raise UserError(f"--set {key}: '{shown}' is not {'an integer (digits only)' if kind is int else 'a number'}") from None
    return out


def compile_model(model_path: Path, overrides: list[str] = (), data_path: Path | None = None,
                  tokenizer_kind: str | None = None, fusion: bool = True, remat: str = AUTO,
                  vocab_path: Path | None = None, device_bytes: int = int(model_size.DEFAULT_DEVICE_GB * 1e9),
                  log=print) -> Compiled:
    """Compile a model file into a plan. `log` gets each stage's line as it ends; the report holds
    them too. A model whose arena cannot fit `device_bytes` is refused, before tracing where its
    CONFIG says its size."""
    t0 = time.perf_counter()
    stages, show = [], log  # stages: the report's record of each one

    def log(line: str) -> None:
        stages.append(line)
        show(line)
    model_path = Path(model_path)
    module = load_model(model_path)
    model_cfg, opt_cfg = _settings(module, model_path, list(overrides))

    tokenizer = _tokenizer(data_path, tokenizer_kind, vocab_path)
    if model_cfg.get("vocab_size", 0) == 0:
        model_cfg["vocab_size"] = len(tokenizer.vocab)
    elif model_cfg["vocab_size"] < len(tokenizer.vocab):
        raise UserError(f"vocab_size {model_cfg['vocab_size']} is smaller than the tokenizer's "
                        f"{len(tokenizer.vocab)} tokens")
    model_size.check_fits(model_cfg, device_bytes)
    log(f"compiling {model_path.name}: " + " ".join(f"{k}={v}" for k, v in model_cfg.items()))
    log(f"  optimizer  {optimizer_settings(opt_cfg)}")
    source = vocab_path if tokenizer.kind == BPE_KIND else data_path and data_path.name
    log(f"  tokenizer  {tokenizer.kind}, {len(tokenizer.vocab)} tokens"
        + (f" from {source}" if source else " (fixed character set)"))

    B, T = model_cfg["batch_size"], model_cfg["block_size"]
    backward = "train" if opt_cfg["grad_accum"] == 1 else "accumulate"  # the program with the backward
    graphs = {backward: _trace(module, model_cfg, B, T, with_loss=True, training=True)}
    forward_dump = graphs[backward].summary("forward")
    graphs.update(_add_training(graphs[backward], opt_cfg))
    joint_dump = graphs[backward].summary("joint")
    graphs["eval"] = _trace(module, model_cfg, B, T, with_loss=True)
    graphs.update(_generation(module, model_cfg, len(tokenizer.vocab), log))
    graphs = with_weight_copies(graphs, model_cfg["dtype"])
    log(f"  trace      forward {len(forward_dump['nodes'])} nodes, joint {len(graphs[backward].nodes)} nodes")

    graphs = {name: one_hot_embedding_grads(simplify(g)) for name, g in graphs.items()}
    log(f"  simplify   {_node_counts(graphs)}")
    graphs[backward], chunks = chunk_classifier(graphs[backward], model_cfg["classifier_chunks"])
    log("  classifier " + (f"{chunks} chunks of {B // chunks} sequences" if chunks > 1 else "the whole batch at once"))
    unfused = graphs[backward]
    if fusion:
        graphs = {name: fuse(g) for name, g in graphs.items()}
        log(f"  fuse       {_node_counts(graphs)}")
    # every policy is planned: auto chooses by the work peaks, and the report lists them all
    variants = {policy: rematerialize(graphs[backward], policy) for policy in POLICIES}
    if fusion:  # GELU into its GEMMs' epilogues, after remat has chosen which GELU outputs to recompute;
        # then the column sums that can run together, on the final graphs
        variants = {policy: group_sums(gelu_epilogues(g)) for policy, g in variants.items()}
        graphs = {name: g if name == backward else group_sums(gelu_epilogues(g)) for name, g in graphs.items()}
    layout = persistent_layout(*graphs.values())
    peaks = {policy: plan_program(g, schedule(g), layout) for policy, g in variants.items()}
    chosen = choose({policy: m.work_size for policy, m in peaks.items()}) if remat == AUTO else remat
    graphs[backward] = variants[chosen]
    log(f"  remat      {chosen}{' (auto)' if remat == AUTO else ''}: "
        f"{len(graphs[backward].late)} activations recomputed in the backward")
    for g in graphs.values():
        g.verify()

    programs = {name: (g, peaks[chosen] if name == backward else plan_program(g, schedule(g), layout))
                for name, g in graphs.items()}
    data = _plan_data(model_path, model_cfg, opt_cfg, tokenizer, layout, programs, fusion)
    for program in data["programs"].values():
        for launch in program["launches"]:
            if launch["op"] in ("matmul", "fused_matmul"):
                launch["cuda"] = lower_matmul(launch)
    files = codegen.lower_plan(data)
    for program in data["programs"].values():  # after lowering: a kernel's launches share its scratch
        assign_streams(program, data["arena"]["regions"]["grads"])
    dumps = [forward_dump, joint_dump, graphs[backward].summary("optimized")]
    if "update" in graphs:
        dumps.append(graphs["update"].summary("update"))
    for dump in dumps:
        files[f"graphs/{dump['title']}.dot"] = viz.render_dot(dump)
        files[f"graphs/{dump['title']}.html"] = viz.render_html(dump)
    baseline = None
    if fusion:  # what fusion saved: the --no-fuse plan, measured on the same plan machinery
        unfused = rematerialize(unfused, chosen)
        baseline = _stats(unfused, plan_program(unfused, schedule(unfused), persistent_layout(unfused)))
    model_size.check_arena(data["arena"]["bytes"], device_bytes)
    log(f"  plan       {sum(len(p['launches']) for p in data['programs'].values())} launches")
    report = "\n".join(stages) + "\n\n" + _report(data, programs, backward, baseline, peaks, chosen)
    files["report.txt"] = report
    return Compiled(data, files, report, time.perf_counter() - t0)


def _add_training(graph: Graph, opt_cfg: dict) -> dict[str, Graph]:
    """Make the traced forward a training program; returns the programs that come with it."""
    loss = graph.value(graph.outputs["loss"])
    if opt_cfg["grad_accum"] == 1:
        optim.add_training(graph, loss, opt_cfg)
        return {}
    optim.add_accumulation(graph, loss, opt_cfg)
    return {"update": optim.update_program(graph.of_op("param"), opt_cfg)}


def _generation(module, cfg: dict, vocab_in_use: int, log) -> dict[str, Graph]:
    """The generate program (a whole window, which fills the key/value caches) and, where the
    model allows, the decode program (one position per sequence against the caches); their greedy
    next tokens are chosen among the tokenizer's `vocab_in_use` ids."""
    G, T = cfg["sample_batch"], cfg["block_size"]
    programs = {"generate": _trace(module, cfg, G, T, with_loss=False, caches=dsl.KvCaches(T), greedy=vocab_in_use)}
    caches = dsl.KvCaches(T)
    decode = _trace(module, cfg, G, 1, with_loss=False, caches=caches, position=True, greedy=vocab_in_use)
    if caches.layers and caches.positioned:
        programs["decode"] = decode
    else:
        why = ("its attention is not causal_attention" if not caches.layers
               else "its position rows do not come from position_rows")
        log(f"  decode     none: {why}; generation reruns the whole window per token")
    return programs


def _node_counts(graphs: dict[str, Graph]) -> str:
    return ", ".join(f"{name} {len(g.nodes)} nodes" for name, g in graphs.items())


def _settings(module, model_path: Path, overrides: list[str]) -> tuple[dict, dict]:
    """The model's CONFIG and the optimizer's DEFAULTS with --set applied, range-checked."""
    model_cfg, opt_cfg = {**MODEL_DEFAULTS, **module.CONFIG}, dict(optim.DEFAULTS)
    chosen = parse_overrides(overrides, {**model_cfg, **opt_cfg})
    model_cfg.update({k: v for k, v in chosen.items() if k in model_cfg})
    opt_cfg.update({k: v for k, v in chosen.items() if k in opt_cfg})
    for key in ("batch_size", "block_size"):
        if key not in model_cfg:
            raise UserError(f"{model_path.name}: CONFIG has no {key} (a model needs batch_size and block_size)")
    origin = _origin(overrides, module.CONFIG, model_path.name)
    optim.check(opt_cfg, origin)
    check_model_config(model_cfg, origin)
    return model_cfg, opt_cfg


def _origin(overrides: list[str], config: dict, model_name: str):
    """Where a setting's value came from, for error messages: --set, the model file or the default."""
    given = dict(pair.partition("=")[::2] for pair in overrides)

    def origin(key: str) -> str:
        if key in given:
            return f"--set {key}={given[key]}"
        if key in config:
            return f"{model_name}: CONFIG {key}={config[key]}"
        return f"{key}={({**MODEL_DEFAULTS, **optim.DEFAULTS})[key]} (the default)"
    return origin


def check_model_config(cfg: dict, origin=None) -> None:
    """Refuse model settings outside their range, for the keys the CONFIG has (every float must be
    finite)."""
    need = optim.requirement(cfg, origin)
    for key in SIZES:
        if key in cfg:
            need(key, isinstance(cfg[key], int) and cfg[key] >= 1, "an integer >= 1")
    if "vocab_size" in cfg:
        need("vocab_size", isinstance(cfg["vocab_size"], int) and cfg["vocab_size"] >= 0,
             "an integer >= 0 (0: the tokenizer's size)")
    if "dtype" in cfg:
        need("dtype", cfg["dtype"] in COMPUTE_DTYPES, " or ".join(COMPUTE_DTYPES))
    if "attention" in cfg:
        need("attention", cfg["attention"] in ATTENTION, " or ".join(ATTENTION))
    if "tie_weights" in cfg:
        need("tie_weights", cfg["tie_weights"] in (0, 1), "0 or 1")
    if "classifier_chunks" in cfg:
        need("classifier_chunks", isinstance(cfg["classifier_chunks"], int) and cfg["classifier_chunks"] >= 0
             and cfg.get("batch_size", 1) % max(cfg["classifier_chunks"], 1) == 0,
             f"an integer >= 0 that divides batch_size {cfg.get('batch_size')} (0: chosen by the logits' size)")
    if "dropout" in cfg:
        need("dropout", isinstance(cfg["dropout"], (int, float)) and 0 <= cfg["dropout"] < 1, "a probability in [0, 1)")
    if "n_embd" in cfg and "n_head" in cfg and cfg["n_embd"] % cfg["n_head"]:
        raise UserError(f"n_embd {cfg['n_embd']} is not divisible by n_head {cfg['n_head']}")
    for key, value in cfg.items():
        if isinstance(value, float):
            need(key, math.isfinite(value), "a finite number")


def _tokenizer(data_path: Path | None, kind: str | None, vocab_path: Path | None = None) -> Tokenizer:
    if kind == BPE_KIND:
        if vocab_path is None:
            raise UserError("--tokenizer gpt2 reads GPT-2's vocabulary from disk: pass --vocab PATH "
                            f"(encoder.json, vocab.json, a .tiktoken file, or a directory holding {' or '.join(VOCAB_FILES)})")
        return BpeTokenizer.from_file(vocab_path)
    if vocab_path is not None:
        raise UserError("--vocab is GPT-2's vocabulary, for --tokenizer gpt2")
    if data_path is None:
        if kind == "word":
            raise UserError("the word tokenizer builds its vocabulary from data: pass --data FILE")
        return build_tokenizer("char", None)
    from .data import read_corpus
    return build_tokenizer(kind or "word", read_corpus(data_path))


def _trace(module, cfg: dict, batch: int, seq: int, with_loss: bool, training: bool = False,
           caches: dsl.KvCaches | None = None, position: bool = False, greedy: int = 0) -> Graph:
    """One program's graph; `position`: the caches' decoding position is an input; `greedy`: the
    logits come with each position's most likely token among the first `greedy` ids."""
    def build(tracer: dsl.Tracer) -> None:
        idx = tracer.input("tokens", (batch, seq), INT)
        if position:
            caches.position = tracer.input(DECODE_POSITION, (), INT)
        logits = module.forward(idx, dict(cfg))
        if not isinstance(logits, dsl.Value) or logits.shape != (batch, seq, cfg["vocab_size"]):
            got = logits.shape if isinstance(logits, dsl.Value) else type(logits).__name__
            raise UserError(f"forward must return logits of shape {(batch, seq, cfg['vocab_size'])}, got {got}")
        if with_loss:
            targets = tracer.input("targets", (batch, seq), INT)
            tracer.graph.outputs["loss"] = dsl.cross_entropy(logits, targets).id
        else:
            tracer.graph.outputs["logits"] = logits.id
            if greedy:
                tracer.graph.outputs[NEXT_TOKEN] = logits.graph.add("argmax", (logits,), limit=greedy).id
    try:
        return dsl.trace(build, cfg["dtype"], training, caches).graph
    except UserError:
        raise
    except (Exception, SystemExit) as e:
        path = Path(module.__file__)
        raise UserError(f"{_user_frame(e, path)}: {_failure(e)}") from None


def _plan_data(model_path: Path, model_cfg: dict, opt_cfg: dict, tokenizer: Tokenizer, layout: Layout,
               programs: dict[str, tuple[Graph, ProgramMemory]], fusion: bool) -> dict:
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
    tensors = sorted(by_name.values(), key=lambda t: t["offset"])
    work = max(m.work_size for _, m in programs.values())
    layout.regions["work"] = [layout.work_base, work]
    identity = {"model": model_path.read_text(), "config": model_cfg, "optimizer": opt_cfg,
                "tokenizer": tokenizer.to_json()}
    return {
        "schema_version": SCHEMA_VERSION,
        "model_hash": hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest(),
        "model_file": model_path.name,
        "config": model_cfg,
        "optimizer": opt_cfg,
        "arena": {"bytes": layout.work_base + work, "align": ALIGN, "regions": layout.regions},
        "tensors": tensors,
        "consts": {"dtype": CONST, "values": [[off, value] for value, off in
                                             sorted(layout.consts.items(), key=lambda kv: kv[1])]},
        "programs": {name: _program(g, mem, fusion, layout.work_base) for name, (g, mem) in programs.items()},
        "tokenizer": tokenizer.to_json(),
    }


def _program(graph: Graph, mem: ProgramMemory, fusion: bool, work_start: int) -> dict:
    def buf(nid: int) -> Buffer:
        n = graph.nodes[nid]
        return Buffer(n.dtype, mem.offsets[nid], n.shape)

    launches, projections = [], graph.projections()
    for nid in mem.launches:
        n = graph.nodes[nid]
        outs = {"out": buf(nid)} if not n.specs else {"out": buf(projections[nid][0]),
                                                       "outs": [buf(o) for o in projections[nid]]}
        launches.append({"op": n.op, "kind": REGISTRY[n.op].kind, **outs, "in": [buf(i) for i in n.inputs],
                         "attrs": {k: v for k, v in n.attrs}, "node": nid, "where": n.where})
    for new, state in mem.copies:
        launches.append({"op": "copy", "kind": REGISTRY["copy"].kind, "out": buf(state), "in": [buf(new)],
                         "attrs": {}, "node": new, "where": "update of " + graph.nodes[state].name})
    if fusion:
        launches = merge_launches(launches, work_start)
    inputs = {n.name: buf(n.id) for n in graph.of_op("input")}
    return {
        "inputs": dict(sorted(inputs.items())),
        "outputs": {k: buf(v) for k, v in graph.outputs.items()},
        "launches": launches,
        "memory": {"work_peak": mem.work_size, "work_sum": mem.work_sum, "work_lower_bound": mem.lower_bound},
        "matmul_flops": _stats(graph, mem)["flops"],  # per run, of the matrix products (for MFU)
    }


def _stats(graph: Graph, mem: ProgramMemory) -> dict:
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


def _report(data: dict, programs, backward: str, unfused: dict | None, remat: dict[str, ProgramMemory],
            chosen: str) -> str:
    """The numbers of every program; for the one with the backward also those of each --remat policy
    and of the plan without fusion."""
    def mib(nbytes: int) -> str:
        return f"{nbytes / 2**20:9.2f} MiB"

    regions = data["arena"]["regions"]
    n_params = sum(_numel(t["shape"]) for t in data["tensors"] if t["kind"] == "param")
    lines = [f"graphgpt compile report ({data['model_file']}, activations in {data['config'].get('dtype', 'f32')})",
             f"parameters            {n_params:,}",
             f"arena                 {mib(data['arena']['bytes'])}"]
    for name in ("params", "grads", "state", "consts", "inputs", "work", "caches"):
        lines.append(f"  {name:<19} {mib(regions[name][1])}" + ("  (generation's, within work)" if name == "caches" else ""))
    for name, (graph, mem) in programs.items():
        st = dict(_stats(graph, mem), launches=len(data["programs"][name]["launches"]))  # multi-tensor joins
        lines += [f"program {name}",
                  f"  launches            {st['launches']}",
                  f"  bytes moved (est.)  {st['bytes'] / 1e9:9.2f} GB",
                  f"  matmul FLOPs        {st['flops'] / 1e9:9.2f} GFLOP",
                  f"  work peak           {mib(mem.work_size)}",
                  f"  work lower bound    {mib(mem.lower_bound)}  (most bytes live at once)",
                  f"  sum of buffers      {mib(mem.work_sum)}  (no reuse)"]
        if name == backward:
            lines += [f"  --remat {policy:<11}{mib(m.work_size)}  (work peak; lower bound {mib(m.lower_bound).strip()})"
                      + ("  <- this plan" if policy == chosen else "")
                      for policy, m in remat.items()]
        if name == backward and unfused:
            lines += [f"  without fusion      {unfused['launches']} launches, "
                      f"{unfused['bytes'] / 1e9:.2f} GB moved "
                      f"({st['launches'] / unfused['launches']:.2f}x launches, "
                      f"{st['bytes'] / unfused['bytes']:.2f}x bytes)"]
    return "\n".join(lines) + "\n"


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def summary(compiled: Compiled, out: Path) -> str:
    """What the screen shows of a compile: the plan's size in one line, its optimizer in the next."""
    data = compiled.data
    n_params = sum(_numel(t["shape"]) for t in data["tensors"] if t["kind"] == "param")
    launches = sum(len(p["launches"]) for p in data["programs"].values())
    return (f"compiled {data['model_file']} in {compiled.seconds:.1f} s: {n_params:,} parameters, "
            f"arena {data['arena']['bytes'] / 2**20:.2f} MiB, {launches} launches in {len(data['programs'])} programs; "
            f"report: {out / 'report.txt'}\n"
            f"optimizer {optimizer_settings(data['optimizer'])}\n")


def _gigabytes(text: str) -> int:
    """--device-memory: GB (10^9 bytes), a finite number > 0, as bytes."""
    try:
        gb = float(text)
    except ValueError:
        gb = math.nan
    if not (math.isfinite(gb) and gb > 0):
        raise argparse.ArgumentTypeError(f"'{text}' is not a size in GB > 0")
    return int(gb * 1e9)


SETTINGS_HELP = (
    "--set KEY=VALUE keys: the model file's CONFIG keys (model.py: n_layer, n_head, n_embd, block_size, batch_size, "
    "vocab_size, attention, dropout, tie_weights), " + ", ".join(f"{k}={v}" for k, v in MODEL_DEFAULTS.items())
    + ", and the optimizer with its learning-rate schedule (defaults): "
    + " ".join(f"{k}={v}" for k, v in optim.DEFAULTS.items())
    + ". Integer keys take digits only. The report (DIR/report.txt) lists every setting.")


def main(argv=None) -> int:
    sys.stdout = GuardedStdout(sys.stdout)  # `| head -1`: the plan is written all the same
    p = ArgumentParser(prog="tools/compile.py", description=(
        "Compile a GPT-2 model file into a training plan: trace, autodiff, optimizer, passes, "
        "memory plan, graph dumps."), epilog=SETTINGS_HELP)
    p.add_argument("model", type=Path, nargs="?", help="the model file (CONFIG + forward), e.g. model.py")
    p.add_argument("--out", type=Path, default=Path("compiled"), help="plan directory (default: compiled/)")
    p.add_argument("--set", dest="overrides", action="append", nargs="+", default=[], metavar="KEY=VALUE",
                   help="override a CONFIG key, the compute type (dtype=f32|bf16), sample_batch, "
                        "classifier_chunks (the training logits' chunks of the batch; 0: by their size) "
                        "or an optimizer key (see below), e.g. --set n_layer=2 n_embd=128 (repeatable)")
    p.add_argument("--hf-config", type=Path, metavar="DIR",
                   help="the model's sizes from a Hugging Face directory's config.json: a GPT-2's for model.py, "
                        "a LLaMA's for models/llama.py (--set overrides them)")
    p.add_argument("--data", type=Path, help="build the tokenizer's vocabulary from this text file")
    p.add_argument("--tokenizer", choices=("word", "char", BPE_KIND),
                   help="word (the seed's; default with --data), char (default without) or gpt2 "
                        "(GPT-2's byte-level BPE, from --vocab)")
    p.add_argument("--vocab", type=Path, metavar="PATH",
                   help="GPT-2's vocabulary for --tokenizer gpt2: its encoder.json, a Hugging Face "
                        "vocab.json, a .tiktoken file, or a directory holding one; read from disk, "
                        "never downloaded")
    p.add_argument("--no-fuse", action="store_true", help="one kernel per op: no fusion pass")
    p.add_argument("--remat", choices=(AUTO, *POLICIES), default=AUTO,
                   help="activations recomputed in the backward instead of kept: none, attention (the "
                        "attention probabilities), gelu (the MLP's GELU outputs), all (attention "
                        "probabilities, LayerNorm and GELU outputs), or auto "
                        "(default: attention where that saves a quarter of the work memory, else none)")
    p.add_argument("--device-memory", type=_gigabytes, default=int(model_size.DEFAULT_DEVICE_GB * 1e9), metavar="GB",
                   help=f"memory of the largest device the plan is for; a larger model is refused before it "
                        f"is traced (default: {model_size.DEFAULT_DEVICE_GB:g}, an H200's)")
    args = p.parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    overrides = [pair for group in args.overrides for pair in group]
    if args.model is None:  # --set takes every word up to the next option, a model file after it too
        stray = [pair for pair in overrides if "=" not in pair]
        p.error(f"--set takes KEY=VALUE up to the next option and got '{stray[0]}': name the model file before --set"
                if stray else "the following arguments are required: model")
    try:
        check_out(args.out)  # before any work: a bad --out costs nothing
        if args.hf_config:  # first, so that an explicit --set of the same key wins
            overrides = hf.settings(args.hf_config) + overrides
        compiled = compile_model(args.model, overrides, args.data, args.tokenizer, fusion=not args.no_fuse,
                                 remat=args.remat, vocab_path=args.vocab, device_bytes=args.device_memory,
                                 log=lambda line: None)
        save(compiled.data, args.out, compiled.files)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, Terminated) as e:  # save's staging directory is gone already
        what = "terminated by SIGTERM" if isinstance(e, Terminated) else "interrupted"
        print(f"{what}: --out {args.out} left as it was", file=sys.stderr)
        return 128 + (signal.SIGTERM if isinstance(e, Terminated) else signal.SIGINT)
    print(summary(compiled, args.out), end="")
    return 0


class Terminated(BaseException):
    """SIGTERM, raised where the compile is so that it unwinds as Ctrl-C does (no model file's
    `except Exception` catches it) and a plan half written is removed."""


def _terminate(signum, frame):
    raise Terminated
