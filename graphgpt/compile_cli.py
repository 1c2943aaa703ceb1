"""tools/compile.py's command line: the arguments checked before any work, the compile, the plan
written, and one line on stderr for bad input."""
from __future__ import annotations

import argparse
import math
import signal
import sys
from pathlib import Path

from . import hf, model_size, optim
from .bpe import KIND as BPE_KIND
from .compile_report import summary
from .compiler import compile_model
from .errors import REFUSALS, ArgumentParser, Signalled, in_words, stop_on_termination
from .model_file import MODEL_DEFAULTS
from .monitor import GuardedStdout
from .passes.remat import AUTO, POLICIES
from .plan import check_out, save
from .target import DEFAULT, TARGETS


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
    + ". Integer keys take ASCII digits only, the others a decimal or scientific number; every number must be "
    "one float32 holds. The report (DIR/report.txt) lists every setting.")


def main(argv=None) -> int:
    sys.stdout = GuardedStdout(sys.stdout)  # `| head -1`: the plan is written all the same
    p = ArgumentParser(prog="tools/compile.py", description=(
        "Compile a GPT-2 model file into a training plan: trace, autodiff, optimizer, passes, "
        "memory plan, graph dumps."), epilog=SETTINGS_HELP)
    p.add_argument("model", type=Path, nargs="?", help="the model file (Python source named *.py: CONFIG + forward), "
                                                       "e.g. model.py")
    p.add_argument("--out", type=Path, default=Path("compiled"), help="plan directory (default: compiled/)")
    p.add_argument("--set", dest="overrides", action="append", nargs="+", default=[], metavar="KEY=VALUE",
                   help="override a CONFIG key, the compute type (dtype=f32|bf16), sample_batch, "
                        "classifier_chunks (the training logits' chunks of the batch; 0: by their size), "
                        "fp8 (the weights whose forward products train on E4M3 operands: name patterns, "
                        "comma-separated, e.g. fp8=wte), fp8_grad (the weights whose input-gradient products "
                        "train on E5M2 gradients and E4M3 weights, e.g. fp8_grad=wte) "
                        "or an optimizer key (see below), e.g. --set n_layer=2 n_embd=128 (repeatable)")
    p.add_argument("--hf-config", type=Path, metavar="DIR",
                   help="the model's sizes from a Hugging Face directory's config.json: a GPT-2's for model.py, "
                        "a LLaMA's for models/llama.py (--set overrides them; a value out of range is named by its "
                        "field); greedy generation then "
                        "chooses among its vocab_size tokens, as transformers does")
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
                        "(default: attention where that saves a quarter of the work memory, else none; then gelu, then "
                        "all, where the plan would not otherwise fit --device-memory)")
    p.add_argument("--target", choices=list(TARGETS), default=DEFAULT.name, metavar="NAME",
                   help=f"the GPU the kernels' grids are sized for: {', '.join(TARGETS)} "
                        f"(default: {DEFAULT.name}); the plan runs on others, less evenly spread over their SMs")
    p.add_argument("--device-memory", type=_gigabytes, default=int(model_size.DEFAULT_DEVICE_GB * 1e9), metavar="GB",
                   help=f"memory of the largest device the plan is for; a larger model is refused before it "
                        f"is traced, and --remat auto recomputes what it must to fit "
                        f"(default: {model_size.DEFAULT_DEVICE_GB:g}, an H200's)")
    args = p.parse_args(argv)
    stop_on_termination()
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
                                 target=TARGETS[args.target], log=lambda line: None,
                                 vocab_in_use=args.hf_config and hf.vocabulary(args.hf_config))
        save(compiled.data, args.out, compiled.files)
    except REFUSALS as e:
        print(f"error: {in_words(e)}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, Signalled) as e:  # save's staging directory is gone already
        what = f"terminated by {e.name}" if isinstance(e, Signalled) else "interrupted"
        print(f"{what}: --out {args.out} left as it was", file=sys.stderr)
        return 128 + (e.sig if isinstance(e, Signalled) else signal.SIGINT)
    print(summary(compiled.data, compiled.seconds, args.out), end="")
    return 0
