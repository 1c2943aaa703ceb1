"""python -m graphgpt.run --plan compiled/ : train a compiled plan, evaluate, checkpoint, generate.

Everything a run will read, write or sample with is checked before the first step, so bad input
costs one line and exit status 2, never the work of a run.
"""
from __future__ import annotations

import contextlib
import math
import os
import signal
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import literals, plan as plan_io
from .checkpoint import CheckpointDir, Layout, TrainingState, checkpoints_home, describe_weights, initial_weights
from .data import SAMPLERS, default_corpus, load_dataset, load_tokens, make_sampler, split_heldout
from .errors import REFUSALS, TERMINATIONS, ArgumentParser, Signalled, UserError, in_words
from .monitor import GuardedStdout, MetricsLog, Progress, log_header, new_run_id
from .runtime import make_backend
from .runtime.dist import EveryRankError, check_same_run, current_world
from .sample import add_sampling_arguments, check_sampling_arguments, generate
from .schedule import SCHEDULE_KEYS, check_schedule
from .tokenizer import Tokenizer, encode_prompt
from .train import Evaluation, Trainer, TrainingStopped, check_finite, program_inputs, scalar_inputs


def parse_args(argv):
    p = ArgumentParser(prog="python -m graphgpt.run", description=(
        "Train a compiled GPT-2 plan: evaluate on held-out data, write checkpoints, resume, "
        "then generate text."))
    p.add_argument("--plan", type=Path, default=Path("compiled"), help="plan directory (default: compiled/)")
    data = p.add_argument_group("data")
    data.add_argument("--data", type=Path,
                      help="training data: a text file, a .bin of token ids from tools/prepare.py, or "
                           "its directory (train.bin; val.bin held out) (default: graphgpt's own source files)")
    data.add_argument("--val-data", type=Path, metavar="FILE", help="held-out data (text or .bin)")
    data.add_argument("--val-fraction", type=literals.number, metavar="F",
                      help="hold out the last F of the training data instead (as nanoGPT: 0.1)")
    data.add_argument("--sampler", choices=SAMPLERS, default="random",
                      help="random: every row starts at a random token, every step (default); "
                           "sequential: the seed's contiguous rows")
    train = p.add_argument_group("training")
    train.add_argument("--steps", type=literals.integer, default=50,
                       help="optimizer updates to reach, counting those of a resumed run (default: 50)")
    train.add_argument("--seed", type=literals.integer, help="seed of the initial weights, the data windows and sampling (default: 0)")
    train.add_argument("--eval-every", type=literals.integer, default=0, metavar="N",
                       help="evaluate at step 0, every N steps and at the end (default: only at the "
                            "start and end, and only with held-out data)")
    train.add_argument("--eval-batches", type=literals.integer, default=20, metavar="K",
                       help="batches per split and evaluation (default: 20)")
    train.add_argument("--log", type=Path, metavar="FILE", help="append one JSON object per step here")
    lr = p.add_argument_group("learning-rate schedule", (
        "Each defaults to the plan's compiled value (decay_steps: to --steps); a resumed run keeps the "
        "schedule it was started with, changed only by these flags. The betas, eps, weight decay and "
        "clipping are constants of the compiled update: change them with tools/compile.py --set."))
    lr.add_argument("--lr", type=literals.number, metavar="LR", help="the rate after warmup")
    lr.add_argument("--min-lr", type=literals.number, metavar="LR", help="the rate at and after --decay-steps")
    lr.add_argument("--lr-schedule", choices=("linear", "cosine"), help="the decay from --lr to --min-lr")
    lr.add_argument("--warmup-steps", type=literals.integer, metavar="N", help="steps of linear warmup to --lr")
    lr.add_argument("--decay-steps", type=literals.integer, metavar="N",
                    help="the step at which the rate reaches --min-lr (default: --steps, as nanoGPT's "
                         "lr_decay_iters = max_iters)")
    ckpt = p.add_argument_group("checkpoints")
    ckpt.add_argument("--save", type=Path, metavar="DIR",
                      help="write checkpoints of the whole training state here (at the end, and "
                           "every --save-every steps)")
    ckpt.add_argument("--save-every", type=literals.integer, default=0, metavar="N", help="checkpoint every N steps")
    ckpt.add_argument("--keep", type=literals.integer, default=3, metavar="K",
                      help="checkpoints kept, newest first (default: 3; 0 keeps all)")
    ckpt.add_argument("--resume", type=Path, metavar="DIR",
                      help="continue from the latest checkpoint in DIR (and save there unless --save "
                           "says otherwise); with none there yet, start from step 0")
    ckpt.add_argument("--init-from", type=Path, metavar="PATH",
                      help="start from these weights only: a .safetensors file, a checkpoint, or a "
                           "Hugging Face GPT-2 directory (config.json, model.safetensors)")
    gen = p.add_argument_group("generation")
    gen.add_argument("--generate", type=literals.integer, default=30, metavar="N", help="tokens to generate after training")
    gen.add_argument("--prompt", help="generation prompt (default: the first block of the training data)")
    add_sampling_arguments(gen)
    dev = p.add_argument_group("backend")
    dev.add_argument("--backend", choices=("auto", "numpy", "cuda"), default="auto")
    dev.add_argument("--no-graph", action="store_true",
                     help="CUDA: run launches one by one instead of replaying a CUDA graph (debugging)")
    dev.add_argument("--tf32", action="store_true", help="CUDA: TF32 tensor cores for the GEMMs")
    dev.add_argument("--profile", action="store_true",
                     help="CUDA: after training, print each kernel's time per step against the device's ceilings")
    args = p.parse_args(argv)
    for name in ("steps", "generate", "seed", "eval_every", "save_every", "keep"):
        value = getattr(args, name)
        if value is not None and value < 0:
            p.error(f"--{name.replace('_', '-')} must not be negative, got {value}")
    if args.eval_batches < 1:
        p.error(f"--eval-batches must be at least 1, got {args.eval_batches}")
    check_sampling_arguments(p, args)
    if args.val_fraction is not None and not 0 < args.val_fraction < 1:
        p.error(f"--val-fraction must lie strictly between 0 and 1, got {args.val_fraction}")
    if args.val_fraction is not None and args.val_data:
        p.error("--val-data and --val-fraction both choose the held-out data; pass one")
    if args.resume and args.init_from:
        p.error("--resume and --init-from both choose the starting weights; pass one")
    if args.save is None:
        args.save = checkpoints_home(args.resume)
    if args.save_every and args.save is None:
        p.error("--save-every needs a checkpoint directory: --save DIR")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    sys.stdout = GuardedStdout(sys.stdout)
    STOPS.install()
    world = None
    try:
        world = current_world()
        return run(args, world)
    except EveryRankError as e:
        return _fail(world, f"error: {e}", 2, everyone_stops=True)
    except REFUSALS as e:
        return _fail(world, f"error: {in_words(e)}", 2)
    except TrainingStopped as e:
        return _fail(world, f"error: {e}", 1, everyone_stops=True)
    except KeyboardInterrupt:
        return _fail(world, "interrupted", 130)
    except Signalled as e:
        return _fail(world, f"terminated by {e.name}", 128 + e.sig)
    except SystemExit as e:
        if world is not None and world.size > 1:
            world.abort(e.code if isinstance(e.code, int) else 1)
        raise
    except BaseException as e:
        if world is None or world.size == 1:
            raise
        traceback.print_exc()
        return _fail(world, f"error: {type(e).__name__}: {e}", 1)


