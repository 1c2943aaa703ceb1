"""Sampling: the choice of the next token, and `python -m graphgpt.sample` with no training."""
import numpy as np
import pytest

from graphgpt.sample import pick
from tests.conftest import COMPILE, ROOT, TINY, assert_user_error, run_cli, run_into_head, sets


def draws(logits, n=4000, **kw):
    rng = np.random.default_rng(0)
    return np.bincount([pick(np.array(logits, float), rng=rng, **kw) for _ in range(n)], minlength=len(logits))


def test_greedy_takes_the_most_likely():
    assert pick(np.array([0.1, 3.0, 2.9]), 0.0, 0, None) == 1


def test_top_k_and_top_p_keep_only_the_most_likely():
    logits = np.log([0.5, 0.3, 0.15, 0.05])
    assert (draws(logits, temperature=1.0, top_k=2)[2:] == 0).all()
    counts = draws(logits, temperature=1.0, top_k=0, top_p=0.79)  # 0.5 + 0.3 reach it
    assert (counts[2:] == 0).all() and abs(counts[0] / counts.sum() - 0.5 / 0.8) < 0.03
    counts = draws(logits, temperature=1.0, top_k=0, top_p=0.81)  # needs the third too
    assert counts[2] > 0 and counts[3] == 0
    assert (draws(logits, temperature=1.0, top_k=0, top_p=0.4)[1:] == 0).all()  # the first alone reaches it


def test_temperature_one_draws_the_softmax():
    logits = np.log([0.6, 0.3, 0.1])
    counts = draws(logits, n=6000, temperature=1.0, top_k=0)
    np.testing.assert_allclose(counts / counts.sum(), [0.6, 0.3, 0.1], atol=0.02)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("sample")
    corpus = root / "corpus.txt"
    corpus.write_text("the cat sat on the mat. " * 40)
    assert run_cli(COMPILE, str(ROOT / "model.py"), "--out", str(root / "plan"), "--data", str(corpus),
                   *sets(TINY)).returncode == 0
    proc = run_cli("-m", "graphgpt.run", "--plan", str(root / "plan"), "--data", str(corpus), "--steps", "30",
                   "--backend", "numpy", "--generate", "8", "--prompt", "the cat", "--save", str(root / "ckpt"))
    assert proc.returncode == 0, proc.stderr
    return root, proc.stdout


def test_sample_continues_a_checkpoint_as_the_training_run_did(trained):
    """Greedy from the saved weights gives the text the training run generated at its end."""
    root, train_out = trained
    proc = run_cli("-m", "graphgpt.sample", "--plan", str(root / "plan"), "--init-from", str(root / "ckpt"),
                   "--prompt", "the cat", "--tokens", "8", "--backend", "numpy")
    assert proc.returncode == 0, proc.stderr
    generated = train_out.split("sample (")[1].split("): ", 1)[1].strip()
    text = proc.stdout.split("): ", 1)[1].strip()
    assert len(generated) > 8 and text.startswith("the cat") and text.endswith(generated), (text, generated)


def test_sampled_samples_differ_and_repeat_with_the_seed(trained):
    root, _ = trained
    cmd = ["-m", "graphgpt.sample", "--plan", str(root / "plan"), "--init-from", str(root / "ckpt"),
           "--tokens", "12", "--samples", "3", "--temperature", "2.0", "--top-p", "0.95", "--backend", "numpy"]
    first, again = run_cli(*cmd), run_cli(*cmd)
    assert first.returncode == 0, first.stderr
    lines = [line.split("): ", 1)[1] for line in first.stdout.splitlines() if line.startswith("sample ")]
    assert len(lines) == 3 and len(set(lines)) > 1
    assert [line.split("): ", 1)[1] for line in again.stdout.splitlines() if line.startswith("sample ")] == lines


@pytest.mark.parametrize("args, message", [
    (["--top-p", "0"], "--top-p must be in (0, 1]"),
    (["--tokens", "0"], "--tokens must be at least 1"),
    (["--temperature", "-1"], "--temperature must be"),
    (["--seed", "-1"], "--seed must not be negative"),
    (["--top-k", "5"], "--top-k narrows sampling, which --temperature T > 0 turns on"),
    (["--top-p", "0.5"], "--top-p narrows sampling, which --temperature T > 0 turns on"),
])
def test_bad_arguments_are_one_line_and_status_2(trained, args, message):
    root, _ = trained
    proc = run_cli("-m", "graphgpt.sample", "--plan", str(root / "plan"), "--init-from", str(root / "ckpt"), *args)
    assert proc.returncode == 2 and message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_missing_weights_are_one_line_and_status_2(trained, tmp_path):
    root, _ = trained
    proc = run_cli("-m", "graphgpt.sample", "--plan", str(root / "plan"), "--init-from", str(tmp_path / "none"))
    assert proc.returncode == 2 and "does not exist" in proc.stderr


def test_head_reading_one_sample_ends_the_sampling_quietly(trained):
    root, _ = trained
    status, err = run_into_head("-m", "graphgpt.sample", "--plan", str(root / "plan"), "--init-from",
                                str(root / "ckpt"), "--tokens", "4", "--samples", "50", "--backend", "numpy")
    assert status == 0 and err == "", err


@pytest.mark.parametrize("prompt, message", [
    (b"the \xff cat", "--prompt is not UTF-8 text: byte 0xff at byte 4 of 9"),
    ("the dog".encode(), "--prompt: 1 distinct word token(s) not in the vocabulary ('dog')"),
])
def test_a_prompt_that_is_not_text_or_outside_the_vocabulary_is_one_line(trained, prompt, message):
    root, _ = trained
    proc = run_cli("-m", "graphgpt.sample", "--plan", str(root / "plan"), "--init-from", str(root / "ckpt"),
                   b"--prompt", prompt)
    assert_user_error(proc, message)
