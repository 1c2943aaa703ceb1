"""What a compile shows: report.txt (every program's launches, bytes moved, FLOPs and memory, with
each --remat policy and the plan without fusion beside the one chosen) and the lines on screen."""
from __future__ import annotations

from pathlib import Path

from .passes.memory import ProgramMemory
from .plan_assembly import program_stats


def optimizer_settings(opt: dict) -> str:
    """The optimizer and its learning-rate schedule in one line, as the report and the screen show them."""
    decay = f", weight decay {opt['weight_decay']:g}" if opt["optimizer"] == "adamw" else ""
    return (f"{opt['optimizer']}, lr {opt['lr']:g} -> min_lr {opt['min_lr']:g}, {opt['lr_schedule']} schedule, "
            f"warmup {opt['warmup_steps']} steps, decay_steps {opt['decay_steps']}, "
            f"betas {opt['beta1']:g}/{opt['beta2']:g}, eps {opt['eps']:g}{decay}, clip {opt['grad_clip']:g}, "
            f"grad_accum {opt['grad_accum']}")


def report(data: dict, programs, backward: str, unfused: dict | None, remat: dict[str, ProgramMemory],
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
        st = dict(program_stats(graph, mem), launches=len(data["programs"][name].launches))  # multi-tensor joins
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


def summary(data: dict, seconds: float, out: Path) -> str:
    """What the screen shows of a compile that took `seconds`: the plan's size in one line, its
    optimizer in the next."""
    n_params = sum(_numel(t["shape"]) for t in data["tensors"] if t["kind"] == "param")
    launches = sum(len(p.launches) for p in data["programs"].values())
    return (f"compiled {data['model_file']} in {seconds:.1f} s: {n_params:,} parameters, "
            f"arena {data['arena']['bytes'] / 2**20:.2f} MiB, {launches} launches in {len(data['programs'])} programs; "
            f"report: {out / 'report.txt'}\n"
            f"optimizer {optimizer_settings(data['optimizer'])}\n")