def _fail(world, message: str, code: int, everyone_stops: bool = False) -> int:
    """One line on stderr. In a world of several ranks, an error that every rank meets at once
    (`everyone_stops`) is told by rank 0 alone; any other ends all ranks, which would otherwise
    wait for this one in their next collective forever."""
    several = world is not None and world.size > 1
    if several and everyone_stops and world.rank != 0:
        return code
    if several:
        message = message.replace("error: ", f"error: rank {world.rank}: ", 1)
    print(message, file=sys.stderr, flush=True)
    if several and not everyone_stops:
        world.abort(code)
    return code


def run(args, world) -> int:
    plan = plan_io.load(args.plan)
    check_same_run(world, {"a plan of digest": plan.digest[:16], **_settings(args)})
    lead = world.rank == 0  # only rank 0 prints, logs, saves and generates
    say = print if lead else (lambda *a, **k: None)
    tokenizer = Tokenizer.from_json(plan.tokenizer)
    B, T = plan.config["batch_size"], plan.config["block_size"]
    prompt = encode_prompt(tokenizer, args.prompt) if args.prompt is not None else None
    if args.resume is None:  # a new run's schedule is refused before --save is created
        try:
            run_schedule(args, plan, None)
        except UserError as e:  # the ranks' settings are the same: each refuses them alike
            raise EveryRankError(str(e)) from None

    # What the run will write or start from: checked now, so that a bad path fails before any work.
    log = MetricsLog(args.log if lead else None)
    saves = CheckpointDir(args.save, keep=args.keep) if args.save else None
    start = _starting_state(args, saves, plan) if lead else None
    schedule = world.bcast_object(run_schedule(args, plan, start) if lead else None)
    run_id = start.run if start is not None and start.run else new_run_id()
    header = log_header(run_id, plan.digest, seed=_seed(args, start) if lead else None,
                        save=str(saves.path.resolve()) if saves else None, **optimizer_record(plan, schedule))
    log.check(header, resuming=args.resume is not None)
    if saves is not None:
        saves.run = run_id
    init_weights = initial_weights(args.init_from, plan) if args.init_from and lead else None
    if init_weights is not None:
        say(describe_weights(args.init_from, init_weights))

    train_tokens, val_tokens, source = _data(args, tokenizer, plan.config, world)
    check_same_run(world, {"training tokens": len(train_tokens),
                           "held-out tokens": None if val_tokens is None else len(val_tokens)})
    seed = world.bcast_object(_seed(args, start) if lead else None)
    sampler = make_sampler(args.sampler, train_tokens, B, T, world.rank, world.size, seed)
    if start is not None:  # the checkpoint's sampler state, checked before the backend is built
        sampler.restore(start.meta["sampler"])
    splits = {"train": train_tokens, **({"val": val_tokens} if val_tokens is not None else {})}
    evaluating = args.eval_every > 0 or val_tokens is not None

    if saves is not None and lead:  # the last check, as the work begins: no other run saves here meanwhile
        try:
            saves.hold()
        except UserError as e:
            raise UserError(f"{'--resume' if args.save == checkpoints_home(args.resume) else '--save'} {e}") from None
    backend = make_backend(args.backend, plan, graph=not args.no_graph, tf32=args.tf32, world=world)
    if args.profile and backend.name != "cuda":
        raise UserError("--profile times CUDA kernels: it needs the CUDA backend (--backend cuda)")
    evaluation = Evaluation(backend, splits, B, T, args.eval_batches, seed, world) if evaluating else None
    _describe(args, plan, world, backend, say, f"{args.sampler} windows of {source}", schedule)

    trainer = Trainer(plan, backend, sampler, seed=seed, world=world, schedule=schedule.values)
    meta = {"seed": seed, "data_tokens": len(train_tokens), "best": None}
    if world.bcast_object(start is not None):
        meta.update(trainer.restore(start))
        _check_same_data(meta, len(train_tokens))
        if evaluation is not None:
            evaluation.best = meta["best"]
        say(f"resumed from {args.resume} at step {trainer.updates_done}")
    elif args.init_from:
        trainer.set_weights(init_weights or {})
    meta["schedule"] = schedule.values  # saved with each checkpoint: a resumed run trains on with it
    if trainer.updates_done and args.steps <= trainer.updates_done:
        say(f"the run is at step {trainer.updates_done} already; --steps {args.steps} trains nothing more")

    # A resumed run drops what the interrupted one logged after its checkpoint (everything, when
    # it had none yet), and logs it again.
    log.open(header, None if args.resume is None else (trainer.updates_done or -1))
    try:
        _train(args, plan, trainer, evaluation, meta, log, saves, say)
    finally:
        log.close()

    if args.profile and lead:
        _profile(plan, backend, sampler)
    if args.generate and lead:
        if prompt is None:
            prompt = np.asarray(train_tokens[:min(256, len(train_tokens), T)])
        clock = time.perf_counter()
        batch = generate(backend, list(map(int, prompt)), args.generate, len(tokenizer.vocab), tokenizer.eos_id,
                         args.temperature, args.top_k, np.random.default_rng(seed), args.top_p, args.kv_cache)
        seconds = time.perf_counter() - clock
        for new in batch:
            print(f"sample ({len(new)} tokens, {seconds:.1f} s): {tokenizer.decode(new)}")
    return 0


