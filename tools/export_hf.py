"""python tools/export_hf.py --plan DIR --weights PATH --out DIR: a Hugging Face model directory.

Writes `config.json` and `model.safetensors` of a `GPT2LMHeadModel` (a plan of model.py) or a
`LlamaForCausalLM` (a plan of models/llama.py; graphgpt/hf/ has the layouts) from a plan and its
weights: a checkpoint, a directory of checkpoints (the latest), or a .safetensors file of the
plan's parameters. `--init-from` reads such a directory back, weight for
weight. Beside them, written last, graphgpt-export.json lists the two files with their sizes and
sha256: --out must be new, empty, or a directory this tool wrote and nobody changed since (what its
manifest lists and nothing else), so that a downloaded model is never replaced. It is written
whole in a marked staging directory beside --out and swapped in as compile's plans are
(graphgpt/plan.py's `staging_beside`, `replace_dir`): what a killed export left is put back or
removed by the next.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout, installed or not

from graphgpt import hf  # noqa: E402
from graphgpt import plan as plan_io  # noqa: E402
from graphgpt.checkpoint import load_weights  # noqa: E402
from graphgpt.errors import ArgumentParser, UserError, reported, stop_on_termination  # noqa: E402
from graphgpt.fsutil import unwritable  # noqa: E402
from graphgpt.monitor import GuardedStdout  # noqa: E402
from graphgpt.plan import put_back, replace_dir, staging_beside  # noqa: E402
from graphgpt.tokenizer import Tokenizer  # noqa: E402


def main(argv=None) -> int:
    sys.stdout = GuardedStdout(sys.stdout)
    p = ArgumentParser(prog="tools/export_hf.py", description=(
        "Write a plan's weights as a Hugging Face GPT2LMHeadModel or LlamaForCausalLM directory "
        "(config.json, model.safetensors)."))
    p.add_argument("--plan", type=Path, required=True, help="the compiled plan the weights belong to")
    p.add_argument("--weights", type=Path, required=True,
                   help="a checkpoint, a directory of checkpoints (its latest) or a .safetensors file")
    p.add_argument("--out", type=Path, required=True, help="the directory to write")
    args = p.parse_args(argv)
    stop_on_termination()
    return reported(export, args.plan, args.weights, args.out, kept=f": --out {args.out} left as it was")


def export(plan_dir: Path, weights_path: Path, out: Path) -> None:
    check_out(out)
    plan = plan_io.load(plan_dir)
    hf.family_of_params(t["name"] for t in plan.params)  # a plan of neither family: refused before reading weights
    weights = load_weights(weights_path)
    expected = {t["name"]: tuple(t["shape"]) for t in plan.params}
    if {n: tuple(w.shape) for n, w in weights.items()} != expected:
        raise UserError(f"{weights_path}: its tensors are not the parameters of plan {plan_dir}")
    eos_id = Tokenizer.from_json(plan.tokenizer).eos_id
    # Written whole beside --out, then swapped in: a failure (a full disk) leaves no partial
    # directory and an earlier export as it was.
    existed = out.exists()
    try:
        with staging_beside(out) as staging:
            hf.save(staging, weights, plan.config, eos_id)
            replace_dir(staging, out)
    except OSError as e:
        raise UserError(f"cannot write --out {out}: {e.strerror or e}; "
                        + ("the export there is as it was" if existed else "nothing was written")) from None
    print(f"wrote {out}/ ({hf.CONFIG}, {hf.WEIGHTS}: {sum(w.size for w in weights.values()):,} parameters)")


def check_out(out: Path) -> None:
    """--out may be new, empty, or an export of this tool's exactly as it wrote it, in a directory
    that can take a new one beside it. An export a killed one had set aside is put back first."""
    put_back(out)
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise UserError(f"--out {out} is not a directory; it is left as it is")
    if problem := unwritable(out.parent):
        raise UserError(f"--out {out}: {problem}")
    if out.is_dir() and any(out.iterdir()) and (differs := hf.differs_from_export(out)):
        raise UserError(f"--out {out} is not an export of tools/export_hf.py as it wrote it ({differs}); "
                        "it is left as it is (--out takes a new or empty directory or an earlier export)")


if __name__ == "__main__":
    sys.exit(main())
