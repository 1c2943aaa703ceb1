"""The compile pipeline: model file -> traced graphs -> joint graph (autodiff, optimizer) -> passes
-> plan data -> kernels lowered for the target. The command line is compile_cli.py, the model file
and its settings model_file.py, plan assembly plan_assembly.py and the report compile_report.py.

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
  `causal_attention` and whose positions come from `position_rows` or `rotary`;
- "cast_weights", in plans that compute in a narrower type than float32: the weights' copies in
  that type, which every program reads instead of casting the weights (passes/weight_copies.py);
  the optimizer update keeps them current, and the runtime runs this program after anything else
  writes the weights.
They share the persistent arena (parameters, gradients, optimizer state, weight copies, caches,
constants) and the work region, which is as large as the largest program needs.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from . import dsl, model_size, optim, viz
from .bpe import KIND as BPE_KIND
from .compile_report import optimizer_settings, report
from .dtypes import E5M2
from .errors import UserError
from .ir import INT, Graph
from .model_file import failure, load_model, settings, user_frame
from .passes.chunk_classifier import chunk_classifier
from .passes.embedding_grads import embedding_grads
from .passes.fp8 import fp8_products
from .passes.fuse import fuse, gelu_epilogues
from .passes.memory import persistent_layout, plan_program
from .passes.remat import AUTO, POLICIES, choose, rematerialize
from .passes.schedule import schedule
from .passes.simplify import simplify
from .passes.sum_groups import group_sums
from .passes.weight_copies import with_weight_copies
from .lowering import lower
from .plan_assembly import constant_files, plan_data, program_stats
from .schedule import DECODE_POSITION, NEXT_TOKEN
from .target import DEFAULT, Target
from .tokenizer import compile_tokenizer


@dataclass
class Compiled:
    data: dict                                   # plan.json
    files: dict[str, str | bytes] = field(default_factory=dict)
    report: str = ""
    seconds: float = 0.0                         # how long the compile took


def compile_model(model_path: Path, overrides: list[str] = (), data_path: Path | None = None,
                  tokenizer_kind: str | None = None, fusion: bool = True, remat: str = AUTO,
                  vocab_path: Path | None = None, device_bytes: int = int(model_size.DEFAULT_DEVICE_GB * 1e9),
                  target: Target = DEFAULT, log=print, vocab_in_use: int | None = None) -> Compiled:
    """Compile a model file into a plan whose kernels are sized for `target`. `log` gets each
    stage's line as it ends; the report holds them too. A model whose arena cannot fit
    `device_bytes` is refused, before tracing where its CONFIG says its size. Greedy generation
    chooses among the tokenizer's ids, or the first `vocab_in_use` (a Hugging Face directory's
    vocabulary, as transformers chooses)."""
    t0 = time.perf_counter()
    stages, show = [], log  # stages: the report's record of each one

    def log(line: str) -> None:
        stages.append(line)
        show(line)
    model_path = Path(model_path)
    module = load_model(model_path)
    model_cfg, opt_cfg = settings(module, model_path, list(overrides))

    tokenizer = compile_tokenizer(data_path, tokenizer_kind, vocab_path)
    if model_cfg.get("vocab_size", 0) == 0:
        model_cfg["vocab_size"] = len(tokenizer.vocab)
    elif model_cfg["vocab_size"] < len(tokenizer.vocab):
        raise UserError(f"vocab_size {model_cfg['vocab_size']} is smaller than the tokenizer's "
                        f"{len(tokenizer.vocab)} tokens")
    with _model_code(module):
        model_size.check_fits(model_cfg, device_bytes, getattr(module, "parameters", None))
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
    graphs.update(_generation(module, model_cfg, min(vocab_in_use or len(tokenizer.vocab), model_cfg["vocab_size"]), log))
    graphs = with_weight_copies(graphs, model_cfg["dtype"])
    log(f"  trace      forward {len(forward_dump['nodes'])} nodes, joint {len(graphs[backward].nodes)} nodes")

    graphs = {name: embedding_grads(simplify(g)) for name, g in graphs.items()}
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
    if model_cfg.get("fp8") or model_cfg.get("fp8_grad"):
        variants = {policy: fp8_products(g, model_cfg.get("fp8", ""), model_cfg.get("fp8_grad", ""))
                    for policy, g in variants.items()}
        scaled = [n for n in variants["none"].nodes.values() if n.attr.get("fp8")]
        gradients = sum(1 for n in scaled if variants["none"].nodes[n.inputs[0]].dtype == E5M2)
        log(f"  fp8        {len(scaled) - gradients} forward products of the training step on E4M3 operands, "
            f"{gradients} backward products on E5M2 gradients")
    layout = persistent_layout(*graphs.values())
    peaks = {policy: plan_program(g, schedule(g), layout) for policy, g in variants.items()}
    chosen = (choose({policy: m.work_size for policy, m in peaks.items()}, room=device_bytes - layout.work_base)
              if remat == AUTO else remat)
    graphs[backward] = variants[chosen]
    log(f"  remat      {chosen}{' (auto)' if remat == AUTO else ''}: "
        f"{len(graphs[backward].late)} activations recomputed in the backward")
    for g in graphs.values():
        g.verify()

    programs = {name: (g, peaks[chosen] if name == backward else plan_program(g, schedule(g), layout))
                for name, g in graphs.items()}
    data = plan_data(model_path, model_cfg, opt_cfg, tokenizer, layout, programs, target)
    files = {**lower(data, target, join=fusion), **constant_files(programs)}
    dumps = [forward_dump, joint_dump, graphs[backward].summary("optimized")]
    if "update" in graphs:
        dumps.append(graphs["update"].summary("update"))
    for dump in dumps:
        files[f"graphs/{dump['title']}.dot"] = viz.render_dot(dump)
        files[f"graphs/{dump['title']}.html"] = viz.render_html(dump)
    baseline = None
    if fusion:  # what fusion saved: the --no-fuse plan, measured on the same plan machinery
        unfused = rematerialize(unfused, chosen)
        baseline = program_stats(unfused, plan_program(unfused, schedule(unfused), persistent_layout(unfused)))
    model_size.check_arena(data["arena"]["bytes"], device_bytes)
    log(f"  plan       {sum(len(p.launches) for p in data['programs'].values())} launches")
    text = "\n".join(stages) + "\n\n" + report(data, programs, backward, baseline, peaks, chosen)
    files["report.txt"] = text
    return Compiled(data, files, text, time.perf_counter() - t0)


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
    next tokens are chosen among the first `vocab_in_use` ids."""
    G, T = cfg["sample_batch"], cfg["block_size"]
    programs = {"generate": _trace(module, cfg, G, T, with_loss=False, caches=dsl.KvCaches(T), greedy=vocab_in_use)}
    caches = dsl.KvCaches(T)
    decode = _trace(module, cfg, G, 1, with_loss=False, caches=caches, position=True, greedy=vocab_in_use)
    if caches.layers and caches.positioned:
        programs["decode"] = decode
    else:
        why = ("its attention is not causal_attention" if not caches.layers
               else "its positions come from neither position_rows nor rotary")
        log(f"  decode     none: {why}; generation reruns the whole window per token")
    return programs


def _node_counts(graphs: dict[str, Graph]) -> str:
    return ", ".join(f"{name} {len(g.nodes)} nodes" for name, g in graphs.items())


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
    with _model_code(module):
        return dsl.trace(build, cfg["dtype"], training, caches).graph


@contextmanager
def _model_code(module):
    """Run the model file's code: what it raises (or its sys.exit) is one line naming its line."""
    try:
        yield
    except UserError:
        raise
    except (Exception, SystemExit) as e:
        raise UserError(f"{user_frame(e, Path(module.__file__))}: {failure(e)}") from None
