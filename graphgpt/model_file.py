"""The model file a compile reads and its settings: the file imported, with its failures named at
the model's line; its CONFIG and the optimizer's defaults with --set applied, range-checked before
anything is traced."""
from __future__ import annotations

import importlib.util
import traceback
from pathlib import Path

from . import optim
from .errors import UserError
from .literals import typed
from .rope_scaling import SCALINGS, SETTINGS as ROPE_SETTINGS
from .schedule import IN_FLOAT32, POSITIVE_IN_FLOAT32, finite, integer, positive

SIZES = ("n_layer", "n_head", "n_kv_head", "n_embd", "block_size", "batch_size", "sample_batch",
         "rope_original_max_position")  # CONFIG keys that must be >= 1
POSITIVE = ("rope_base", "norm_eps", "rope_factor", "rope_low_freq_factor", "rope_high_freq_factor")  # numbers > 0
FLAGS = ("tie_weights", "attention_bias", "mlp_bias")  # CONFIG keys that are 0 or 1
ROPE_SCALINGS = ("none", *SCALINGS)  # rope_scaling=: how the rotary frequencies are scaled (rope_scaling.py)
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
# settings a model has only where given: fp8, the weights (name patterns, comma-separated) whose
# forward products the training step runs on E4M3 operands; fp8_grad, those whose products that
# take the gradient to the input it runs on E5M2 gradients and E4M3 weights (passes/fp8.py)
OPTIONAL = {"fp8": "", "fp8_grad": ""}


def load_model(path: Path):
    """Import a model file; errors name the file and line."""
    if path.is_dir():
        raise UserError(f"model file {path} is a directory: name the model's .py file")
    if not path.is_file():
        raise UserError(f"model file {path} does not exist" if not path.exists() else f"model file {path} is not a regular file")
    spec = importlib.util.spec_from_file_location(f"graphgpt_model_{path.stem}", path)
    # Not a suffix Python imports (m.txt, m): read as source anyway, it would share the bytecode
    # cache of an m.py beside it, which Python names by the stem alone.
    if spec is None:
        raise UserError(f"model file {path} is not named as Python source: a model file's name ends in .py")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except SyntaxError as e:
        raise UserError(f"{path.name}{'' if e.lineno is None else f':{e.lineno}'}: syntax error: {e.msg}") from None
    except (Exception, SystemExit) as e:  # the model's own code failed or exited: point at its line
        raise UserError(f"{user_frame(e, path)}: {failure(e)} while the model file was imported") from None
    for attr in ("CONFIG", "forward"):
        if not hasattr(module, attr):
            raise UserError(f"{path.name} defines no {attr} (a model file needs CONFIG and forward)")
    if not (isinstance(module.CONFIG, dict) and all(isinstance(k, str) for k in module.CONFIG)):
        raise UserError(f"{path.name}: CONFIG must be a dict of settings by name, got {type(module.CONFIG).__name__}")
    if not callable(module.forward):
        raise UserError(f"{path.name}: forward must be a function forward(idx, cfg)")
    return module


def failure(e: BaseException) -> str:
    """An exception the model file raised, in words; SystemExit is the model's sys.exit()."""
    if isinstance(e, SystemExit):
        return f"the model called sys.exit({e.code!r})"
    return f"{type(e).__name__}: {e}"


def user_frame(e: BaseException, path: Path) -> str:
    """file:line of the model file's innermost frame in e's traceback (the file alone if none)."""
    frames = [f for f in traceback.extract_tb(e.__traceback__) if Path(f.filename).resolve() == path.resolve()]
    return f"{path.name}:{frames[-1].lineno}" if frames else path.name


class Given(str):
    """A KEY=VALUE setting passed with --set's that came from elsewhere (a Hugging Face config.json's
    field, for --hf-config): error messages name `source` where they name a --set pair as itself."""
    source: str

    def __new__(cls, pair: str, source: str):
        given = super().__new__(cls, pair)
        given.source = source
        return given


def _named(pair: str, as_set: str) -> str:
    """How an error names where a KEY=VALUE setting came from: a Given's source, else `as_set`."""
    return pair.source if isinstance(pair, Given) else as_set


def parse_overrides(pairs: list[str], defaults: dict) -> dict:
    """--set key=value, typed like the default it replaces."""
    out = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep:
            raise UserError(f"--set expects key=value, got '{pair}'")
        if key not in defaults:
            unknown = f"{pair.source}: the model file has no setting {key}" if isinstance(pair, Given) else \
                f"unknown --set key '{key}'"
            raise UserError(f"{unknown}; known keys: {', '.join(sorted(defaults))}")
        kind = type(defaults[key])
        out[key] = typed(text, kind)
        if out[key] is None:  # an integer key takes digits only: 1e30 or 2.5 is no layer count
            shown = text if len(text) <= 40 else text[:37] + "..."
            where = _named(pair, f"--set {key}")
            raise UserError(f"{where}: {shown!r} is not {'an integer (digits only)' if kind is int else 'a number'}")
    return out


