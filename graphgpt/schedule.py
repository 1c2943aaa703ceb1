"""The learning-rate schedule and the scalars each step feeds its program, on the run side.

The compiled update reads its step size (Adam) or learning rate and bias corrections (AdamW) as
scalar inputs of the plan's program; here they are computed from the plan's optimizer settings
(or a run's own schedule, checked by the compiler's rules, `check_schedule`) and the number of
updates done, so the one compiled step serves every step of the schedule. A plan with dropout
also reads the key and counter of its random masks (`dropout_scalars`), and a decode program the
position it decodes at.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np

from .errors import UserError

# The optimizer settings a run may change without recompiling: the update reads them only through
# the scalars computed here (the betas, eps, weight decay and clipping are constants of the graph).
SCHEDULE_KEYS = ("lr", "min_lr", "lr_schedule", "warmup_steps", "decay_steps")

# The program inputs of dropout's counter-based RNG (Philox4x32-10): the key's first word is the
# run's seed (the second, each dropout site's number in the model), the counter's second word
# numbers the micro-batch. Both int32 scalars, read as their unsigned bits.
DROPOUT_SEED, DROPOUT_COUNTER = "dropout_seed", "dropout_counter"


# The decode program's int32 input: the position of the tokens it is given (the number of positions
# its key/value caches already hold).
DECODE_POSITION = "position"
# The generation programs' output beside their logits: each position's most likely token (int32).
NEXT_TOKEN = "next_token"


def dropout_scalars(seed: int, step: int, micro: int = 0, micro_batches: int = 1, rank: int = 0,
                    world: int = 1) -> dict[str, int]:
    """The masks' key and counter for one micro-batch: each (update, micro-batch, rank) draws
    masks of its own, and a resumed run draws again exactly the masks it would have drawn."""
    counter = ((step * micro_batches + micro) * world + rank) % 2**32
    return {DROPOUT_SEED: _int32(seed % 2**32), DROPOUT_COUNTER: _int32(counter)}


def _int32(bits: int) -> int:
    return bits - 2**32 if bits >= 2**31 else bits


def requirement(cfg: dict, origin: Callable[[str], str] | None = None) -> Callable[[str, bool, str], None]:
    """need(key, ok, rule): refuse the setting `key` unless ok, in one line stating the rule.
    origin(key) says where the value came from (e.g. "--set lr=nan"); by default "lr=nan"."""
    origin = origin or (lambda key: f"{key}={cfg[key]}")

    def need(key: str, ok: bool, rule: str) -> None:
        if not ok:
            raise UserError(f"{origin(key)}: {key} must be {rule}")
    return need


# The step computes in float32: a float setting must be a number float32 holds, and one that must
# be > 0 must not round to zero there, nor to a subnormal, which GPU code may flush to zero.
FLOAT32_MAX, FLOAT32_TINY = float(np.finfo(np.float32).max), float(np.finfo(np.float32).tiny)
IN_FLOAT32 = f"(float32's range: at most {FLOAT32_MAX:.2g})"
NORMAL_FLOAT32 = f"float32's normal range: {FLOAT32_TINY:.2g} to {FLOAT32_MAX:.2g}"
POSITIVE_IN_FLOAT32 = f"({NORMAL_FLOAT32})"


def integer(x) -> bool:
    """An int that is not a bool (True is an int to Python, not a count to a setting)."""
    return isinstance(x, int) and not isinstance(x, bool)


def finite(x) -> bool:
    """A number (not a bool) that float32 holds: neither NaN nor beyond float32's largest."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and abs(x) <= FLOAT32_MAX


def positive(x) -> bool:
    """A number > 0 that float32 holds as a normal number."""
    return finite(x) and x >= FLOAT32_TINY


def check_schedule(cfg: dict, origin: Callable[[str], str] | None = None) -> None:
    """Refuse a learning-rate schedule outside its range: the compiler's rules for its defaults,
    and the run's for what it trains with."""
    need = requirement(cfg, origin)
    need("lr_schedule", cfg["lr_schedule"] in ("linear", "cosine"), "linear or cosine")
    lr, min_lr = cfg["lr"], cfg["min_lr"]
    need("lr", positive(lr), f"a finite number > 0 {POSITIVE_IN_FLOAT32}")
    need("min_lr", finite(min_lr) and 0 <= min_lr <= lr, f"a finite number with 0 <= min_lr <= lr ({lr})")
    steps = cfg["decay_steps"]
    need("decay_steps", integer(steps) and steps >= 1, "an integer >= 1")
    need("warmup_steps", integer(cfg["warmup_steps"]) and 0 <= cfg["warmup_steps"] < steps,
         f"an integer >= 0 and < decay_steps ({steps})")


def lr_at(cfg: dict, t: int) -> float:
    """Learning rate for the update that follows `t` earlier updates: a linear warmup to lr over
    warmup_steps, then a linear or cosine decay to min_lr at decay_steps."""
    lr, min_lr, n, warmup = cfg["lr"], cfg["min_lr"], cfg["decay_steps"], cfg["warmup_steps"]
    if t < warmup:
        return lr * (t + 1) / warmup
    if t >= n:
        return min_lr
    if cfg["lr_schedule"] == "linear":  # without warmup exactly the seed's linear_lr_decay
        return lr - (lr - min_lr) * (t - warmup) / (n - warmup)
    progress = (t - warmup) / (n - warmup)
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * progress))


def step_scalars(cfg: dict, t: int) -> dict[str, float]:
    """The runtime scalars of update number t+1 (t updates done), plus 'lr' for logging."""
    lr = lr_at(cfg, t)
    t += 1  # the seed increments its step counter before the bias correction
    c1, c2 = 1.0 - cfg["beta1"] ** t, 1.0 - cfg["beta2"] ** t
    if cfg["optimizer"] == "adam":
        return {"lr": lr, "step_size": lr * math.sqrt(c2) / c1}
    return {"lr": lr, "bias1": 1.0 / c1, "bias2": 1.0 / math.sqrt(c2)}