def _train(args, plan, trainer: Trainer, evaluation: Evaluation | None, meta: dict, log: MetricsLog,
           saves: CheckpointDir | None, say) -> None:
    """Steps up to --steps; evaluations at step 0, every --eval-every steps and at the end;
    checkpoints every --save-every steps and at the end; one JSONL record per step."""
    lead = trainer.world.rank == 0
    begin = trainer.updates_done
    todo = max(0, args.steps - begin)

    def due(step: int, every: int) -> bool:
        return step == args.steps or (every > 0 and step % every == 0)

    def pause(step: int) -> bool:  # an evaluation or a checkpoint must see this step's weights
        return (evaluation is not None and due(step, args.eval_every)) or (saves is not None and due(step, args.save_every))

    if evaluation is not None and begin == 0:  # with --steps 0, an evaluation of --init-from's weights
        first = {"step": 0, **evaluation.score(0)}
        meta["best"] = evaluation.best
        log.write(first)
        say("step 0 | " + " | ".join(f"{k.removesuffix('_loss')} {v:.4f}" for k, v in first.items() if k != "step"))
    progress, clock, losses = Progress(args.steps), time.perf_counter(), []
    try:
        for m in trainer.steps(todo, pause):
            losses.append(m["loss"])
            finite = math.isfinite(m["loss"]) and math.isfinite(m["grad_norm"])
            if finite and evaluation is not None and due(m["step"], args.eval_every):
                m.update(evaluation.score(m["step"]))
                meta["best"] = evaluation.best
            log.write(m)
            if lead:
                progress.update(m)
            check_finite(m)
            if saves is not None and lead and due(m["step"], args.save_every):
                state = trainer.state(meta)
                with STOPS.held():
                    saves.save(state, plan.digest, plan.data["model_hash"],
                               [state.params[t["name"]].astype(np.float32) for t in plan.params])
    except TrainingStopped as e:
        kept = saves.latest() if saves is not None and lead else None
        raise TrainingStopped(f"{e}" + (f"; the latest checkpoint, {kept}, is intact" if kept else "")) from None
    if losses:
        say(f"trained {len(losses)} steps in {time.perf_counter() - clock:.1f} s: "
            f"loss {losses[0]:.4f} -> {losses[-1]:.4f}")
    if meta["best"]:
        say(f"best val loss {meta['best']['val_loss']:.4f} at step {meta['best']['step']}")
    if saves is not None and losses and lead:
        say(f"saved {saves.latest()}")


