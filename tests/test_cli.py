"""The command-line tools as a user meets them: bad input is one line and exit code 2."""
import json
import textwrap

import numpy as np
import pytest

from graphgpt.tensor_files import load_safetensors, load_seed_weights
from tests.conftest import COMPILE, ROOT, TINY, assert_user_error, run_cli, run_into_head, sets, step_records



@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "corpus.txt"
    path.write_text("the quick brown fox jumps over the lazy dog. " * 40)
    return path


@pytest.fixture(scope="module")
def tiny_plan(tmp_path_factory, corpus):
    out = tmp_path_factory.mktemp("plan") / "tiny"
    proc = run_cli(COMPILE, str(ROOT / "model.py"), "--out", str(out), "--data", str(corpus), *sets(TINY + ["lr=1e-2"]))
    assert proc.returncode == 0, proc.stderr
    assert "launches" in proc.stdout and (out / "plan.json").is_file()
    return out


def test_the_report_holds_every_stage_and_the_optimizer(tiny_plan):
    report = (tiny_plan / "report.txt").read_text()
    assert report.startswith("compiling model.py: ") and "graphgpt compile report" in report
    assert "  optimizer  adam, lr 0.01 -> min_lr 1e-05, linear schedule, warmup 0 steps, decay_steps 10000, " \
           "betas 0.9/0.95, eps 1e-08, clip 1, grad_accum 1" in report


def test_one_set_takes_several_settings(tmp_path):
    out = tmp_path / "p"
    proc = run_cli(COMPILE, str(ROOT / "model.py"), "--out", str(out), "--set", *TINY[:3], "--set", *TINY[3:],
                   "optimizer=adamw", "weight_decay=0.1", "lr_schedule=cosine", "warmup_steps=3", "decay_steps=40")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 2 and proc.stderr == ""
    assert lines[0].startswith("compiled model.py in ") and "9,888 parameters, arena 0.21 MiB, " in lines[0]
    assert " launches in 4 programs; report: " + str(out / "report.txt") in lines[0]
    assert lines[1] == ("optimizer adamw, lr 0.0001 -> min_lr 1e-05, cosine schedule, warmup 3 steps, decay_steps 40, "
                        "betas 0.9/0.95, eps 1e-08, weight decay 0.1, clip 1, grad_accum 1")
    assert "  optimizer  " + lines[1].removeprefix("optimizer ") in (out / "report.txt").read_text()
    config = json.loads((out / "plan.json").read_text())["config"]
    assert [config[k] for k in ("n_layer", "n_head", "n_embd", "block_size", "batch_size")] == [2, 2, 16, 8, 2]


def test_a_model_file_after_set_is_named(tmp_path):
    proc = run_cli(COMPILE, "--out", str(tmp_path / "p"), "--set", "n_layer=2", str(ROOT / "model.py"))
    assert_user_error(proc, f"--set takes KEY=VALUE up to the next option and got '{ROOT / 'model.py'}': "
                            "name the model file before --set")
    assert_user_error(run_cli(COMPILE, "--out", str(tmp_path / "p")), "the following arguments are required: model")


def test_help_names_the_optimizer_and_schedule_settings():
    proc = run_cli(COMPILE, "--help")
    assert proc.returncode == 0
    text = " ".join(proc.stdout.split())
    for setting in ("optimizer=adam", "lr=0.0001", "min_lr=1e-05", "lr_schedule=linear", "warmup_steps=0",
                    "decay_steps=10000", "beta1=0.9", "beta2=0.95", "weight_decay=0.0", "grad_clip=1.0", "--device-memory"):
        assert setting in text, setting


def test_a_closed_stdout_still_writes_the_plan(tmp_path):
    """`compile ... | head -1`: the reader goes after the first line; the plan is written all the same."""
    out = tmp_path / "p"
    status, err = run_into_head(COMPILE, str(ROOT / "model.py"), "--out", str(out), *sets(TINY))
    assert (status, err) == (0, "")
    assert (out / "plan.json").is_file() and (out / "manifest.json").is_file()


def test_a_model_path_that_is_a_directory(tmp_path):
    assert_user_error(run_cli(COMPILE, str(tmp_path), "--out", str(tmp_path / "p")),
                      f"model file {tmp_path} is a directory")