def settings(module, model_path: Path, overrides: list[str]) -> tuple[dict, dict]:
    """The model's CONFIG and the optimizer's DEFAULTS with --set applied, range-checked."""
    model_cfg, opt_cfg = {**MODEL_DEFAULTS, **module.CONFIG}, dict(optim.DEFAULTS)
    chosen = parse_overrides(overrides, {**OPTIONAL, **model_cfg, **opt_cfg})
    model_cfg.update({k: v for k, v in chosen.items() if k in model_cfg or k in OPTIONAL})
    opt_cfg.update({k: v for k, v in chosen.items() if k in opt_cfg})
    for key in ("batch_size", "block_size"):
        if key not in model_cfg:
            raise UserError(f"{model_path.name}: CONFIG has no {key} (a model needs batch_size and block_size)")
    origin = _origin(overrides, module.CONFIG, model_path.name)
    optim.check(opt_cfg, origin)
    check_model_config(model_cfg, origin)
    _check_rope_settings({pair.partition("=")[0] for pair in overrides if not isinstance(pair, Given)}, model_cfg,
                         origin)
    return model_cfg, opt_cfg


def _check_rope_settings(keys: set[str], cfg: dict, origin) -> None:
    """Refuse a rope_ scaling parameter that --set sets (`keys`) where the model's rope_scaling does
    not read it. A model file's CONFIG holds them all, whichever kind it chooses, and a config.json
    gives those of its own kind, which a --set rope_scaling may then replace."""
    if "rope_scaling" not in cfg:
        return
    for name, key in ROPE_SETTINGS.items():
        readers = [kind for kind, names in SCALINGS.items() if name in names]
        if key in keys and cfg["rope_scaling"] not in readers:
            raise UserError(f"{origin(key)}: {key} is read only with rope_scaling {' or '.join(readers)}, "
                            f"not with {origin('rope_scaling')}")


def _origin(overrides: list[str], config: dict, model_name: str):
    """Where a setting's value came from, for error messages: --set, the model file or the default."""
    given = {pair.partition("=")[0]: pair for pair in overrides}

    def origin(key: str) -> str:
        if key in given:
            pair = given[key]
            return _named(pair, f"--set {pair}")
        if key in config:
            return f"{model_name}: CONFIG {key}={config[key]}"
        return f"{key}={({**MODEL_DEFAULTS, **optim.DEFAULTS})[key]} (the default)"
    return origin


def check_model_config(cfg: dict, origin=None) -> None:
    """Refuse model settings outside their range, for the keys the CONFIG has (every float must be
    finite in float32, the type the step computes in)."""
    need = optim.requirement(cfg, origin)
    for key in SIZES:
        if key in cfg:
            need(key, integer(cfg[key]) and cfg[key] >= 1, "an integer >= 1")
    if "vocab_size" in cfg:
        need("vocab_size", integer(cfg["vocab_size"]) and cfg["vocab_size"] >= 0,
             "an integer >= 0 (0: the tokenizer's size)")
    if "n_hidden" in cfg:
        need("n_hidden", integer(cfg["n_hidden"]) and cfg["n_hidden"] >= 0,
             "an integer >= 0 (0: the model file's rule)")
    if "head_dim" in cfg:
        need("head_dim", integer(cfg["head_dim"]) and cfg["head_dim"] >= 0, "an integer >= 0 (0: n_embd / n_head)")
    for key in POSITIVE:
        if key in cfg:
            need(key, positive(cfg[key]), f"a number > 0 {POSITIVE_IN_FLOAT32}")
    if "dtype" in cfg:
        need("dtype", cfg["dtype"] in COMPUTE_DTYPES, " or ".join(COMPUTE_DTYPES))
    if "attention" in cfg:
        need("attention", cfg["attention"] in ATTENTION, " or ".join(ATTENTION))
    for key in FLAGS:
        if key in cfg:
            need(key, cfg[key] in (0, 1), "0 or 1")
    if "rope_scaling" in cfg:
        need("rope_scaling", cfg["rope_scaling"] in ROPE_SCALINGS, " or ".join(ROPE_SCALINGS))
    if cfg.get("rope_scaling") == "llama3" and "rope_high_freq_factor" in cfg:
        need("rope_high_freq_factor", cfg["rope_high_freq_factor"] > cfg.get("rope_low_freq_factor", 0),
             f"a number above rope_low_freq_factor {cfg.get('rope_low_freq_factor')}")
    if "classifier_chunks" in cfg:
        need("classifier_chunks", integer(cfg["classifier_chunks"]) and cfg["classifier_chunks"] >= 0
             and cfg.get("batch_size", 1) % max(cfg["classifier_chunks"], 1) == 0,
             f"an integer >= 0 that divides batch_size {cfg.get('batch_size')} (0: chosen by the logits' size)")
    for key in ("fp8", "fp8_grad"):
        if key in cfg:
            need(key, isinstance(cfg[key], str), "weight names (shell-style patterns), comma-separated")
    if "dropout" in cfg:
        need("dropout", finite(cfg["dropout"]) and 0 <= cfg["dropout"] < 1, "a probability in [0, 1)")
    if "n_embd" in cfg and "n_head" in cfg and cfg["n_embd"] % cfg["n_head"] and not cfg.get("head_dim"):
        raise UserError(f"n_embd {cfg['n_embd']} is not divisible by n_head {cfg['n_head']}")
    for key, value in cfg.items():
        if isinstance(value, float):
            need(key, finite(value), f"a finite number {IN_FLOAT32}")