class _Stops:
    """SIGINT, SIGTERM (a scheduler's preemption, `kill`) and SIGHUP stop the run by unwinding, as Ctrl-C
    does, so that open files are closed and temporaries removed; inside `held()` a signal waits
    until the block is done, so a checkpoint being written is finished first."""

    def __init__(self):
        self.holding, self.pending = False, None

    def install(self) -> None:
        for sig in (signal.SIGINT, *TERMINATIONS):
            signal.signal(sig, self._handle)

    def _handle(self, sig, frame) -> None:
        if self.holding:
            self.pending = sig
        else:
            self._stop(sig)

    @staticmethod
    def _stop(sig) -> None:
        if sig == signal.SIGINT:
            raise KeyboardInterrupt
        raise Signalled(sig)

    @contextlib.contextmanager
    def held(self):
        self.holding = True
        try:
            yield
        finally:
            self.holding = False
            if self.pending is not None:
                sig, self.pending = self.pending, None
                self._stop(sig)


STOPS = _Stops()


def _describe(args, plan, world, backend, say, data: str, schedule: Schedule) -> None:
    """The run's first lines: model size, batch (micro-batches x rows x tokens), ranks, backend,
    data; then the optimizer and its schedule, each value the run changes tagged with where it came
    from."""
    B, T = plan.config["batch_size"], plan.config["block_size"]
    accum = plan.optimizer.get("grad_accum", 1)

    def rows(n: int) -> str:
        return f"{accum} x {n} x {T}" if accum > 1 else f"{n} x {T}"
    n_params = sum(int(np.prod(t["shape"])) for t in plan.params)
    ranks = f", {world.size} ranks: global batch {rows(B * world.size)}" if world.size > 1 else ""
    if world.size > 1:  # launchers report a dead process by pid: this names its rank
        pids = world.gather(os.getpid())
        say("ranks: " + ", ".join(f"{r}=pid {p}" for r, p in enumerate(pids)), flush=True)
    say(f"plan {args.plan} ({n_params / 1e6:.2f}M parameters, batch {rows(B)}{ranks}), backend {backend.name}, {data}")
    opt, values = plan.optimizer, schedule.values

    def shown(key: str, text: str) -> str:
        return f"{text} ({schedule.sources[key]})" if key in schedule.sources else text
    lr, min_lr = shown("lr", f"lr {values['lr']:g}"), shown("min_lr", f"min_lr {values['min_lr']:g}")
    decay = shown("lr_schedule", values["lr_schedule"])
    warmup = shown("warmup_steps", f"warmup {values['warmup_steps']}")
    steps = shown("decay_steps", f"decay_steps {values['decay_steps']}")
    clip = f"clip {opt['grad_clip']:g}" if opt["grad_clip"] > 0 else "no clipping"
    say(f"optimizer {opt['optimizer']}: {lr} -> {min_lr}, {decay} decay, {warmup}, {steps}, betas "
        f"{opt['beta1']:g}/{opt['beta2']:g}, eps {opt['eps']:g}, weight decay {opt['weight_decay']:g}, {clip}")
    for line in schedule.notes:
        say(line)