@pytest.mark.parametrize("body,message", [
    ("import sys\nsys.exit(0)\n", "exits.py:2: the model called sys.exit(0) while the model file was imported"),
    ("raise SystemExit('bye')\n", "exits.py:1: the model called sys.exit('bye') while the model file was imported"),
    ("CONFIG = {}\nraise ValueError('no config today')\n", "exits.py:2: ValueError: no config today while the model"),
    ("import sys\nCONFIG = dict(batch_size=2, block_size=4, vocab_size=0)\n\ndef forward(idx, cfg):\n    sys.exit(3)\n",
     "exits.py:5: the model called sys.exit(3)"),
    ("CONFIG = 5\ndef forward(idx, cfg):\n    return idx\n", "exits.py: CONFIG must be a dict of settings by name, got int"),
    ("CONFIG = {}\nforward = 3\n", "exits.py: forward must be a function forward(idx, cfg)"),
    ("CONFIG = 1\x00\n", "exits.py: syntax error: source code string cannot contain null bytes"),
], ids=["sys.exit(0)", "SystemExit", "an exception", "sys.exit in forward", "CONFIG not a dict", "forward not a function",
        "a null byte"])
def test_a_model_that_exits_or_raises_is_one_line(tmp_path, body, message):
    model = tmp_path / "exits.py"
    model.write_text(body)
    proc = run_cli(COMPILE, str(model), "--out", str(tmp_path / "p"))
    assert_user_error(proc, message)
    assert proc.stdout == "" and not (tmp_path / "p").exists()


def test_a_set_value_of_thousands_of_digits_is_shown_short(tmp_path):
    proc = run_cli(COMPILE, str(ROOT / "model.py"), "--out", str(tmp_path / "p"), "--set", "n_layer=" + "9" * 5000)
    assert_user_error(proc, "--set n_layer: '" + "9" * 37 + "...' is not an integer (digits only)")
    assert len(proc.stderr) < 200


def test_unknown_set_key(tmp_path):
    assert_user_error(run_cli(COMPILE, str(ROOT / "model.py"), "--out", str(tmp_path / "p"), "--set", "n_layers=2"),
                      "unknown --set key 'n_layers'")


def test_bad_set_value(tmp_path):
    assert_user_error(run_cli(COMPILE, str(ROOT / "model.py"), "--out", str(tmp_path / "p"), "--set", "n_layer=two"),
                      "n_layer")


def test_missing_model_file(tmp_path):
    assert_user_error(run_cli(COMPILE, str(tmp_path / "nope.py"), "--out", str(tmp_path / "p")), "nope.py")


def test_shape_error_names_the_model_line(tmp_path):
    model = (ROOT / "model.py").read_text().replace("return x @ weight + bias", "return x @ weight.transpose(1, 0) + bias")
    path = tmp_path / "broken.py"
    path.write_text(model)
    line = next(i for i, l in enumerate(model.splitlines(), 1) if "weight.transpose(1, 0)" in l)
    proc = run_cli(COMPILE, str(path), "--out", str(tmp_path / "p"), *sets(TINY))
    assert_user_error(proc, f"broken.py:{line}", "matmul", "inner dimensions differ")


def test_model_that_fails_to_trace(tmp_path):
    path = tmp_path / "bad.py"
    path.write_text(textwrap.dedent("""\
        CONFIG = dict(batch_size=2, block_size=4, vocab_size=0)

        def forward(idx, cfg):
            return undefined_name
        """))
    assert_user_error(run_cli(COMPILE, str(path), "--out", str(tmp_path / "p")), "bad.py:4", "NameError")


def test_failed_compile_keeps_the_old_plan(tmp_path, tiny_plan):
    out = tmp_path / "keep"
    out.mkdir()
    (out / "plan.json").write_text("precious")
    run_cli(COMPILE, str(ROOT / "model.py"), "--out", str(out), "--set", "bogus=1")
    assert (out / "plan.json").read_text() == "precious"


def test_adamw_with_cosine_schedule_trains(tmp_path, corpus):
    out, log = tmp_path / "adamw", tmp_path / "m.jsonl"
    opts = TINY + ["optimizer=adamw", "lr_schedule=cosine", "warmup_steps=5", "weight_decay=0.1", "lr=1e-2"]
    proc = run_cli(COMPILE, str(ROOT / "model.py"), "--out", str(out), "--data", str(corpus), *sets(opts))
    assert proc.returncode == 0, proc.stderr
    proc = run_cli("-m", "graphgpt.run", "--plan", str(out), "--data", str(corpus), "--steps", "20",
                   "--backend", "numpy", "--log", str(log), "--generate", "0")
    assert proc.returncode == 0, proc.stderr
    records = step_records(log)
    assert records[0]["lr"] == pytest.approx(1e-2 / 5)  # warmup
    assert records[-1]["loss"] < 0.5 * records[0]["loss"]


