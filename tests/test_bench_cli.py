"""tools/bench.py without a GPU: its command line (and bench_decode.py's --json), its pure parts, and its
torch runner on the CPU.

The GPU timings themselves need CuPy and a GPU. Here: bad input is one line and exit status 2
(a machine without a GPU says so), the timing loop and the table are checked with a host clock,
and the torch runner trains the same model as graphgpt's NumPy backend.
"""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time

import numpy as np
import pytest

from graphgpt import optim, schedule
from graphgpt.compiler import compile_model
from graphgpt.errors import UserError
from graphgpt.plan import Plan, load, save
from graphgpt.runtime import cuda_available
from graphgpt.runtime.numpy_backend import NumpyBackend
from graphgpt.train import init_params
from tests.conftest import ROOT, TINY, assert_user_error
from tools import bench, bench_decode

BENCH = str(ROOT / "tools" / "bench.py")


def run_bench(*args, torch_stub=None, tool=BENCH):
    """torch_stub: a directory put first on the path to stand in for the installed torch."""
    path = [str(p) for p in (torch_stub, ROOT) if p]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(path))
    return subprocess.run([sys.executable, tool, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)


@pytest.fixture(scope="module")
def torch_stubs(tmp_path_factory) -> dict:
    """'broken': `import torch` fails; 'empty': it succeeds with nothing inside. Both sides of the
    torch checks are reached whether or not torch is installed."""
    stubs = {}
    for kind, body in (("broken", "raise ImportError('no torch here')\n"), ("empty", "")):
        stubs[kind] = tmp_path_factory.mktemp(f"torch_{kind}")
        (stubs[kind] / "torch").mkdir()
        (stubs[kind] / "torch" / "__init__.py").write_text(body)
    return stubs


def tiny_compiled(extra=()):
    return compile_model(ROOT / "model.py", TINY + list(extra), log=lambda *a: None)


LLAMA = ["n_layer=2", "n_head=4", "n_kv_head=2", "n_embd=32", "n_hidden=48", "rope_base=10000", "vocab_size=0",
         "block_size=8", "batch_size=2"]


def tiny_llama(extra=()):
    return compile_model(ROOT / "models" / "llama.py", LLAMA + list(extra), log=lambda *a: None)


@pytest.fixture(scope="module")
def plan_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "tiny"
    compiled = tiny_compiled()
    save(compiled.data, out, compiled.files)
    return out


@pytest.mark.parametrize("args, fragment", [
    ([], "required: --plan"),
    (["--steps", "0"], "--steps must be at least 1"),
    (["--repeat", "0"], "--repeat must be at least 1"),
    (["--warmup", "1"], "--warmup must be at least 2"),
    (["--warmup", "x"], "argument --warmup: 'x' is not an integer (digits only)"),
    (["--optimizer", "sgd"], "invalid choice: 'sgd'"),
    (["--bogus"], "unrecognized arguments: --bogus"),
])
def test_bad_arguments(plan_dir, args, fragment):
    assert_user_error(run_bench(*(["--plan", str(plan_dir)] if args else []), *args), fragment)


def test_llmc_refuses_a_plan_it_cannot_train_and_a_missing_binary(plan_dir, tmp_path):
    assert_user_error(run_bench("--plan", str(plan_dir), "--llmc", str(tmp_path)), "llm.c trains GPT-2 of depth")
    shaped = tmp_path / "d6"
    compiled = compile_model(ROOT / "model.py", ["n_layer=6", "n_head=6", "n_embd=384", "block_size=8", "batch_size=1",
                                                 "vocab_size=50304", "tie_weights=1", "dtype=bf16"], log=lambda *a: None)
    save(compiled.data, shaped, compiled.files)
    assert_user_error(run_bench("--plan", str(shaped), "--llmc", str(tmp_path / "train_gpt2cu")), "not an executable file")


def test_llmc_step_lines_are_read_as_llmc_prints_them():
    """train_gpt2.cu's printf of a step, filled in: the loss and the step's milliseconds."""
    line = ("step %4d/%d | loss %7.6f (%+.2fz)| norm %6.4f (%+.2fz)| lr %.2e | %.2f ms | %.1f%% bf16 MFU | %.0f tok/s"
            % (7, 60, 10.987654, 0.0, 1.2345, -0.5, 6e-4, 34.27, 51.3, 478000))
    assert bench.llmc.STEP.findall(line + "\n" + line) == [("10.987654", "34.27")] * 2


def test_json_into_a_directory(plan_dir, tmp_path):
    assert_user_error(run_bench("--plan", str(plan_dir), "--json", str(tmp_path)), "is a directory")


TOOLS = {"tools/bench.py": bench, "tools/bench_decode.py": bench_decode}


@pytest.mark.parametrize("tool", TOOLS)
@pytest.mark.parametrize("content", [
    b"my notes\n",
    b'{"command": "python tools/plot.py run.jsonl"}',  # another tool's
    b'{"results": {}}',
    b"\xff\xfe",
])
def test_json_refuses_a_file_the_tool_did_not_write(plan_dir, tmp_path, tool, content):
    """Before any work, the GPU check included: the file stays as it was."""
    out = tmp_path / "results.json"
    out.write_bytes(content)
    assert_user_error(run_bench("--plan", str(plan_dir), "--json", str(out), tool=str(ROOT / tool)),
                      f"--json {out} is a file that {tool} did not write")
    assert out.read_bytes() == content


@pytest.mark.parametrize("tool", TOOLS)
def test_json_replaces_a_report_of_the_same_tool_only(plan_dir, tmp_path, tool):
    report = tmp_path / "report.json"
    command = shlex.join(["python", tool, "--plan", str(plan_dir)])  # as the tool records itself
    report.write_text(json.dumps({"date": "2025-01-01", "command": command, "results": {}}))
    assert TOOLS[tool].parse_args(["--plan", str(plan_dir), "--json", str(report)]).json == report
    other, = set(TOOLS) - {tool}
    with pytest.raises(UserError, match="did not write"):
        TOOLS[other].parse_args(["--plan", str(plan_dir), "--json", str(report)])


def test_missing_or_foreign_plan(tmp_path):
    assert_user_error(run_bench("--plan", str(tmp_path / "nope")), "does not exist")
    assert_user_error(run_bench("--plan", str(tmp_path)), "no plan.json")


def test_torch_required_but_not_importable(plan_dir, torch_stubs):
    assert_user_error(run_bench("--plan", str(plan_dir), "--torch", torch_stub=torch_stubs["broken"]),
                      "--torch needs PyTorch")


@pytest.mark.skipif(cuda_available(), reason="this machine has a GPU")
@pytest.mark.parametrize("torch_flag", ["--no-torch", None])
def test_without_a_gpu_it_says_so(plan_dir, torch_flag, torch_stubs):
    proc = run_bench("--plan", str(plan_dir), *([torch_flag] if torch_flag else []), torch_stub=torch_stubs["broken"])
    assert_user_error(proc, "no NVIDIA GPU")


def run_trace(*args):
    return subprocess.run([sys.executable, str(ROOT / "tools" / "trace_step.py"), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("args, fragment", [([], "required: --plan"), (["--warmup", "1"], "--warmup must be at least 2"),
                                            (["--top", "0"], "--top must be at least 1")])
def test_trace_step_bad_arguments(plan_dir, args, fragment):
    assert_user_error(run_trace(*(["--plan", str(plan_dir)] if args else []), *args), fragment)


@pytest.mark.skipif(cuda_available(), reason="this machine has a GPU")
def test_trace_step_without_a_gpu_says_so(plan_dir, tmp_path):
    assert_user_error(run_trace("--plan", str(tmp_path)), "no plan.json")
    assert_user_error(run_trace("--plan", str(plan_dir)), "no NVIDIA GPU")


# ---- the pure parts ---------------------------------------------------------------------------
class HostClock:
    """Stands in for GPU events: a mark is a timestamp, taken when all queued work is done."""

    def mark(self):
        return time.perf_counter()

    def elapsed_ms(self, start, end) -> float:
        return (end - start) * 1e3

    def sync(self) -> None:
        pass


def test_measure_times_blocks_after_warmup():
    calls = []

    def step():
        calls.append(time.perf_counter())
        time.sleep(0.002)

    ms = bench.measure(step, HostClock(), steps=3, warmup=2, repeat=4)
    assert len(calls) == 2 + 3 * 4 and len(ms) == 4
    assert all(2.0 <= m < 50.0 for m in ms), ms  # per step, not per block


def test_summary_table_and_report(plan_dir):
    rows = [bench.Row("graphgpt graph", [2.0, 1.0, 3.0], 3 * 2**20, "arena_bytes", 4.5),
            bench.Row("torch eager", [4.0, 4.0, 5.0], 2**20, "torch", 4.5)]
    bench.summarize(rows, tokens_per_step=1000, flops_per_step=1e12, peak_flops=1e15)
    assert rows[0].derived == {"ms_per_step": 2.0, "tokens_per_s": 500_000.0, "mfu": 0.5, "vs_torch_eager": 2.0}
    assert rows[1].derived["vs_torch_eager"] == 1.0 and rows[1].derived["mfu"] == 0.25
    table = bench.format_table(rows).splitlines()
    assert table[1].split() == ["graphgpt", "graph", "2.000", "500,000", "50.0%", "2.00x", "3.0", "4.5000"]

    alone = bench.summarize([bench.Row("graphgpt graph", [1.0], 0, "arena_bytes", 1.0)], 10)
    assert alone[0].derived["vs_torch_eager"] is None and " - " in bench.format_table(alone)

    args = bench.parse_args(["--plan", str(plan_dir), "--tf32", "--steps", "7"])
    plan = Plan(tiny_compiled().data, "t")
    data = json.loads(json.dumps(bench.report(args, ["--plan", "x y", "--tf32"], plan, "GPU 0", {}, rows)))
    assert data["command"] == "python tools/bench.py --plan 'x y' --tf32"
    assert data["precision"] == "tf32" and data["steps"] == 7 and data["device"] == "GPU 0"
    assert data["tokens_per_step"] == 2 * 8 and data["date"]
    assert [r["name"] for r in data["rows"]] == ["graphgpt graph", "torch eager"]
    assert data["rows"][0]["ms_per_step_blocks"] == [2.0, 1.0, 3.0] and data["rows"][0]["tokens_per_s"] == 500_000.0


@pytest.mark.parametrize("attention", ["fused", "softmax"])
def test_the_plan_counts_the_gemm_flops_as_nanogpt_estimates_them(attention):
    """6 N per token for the N weights of the GEMMs (every block's four matrices and lm_head), plus
    12 L H D T per token for the attention's two (T x T x D) products, forward and backward, whether
    the fused attention computes them or two batched GEMMs do."""
    data = tiny_compiled([f"attention={attention}"]).data
    cfg = data["config"]
    L, C, H, T, B, V = (cfg[k] for k in ("n_layer", "n_embd", "n_head", "block_size", "batch_size", "vocab_size"))
    weights = L * 12 * C * C + C * V
    tokens = B * T
    assert data["programs"]["train"].matmul_flops == 6 * weights * tokens + 12 * L * H * (C // H) * T * tokens
    assert data["programs"]["eval"].matmul_flops * 3 == data["programs"]["train"].matmul_flops


def test_rows_in_table_order():
    assert [n for n, _ in bench.methods(False, False)] == ["graphgpt graph", "graphgpt no-graph"]
    rows = bench.methods(True, True)
    assert [n for n, _ in rows] == ["graphgpt graph", "graphgpt no-graph", "torch eager", "torch.compile",
                                    "torch.compile bf16"]
    assert [o.get("precision") for _, o in rows] == [None, None, "tf32", "tf32", "bf16"]
    assert [n for n, _ in bench.methods(True, False, eager_only=True)] == ["graphgpt graph", "graphgpt no-graph",
                                                                          "torch eager"]
    bf16 = bench.methods(True, False, bf16=True)
    assert [(n, o.get("precision")) for n, o in bf16[2:]] == [("torch eager bf16", "bf16"), ("torch.compile bf16", "bf16")]
    assert [n for n, _ in bench.methods(True, False, bf16=True, compiled_only=True)][2:] == ["torch.compile bf16"]
    assert [n for n, _ in bench.methods(True, False, compiled_only=True)][2:] == ["torch.compile", "torch.compile bf16"]


def test_eager_only_and_compiled_only_together_are_refused(plan_dir):
    with pytest.raises(UserError, match="no PyTorch row"):
        bench.parse_args(["--plan", str(plan_dir), "--eager-only", "--compiled-only"])


def test_a_row_that_ran_out_of_memory_is_shown_and_the_others_keep_their_ratios(plan_dir):
    rows = [bench.Row("graphgpt graph", [2.0], 2**20, "arena_bytes", 4.5),
            bench.Row("torch eager bf16", [], 0, "", float("nan"), failed="out of memory: CUDA out of memory"),
            bench.Row("torch.compile bf16", [3.0], 2**20, "torch", 4.5)]
    bench.summarize(rows, tokens_per_step=1000)
    assert rows[0].derived["ms_per_step"] == 2.0 and rows[0].derived["vs_torch_eager"] is None
    assert rows[1].derived["ms_per_step"] is None
    table = bench.format_table(rows).splitlines()
    assert table[2].split()[:4] == ["torch", "eager", "bf16", "out"] and "CUDA out of memory" in table[2]
    args = bench.parse_args(["--plan", str(plan_dir)])
    data = json.loads(json.dumps(bench.report(args, [], Plan(tiny_compiled().data, "t"), "GPU 0", {}, rows)))
    assert [r.get("failed", "") for r in data["rows"]] == ["", "out of memory: CUDA out of memory", ""]


def test_synthetic_batch_targets_are_the_next_tokens():
    cfg = dict(batch_size=3, block_size=5, vocab_size=11)
    tokens, targets = bench.synthetic_batch(cfg)
    assert tokens.shape == targets.shape == (3, 5) and tokens.dtype == np.int32
    assert (tokens[:, 1:] == targets[:, :-1]).all() and tokens.max() < 11


# ---- the torch runner, on the CPU ---------------------------------------------------------------
@pytest.mark.parametrize("model, compiled, optimizer", [
    (tiny_compiled, False, ["optimizer=adam"]), (tiny_compiled, True, ["optimizer=adam"]),
    (tiny_compiled, False, ["optimizer=adamw", "weight_decay=0.1"]),
    (tiny_llama, False, ["optimizer=adamw", "weight_decay=0.1"]),
    (tiny_llama, False, ["head_dim=6", "attention_bias=1", "mlp_bias=1", "rope_scaling=llama3", "rope_factor=4.0",
                         "rope_original_max_position=8"])],
    ids=["adam", "adam-compiled", "adamw", "llama", "llama-head-dim-biases-scaled"])
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
def test_torch_runner_trains_what_graphgpt_trains(model, compiled, optimizer, tmp_path):
    """The runner's steps (float32) end at the NumPy backend's loss after as many updates: GPT-2
    (tools/torch_gpt2.py) and LLaMA with grouped-query attention (tools/torch_llama.py)."""
    pytest.importorskip("torch", exc_type=ImportError)
    made = model(["lr=1e-2", *optimizer])
    save(made.data, tmp_path / "plan", made.files)  # with its constant tables, where it has them
    plan = load(tmp_path / "plan")
    weights, batch = init_params(plan, seed=0), bench.synthetic_batch(plan.config)
    runner = bench.TorchRunner(plan, weights, batch, compiled=compiled, precision="fp32", optimizer="exact",
                               device="cpu")
    ms = bench.measure(runner.step, HostClock(), steps=2, warmup=2, repeat=2)
    loss = runner.final_loss()
    runner.close()
    assert len(ms) == 2 and runner.peak_bytes() == 0

    be = NumpyBackend(plan)
    for name, value in weights.items():
        be.set_tensor(name, value)
    for t in range(2 + 2 * 2 + 1):
        scalars = schedule.step_scalars(plan.optimizer, t)
        out = be.run("train", {"tokens": batch[0], "targets": batch[1],
                               **{name: scalars[name] for name in optim.scalar_inputs(plan.optimizer)}})
    assert abs(loss - float(out["loss"])) < 1e-4 * abs(loss)


def test_trace_steps_busy_time_counts_overlapping_kernels_once():
    sys.path.insert(0, str(ROOT / "tools"))
    from trace_step import covered
    assert covered([(0.0, 10.0), (2.0, 5.0), (8.0, 12.0), (20.0, 21.0)]) == 13.0
    assert covered([(5.0, 6.0), (0.0, 1.0)]) == 2.0
    assert covered([]) == 0.0