@dataclass
class Schedule:
    """The learning-rate schedule a run trains with (schedule.SCHEDULE_KEYS), where each value
    that is not the plan's came from (key -> "--lr", "--steps", "the checkpoint's"), and a line
    for each flag that changes a resumed run's schedule."""
    values: dict
    sources: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def run_schedule(args, plan, start: TrainingState | None) -> Schedule:
    """The flags given, else a resumed run's schedule (a checkpoint without one trained with the
    plan's), else the plan's compiled values with decay_steps = --steps: a run's rate reaches
    min_lr at its last step, as nanoGPT's lr_decay_iters = max_iters. Checked as the compiler
    checks its own."""
    compiled = {key: plan.optimizer[key] for key in SCHEDULE_KEYS}
    given = {key: getattr(args, key) for key in SCHEDULE_KEYS if getattr(args, key) is not None}
    if start is not None:
        base = _saved_schedule(start.meta, compiled)
        sources = {key: "the checkpoint's" for key in SCHEDULE_KEYS if base[key] != compiled[key]}
    elif args.steps:
        base, sources = {**compiled, "decay_steps": args.steps}, {"decay_steps": "--steps"}
    else:  # a run that trains nothing keeps the plan's (--steps 0 evaluates or generates)
        base, sources = compiled, {}
    flag = {key: "--" + key.replace("_", "-") for key in given}
    schedule = Schedule({**base, **given}, {**sources, **flag})
    if start is not None:
        schedule.notes = [f"{flag[key]} {given[key]} replaces the checkpoint's {key} {base[key]}"
                          for key in given if given[key] != base[key]]

    def origin(key: str) -> str:
        if key in given:
            return f"{flag[key]} {given[key]}"
        where = schedule.sources.get(key, "the plan's")
        return f"{key}={schedule.values[key]} ({where})"
    check_schedule(schedule.values, origin)
    return schedule


def _saved_schedule(meta: dict, compiled: dict) -> dict:
    """The schedule a checkpoint's run trained with, refused in one line if state.json mangled it."""
    saved = meta.get("schedule", compiled)
    kinds = {"lr": (int, float), "min_lr": (int, float), "lr_schedule": str, "warmup_steps": int, "decay_steps": int}
    if not (isinstance(saved, dict) and set(saved) == set(SCHEDULE_KEYS)
            and all(isinstance(saved[k], kinds[k]) and not isinstance(saved[k], bool) for k in SCHEDULE_KEYS)):
        raise UserError(f"the checkpoint's state.json holds a damaged learning-rate schedule: {saved!r}")
    return saved


def optimizer_record(plan, schedule: Schedule) -> dict:
    """The optimizer part of the log's first record: every setting of the update, as trained."""
    return {"optimizer": {**plan.optimizer, **schedule.values}}


