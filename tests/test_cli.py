"""The command-line tools as a user meets them: bad input is one line and exit code 2."""
import textwrap

import numpy as np
import pytest

from graphgpt.tensor_files import load_safetensors, load_seed_weights
from tests.conftest import COMPILE, ROOT, TINY, assert_user_error, run_cli, sets, step_records



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
