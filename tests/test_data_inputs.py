"""Data paths and prompts as a user gives them to compile, run and prepare: a FIFO, a device, a
binary file, a directory, command-line bytes that are not text. Each is one line and exit status 2
before any work, and none of them hangs: every process runs under a timeout."""
import json
import os
import shutil
from pathlib import Path

import pytest

from tests.conftest import COMPILE, DEEP_JSON, ROOT, TINY, assert_user_error, run_cli, sets

PREPARE = str(ROOT / "tools" / "prepare.py")
HANG = 60  # seconds: far beyond what a refusal takes, far below a test run's patience


@pytest.fixture(scope="module")
def plans(tmp_path_factory):
    """(word plan, char plan with [UNK], a prepared directory of the word plan, its corpus)."""
    tmp = tmp_path_factory.mktemp("inputs")
    corpus = tmp / "corpus.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog. " * 40)
    word, char = tmp / "word", tmp / "char"
    for out, options in ((word, ["--data", str(corpus)]), (char, ["--tokenizer", "char"])):
        proc = run_cli(COMPILE, str(ROOT / "model.py"), "--out", str(out), *options, *sets(TINY))
        assert proc.returncode == 0, proc.stderr
    proc = run_cli(PREPARE, str(corpus), "--plan", str(word), "--out", str(tmp / "prepared"))
    assert proc.returncode == 0, proc.stderr
    return word, char, tmp / "prepared", corpus


def train(plan, *args):
    return run_cli("-m", "graphgpt.run", "--plan", str(plan), "--steps", "2", "--backend", "numpy",
                   "--generate", "0", *map(os.fsdecode, args), timeout=HANG)


def special_files(tmp: Path) -> dict[str, tuple[Path, str]]:
    fifo = tmp / "fifo.txt"
    if not fifo.exists():
        os.mkfifo(fifo)
    return {"fifo": (fifo, "is a FIFO, not a regular file"),
            "/dev/zero": (Path("/dev/zero"), "is a character device, not a regular file"),
            "/dev/null": (Path("/dev/null"), "is a character device, not a regular file")}


@pytest.mark.parametrize("kind", ["fifo", "/dev/zero", "/dev/null"])
def test_run_refuses_a_path_that_is_no_regular_file(plans, tmp_path, kind):
    word, _, _, corpus = plans
    path, fragment = special_files(tmp_path)[kind]
    assert_user_error(train(word, "--data", path), f"data file {path} {fragment}")
    assert_user_error(train(word, "--data", corpus, "--val-data", path), f"data file {path} {fragment}")


@pytest.mark.parametrize("kind", ["fifo", "/dev/zero"])
def test_compile_and_prepare_refuse_a_path_that_is_no_regular_file(plans, tmp_path, kind):
    word, *_ = plans
    path, fragment = special_files(tmp_path)[kind]
    proc = run_cli(COMPILE, str(ROOT / "model.py"), "--out", str(tmp_path / "plan"), "--data", str(path),
                   *sets(TINY), timeout=HANG)
    assert_user_error(proc, fragment)
    proc = run_cli(PREPARE, str(path), "--plan", str(word), "--out", str(tmp_path / "out"), timeout=HANG)
    assert_user_error(proc, fragment)
    assert not (tmp_path / "plan").exists() and not (tmp_path / "out").exists()


def test_a_token_file_renamed_is_not_trained_on_as_text(plans, tmp_path):
    word, _, prepared, _ = plans
    renamed = tmp_path / "train.dat"
    renamed.write_bytes((prepared / "train.bin").read_bytes())
    assert_user_error(train(word, "--data", renamed), "is not text (a NUL byte at offset",
                      "read as FILE.bin or as its directory (--data DIR)")


def test_run_reads_a_prepared_directory(plans):
    word, _, prepared, _ = plans
    proc = train(word, "--data", prepared, "--eval-every", "1", "--eval-batches", "1")
    assert proc.returncode == 0, proc.stderr
    assert f"{prepared}/train.bin (uint16 token files, val.bin held out)" in proc.stdout
    assert "val " in proc.stdout  # the held-out loss, from val.bin


def test_run_refuses_another_directory_or_another_plans_tokens(plans, tmp_path):
    word, char, prepared, _ = plans
    assert_user_error(train(word, "--data", tmp_path), f"data directory {tmp_path} has no meta.json")
    assert_user_error(train(char, "--data", prepared), "holds ids of tokenizer", "prepare it again")


@pytest.fixture(scope="module")
def other_preparations(plans, tmp_path_factory):
    """Directories prepared from the same corpus with --val-fraction 0.5 and 0: files of other sizes."""
    word, _, _, corpus = plans
    tmp = tmp_path_factory.mktemp("other")
    for fraction in ("0.5", "0"):
        proc = run_cli(PREPARE, str(corpus), "--plan", str(word), "--out", str(tmp / fraction),
                       "--val-fraction", fraction)
        assert proc.returncode == 0, proc.stderr
    return tmp / "0.5", tmp / "0"


def counts(directory):
    meta = json.loads((directory / "meta.json").read_text())
    return meta["train_tokens"], meta["val_tokens"]