def _settings(args) -> dict:
    """The run's command line, flag by flag: ranks of one run must agree on all of it."""
    return {"--" + name.replace("_", "-"): value for name, value in sorted(vars(args).items())}


def _profile(plan, backend, sampler) -> None:
    """Each launch of the program with the forward and backward, timed; its scalars are zero (a
    step size of 0 leaves the weights as they are)."""
    from .runtime.profile import ceilings, format_profile, profile
    program = "train" if "train" in plan.programs else "accumulate"
    zeros = {name: 0.0 for name in scalar_inputs(plan, program)}
    feeds = program_inputs(plan, program, sampler.next_batch(), zeros)
    print(format_profile(profile(backend, program, feeds), ceilings(backend)))


# What a resumed run reads of its checkpoint's meta (the sampler checks its own state's fields).
_TRAINER_META = {"seed": int, "data_tokens": int, "sampler": dict, "best": (dict, type(None))}


def _starting_state(args, saves: CheckpointDir | None, plan) -> TrainingState | None:
    """The checkpoint to resume from, if any, checked whole against the plan, after checking that
    the checkpoint directory is usable and that saving into it overwrites no other run's
    checkpoints. `--resume DIR/step_N` resumes from that step; `--resume DIR` from the latest."""
    home = checkpoints_home(args.resume)
    source = CheckpointDir(home) if args.resume is not None else None
    if home != args.resume and not os.path.lexists(args.resume):
        raise UserError(f"--resume {args.resume} does not exist")
    resuming_here = False  # saving into the directory resumed from
    if saves is not None:
        try:
            saves.check_writable()
        except UserError as e:
            raise UserError(f"{'--resume' if args.save == home else '--save'} {e}") from None
        resuming_here = source is not None and Path(source.path).resolve() == Path(saves.path).resolve()
        if not resuming_here and (held := saves.step_entries()):
            raise UserError(f"--save {saves.path} already holds checkpoints (latest: {held[0].name}); "
                            f"continue them with --resume {saves.path}, or choose another directory")
    if source is None:
        return None
    layout = Layout.of(plan, _TRAINER_META)
    if home != args.resume:
        return source.load(plan.digest, args.resume, layout)
    if not source.step_entries():
        print(f"no checkpoint in {args.resume} yet: starting from step 0")
        return None
    return source.load(plan.digest, layout=layout, continuing=resuming_here)


def _data(args, tokenizer: Tokenizer, cfg: dict, world):
    """(training tokens, held-out tokens or None, a description of the training data)."""
    vocab = cfg["vocab_size"]
    val = None  # a prepared directory's val.bin, unless --val-data or --val-fraction say otherwise
    if args.data:
        tokens, val, source = load_dataset(args.data, tokenizer, vocab)
    else:
        text, source = default_corpus()
        tokens = tokenizer.encode(text, source=f"{source}, the data without --data")
    if args.val_data:
        val, _ = load_tokens(args.val_data, tokenizer, vocab)
    elif args.val_fraction:
        tokens, val = split_heldout(tokens, args.val_fraction)
    if tokenizer.pad_id is not None and args.sampler == "sequential":
        # the plan was compiled from data shorter than a batch: the seed pads it
        tokens = tokenizer.pad_to(np.asarray(tokens), cfg["batch_size"] * cfg["block_size"] * world.size + 1)
    held = f", {len(val):,} held out" if val is not None else ""
    return tokens, val, f"{source} ({len(tokens):,} tokens{held}, vocabulary {len(tokenizer.vocab)})"


def _seed(args, start: TrainingState | None) -> int:
    """A resumed run keeps its seed: the data windows it draws depend on it."""
    saved = start.meta.get("seed") if start is not None else None
    if saved is not None and args.seed is not None and args.seed != saved:
        raise UserError(f"--seed {args.seed} differs from the checkpoint's seed {saved}; "
                        "a resumed run keeps its seed (leave --seed out)")
    return saved if saved is not None else (args.seed or 0)


def _check_same_data(meta: dict, n_tokens: int) -> None:
    if meta.get("data_tokens") not in (None, n_tokens):
        raise UserError(f"the checkpoint trained on {meta['data_tokens']:,} tokens; this run's training "
                        f"data has {n_tokens:,}: resume on the same data")


if __name__ == "__main__":
    sys.exit(main())