def test_train_save_generate(tmp_path, tiny_plan, corpus):
    log, save = tmp_path / "m.jsonl", tmp_path / "weights"
    proc = run_cli("-m", "graphgpt.run", "--plan", str(tiny_plan), "--data", str(corpus), "--steps", "40",
                   "--backend", "numpy", "--log", str(log), "--save", str(save), "--generate", "5")
    assert proc.returncode == 0, proc.stderr
    records = step_records(log)
    assert [r["step"] for r in records] == list(range(1, 41))
    assert {"step", "loss", "lr", "grad_norm", "ms"} <= set(records[0])
    assert records[-1]["loss"] < 0.5 * records[0]["loss"]
    assert "sample (" in proc.stdout and "loss" in proc.stdout
    checkpoint = save / "step_00000040"
    named = load_safetensors(checkpoint / "model.safetensors")
    ordered = load_seed_weights(checkpoint / "trained_weights.bin")
    assert list(named)[:2] == ["wte", "wpe"] and list(named)[-1] == "lm_head.weight"
    for a, b in zip(named.values(), ordered):
        np.testing.assert_array_equal(a, b)
    # the saved weights generate, without training, what the trained run generated
    again = run_cli("-m", "graphgpt.run", "--plan", str(tiny_plan), "--data", str(corpus), "--steps", "0",
                    "--backend", "numpy", "--init-from", str(save), "--generate", "5", "--val-fraction", "0.2")
    assert again.returncode == 0, again.stderr
    assert "step 0 | train " in again.stdout and "best val loss" in again.stdout  # the loaded weights, scored
    sample = next(line for line in proc.stdout.splitlines() if line.startswith("sample ("))
    assert sample.split(":", 1)[1] == next(line for line in again.stdout.splitlines()
                                           if line.startswith("sample (")).split(":", 1)[1]
    assert "trained" not in again.stdout


@pytest.mark.parametrize("harness", ["attention_check", "cross_entropy_check", "embedding_grad_check",
                                     "gemm_epilogue_check", "quantize_check"])
def test_a_kernel_harness_without_a_gpu_is_one_line(harness):
    from graphgpt.runtime import cuda_available
    if cuda_available():
        pytest.skip("this machine has a GPU: the harness runs")
    proc = run_cli(str(ROOT / "tools" / f"{harness}.py"))
    assert_user_error(proc, "no NVIDIA GPU visible to CuPy")


UNREACHABLE = {  # a tool pointed at a path inside a directory the user may not search
    "compile --out": lambda d, plan, corpus: [COMPILE, str(ROOT / "model.py"), "--out", str(d / "plan")],
    "compile's model file": lambda d, plan, corpus: [COMPILE, str(d / "model.py")],
    "run --plan": lambda d, plan, corpus: ["-m", "graphgpt.run", "--plan", str(d / "plan")],
    "run --data": lambda d, plan, corpus: ["-m", "graphgpt.run", "--plan", str(plan), "--data", str(d / "text.txt")],
    "run --log": lambda d, plan, corpus: ["-m", "graphgpt.run", "--plan", str(plan), "--data", str(corpus),
                                          "--log", str(d / "log.jsonl")],
    "sample --init-from": lambda d, plan, corpus: ["-m", "graphgpt.sample", "--plan", str(plan), "--init-from", str(d / "ck")],
}


@pytest.mark.parametrize("what", UNREACHABLE)
def test_a_path_the_user_may_not_reach_is_one_line(tmp_path, tiny_plan, corpus, what):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0)
    try:
        proc = run_cli(*UNREACHABLE[what](locked, tiny_plan, corpus), bound_by_file_modes=True)
    finally:
        locked.chmod(0o700)
    if proc.returncode == 77:
        pytest.skip("this machine lets no process give up root's way past file modes")
    assert_user_error(proc, f"{locked}/", "permission denied")
    assert not any(locked.iterdir())


@pytest.mark.parametrize("argv, flag, text", [
    (["-m", "graphgpt.run", "--plan", "compiled", "--steps", "1_0"], "--steps", "1_0"),
    (["-m", "graphgpt.run", "--plan", "compiled", "--eval-every", "\u0663"], "--eval-every", "\u0663"),
    (["-m", "graphgpt.run", "--plan", "compiled", "--lr", "1_0e-3"], "--lr", "1_0e-3"),
    (["-m", "graphgpt.sample", "--plan", "compiled", "--tokens", "+5"], "--tokens", "+5"),
    ([str(ROOT / "tools" / "prepare.py"), "--val-fraction", "0.1_0"], "--val-fraction", "0.1_0"),
    ([str(ROOT / "tools" / "bench.py"), "--plan", "compiled", "--steps", " 3"], "--steps", " 3")],
    ids=["run int underscore", "run other script's digit", "run number underscore", "sample plus sign",
         "prepare number", "bench space"])
def test_a_flags_value_is_read_as_set_reads_one(argv, flag, text):
    """An integer flag takes ASCII digits, a number flag a decimal or scientific literal, as --set
    does (graphgpt/literals.py): int() and float() would take each of these."""
    kind = "a number" if flag in ("--lr", "--val-fraction") else "an integer (digits only)"
    assert_user_error(run_cli(*argv), f"argument {flag}: {text!r} is not {kind}")