# What disagrees in a prepared directory, made from the prepared one (`data`, a copy), the one of
# --val-fraction 0.5 (`half`) and the one of --val-fraction 0 (`whole`); and the fragment naming it.
INCONSISTENT = {
    "train.bin of another preparation": lambda data, half, whole: (
        shutil.copy(half / "train.bin", data / "train.bin"),
        f"train.bin holds {counts(half)[0]:,} uint16 ids, its meta.json records train_tokens {counts(data)[0]:,}"),
    "val.bin of another preparation": lambda data, half, whole: (
        shutil.copy(half / "val.bin", data / "val.bin"),
        f"val.bin holds {counts(half)[1]:,} uint16 ids, its meta.json records val_tokens {counts(data)[1]:,}"),
    "meta.json of another preparation": lambda data, half, whole: (
        shutil.copy(half / "meta.json", data / "meta.json"),
        f"train.bin holds {(data / 'train.bin').stat().st_size // 2:,} uint16 ids, its meta.json records "
        f"train_tokens {counts(half)[0]:,}"),
    "a val.bin beside val_tokens 0": lambda data, half, whole: (
        [shutil.copy(whole / name, data / name) for name in ("meta.json", "train.bin")],
        "has a val.bin, its meta.json records val_tokens 0"),
    "no val.bin beside val_tokens above 0": lambda data, half, whole: (
        (data / "val.bin").unlink(), f"has no val.bin, its meta.json records val_tokens {counts(data)[1]:,}"),
    "meta.json records no counts": lambda data, half, whole: (
        (data / "meta.json").write_text(json.dumps(
            dict(json.loads((data / "meta.json").read_text()), train_tokens=None, val_tokens=None))),
        "its meta.json records train_tokens null, not a token count"),
}


@pytest.mark.parametrize("case", INCONSISTENT)
def test_run_refuses_a_prepared_directory_whose_files_disagree(plans, other_preparations, tmp_path, case):
    word, _, prepared, _ = plans
    data = tmp_path / "data"
    shutil.copytree(prepared, data)
    _, fragment = INCONSISTENT[case](data, *other_preparations)
    assert_user_error(train(word, "--data", data), f"data directory {data}", fragment,
                      f"prepare it again: python tools/prepare.py TEXT --plan PLAN --out {data}")


def test_run_refuses_a_token_file_its_meta_json_disagrees_with(plans, other_preparations, tmp_path):
    """Named one by one, train.bin and val.bin still hold the counts the meta.json beside them records."""
    word, _, prepared, _ = plans
    half, whole = other_preparations
    data = tmp_path / "data"
    shutil.copytree(whole, data)
    shutil.copy(prepared / "val.bin", data / "val.bin")  # stale: meta.json records val_tokens 0
    assert_user_error(train(word, "--data", data / "train.bin", "--val-data", data / "val.bin"),
                      f"val.bin holds {counts(prepared)[1]:,} uint16 ids, its meta.json records val_tokens 0")
    shutil.copy(half / "train.bin", data / "train.bin")
    assert_user_error(train(word, "--data", data / "train.bin"),
                      f"train.bin holds {counts(half)[0]:,} uint16 ids, its meta.json records train_tokens "
                      f"{counts(whole)[0]:,}")


def test_run_refuses_a_directory_whose_meta_json_nests_too_deeply(plans, tmp_path):
    word, _, prepared, _ = plans
    shutil.copytree(prepared, tmp_path / "data")
    (tmp_path / "data" / "meta.json").write_text(DEEP_JSON)
    assert_user_error(train(word, "--data", tmp_path / "data"), f"data directory {tmp_path / 'data'} has no meta.json")


def test_run_counts_the_characters_read_as_unk(plans, tmp_path):
    _, char, *_ = plans
    text = tmp_path / "accents.txt"
    text.write_text("héllo wörld, the plain part. " * 40)
    proc = train(char, "--data", text)
    assert proc.returncode == 0, proc.stderr
    assert "80 of 1,160 characters outside the vocabulary, read as [UNK]" in proc.stdout.splitlines()[0]


@pytest.mark.parametrize("prompt, fragment", [
    (b"the \xff\xfe fox", "--prompt is not UTF-8 text: byte 0xff at byte 4 of 10"),
    (b"the \xe9", "--prompt is not UTF-8 text: byte 0xe9 at byte 4 of 5"),
])
def test_run_refuses_a_prompt_that_is_not_text(plans, prompt, fragment):
    word, *_ = plans
    assert_user_error(train(word, "--prompt", prompt), fragment)


@pytest.mark.parametrize("plan, prompt, fragment", [
    (0, "the zebra", "--prompt: 1 distinct word token(s) not in the vocabulary ('zebra')"),
    (1, "the café", "--prompt: 1 distinct char token(s) not in the vocabulary ('é')"),
])
def test_run_refuses_a_prompt_outside_the_vocabulary(plans, plan, prompt, fragment):
    """Even a vocabulary with [UNK]: the model would continue a prompt it cannot read."""
    assert_user_error(train(plans[plan], "--prompt", prompt), fragment)


def test_the_default_data_outside_a_word_vocabulary_says_so(plans):
    word, *_ = plans
    assert_user_error(train(word), "graphgpt source (", "the data without --data:",
                      "word token(s) not in the vocabulary")


def test_run_takes_a_utf8_prompt(plans):
    _, char, *_ = plans
    proc = train(char, "--prompt", "the fox".encode(), "--generate", "3")
    assert proc.returncode == 0, proc.stderr
    assert "sample (3 tokens" in proc.stdout
