"""tools/prepare.py as a user runs it: the token files it writes, and bad input left untouched."""
import json
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest

from graphgpt import plan as plan_io
from graphgpt.data import load_dataset, load_tokens, tokenizer_digest
from graphgpt.errors import UserError, reported
from graphgpt.tokenizer import Tokenizer
from tests.conftest import COMPILE, DEEP_JSON, ROOT, TINY, assert_user_error, fill, run_cli, run_into_head, sets

PREPARE = str(ROOT / "tools" / "prepare.py")

# Words, punctuation, runs of whitespace, non-ASCII text and stretches with nowhere to cut (a long
# word, a run of non-ASCII letters): all that a cut between pieces could get wrong.
CORPUS = ("The quick brown fox, 42 times: jumps over the lazy dog.\n\tNaïve café — déjà vu?  "
          "日本語のテキスト (x1) supercalifragilisticexpialidocious!\r\n") * 40


def snapshot(path):
    """Everything under `path` (hidden files too): its bytes if a file, None if absent."""
    if not path.exists():
        return None
    if path.is_file():
        return path.read_bytes()
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def prepare(text, plan, out, *options):
    return run_cli(PREPARE, str(text), "--plan", str(plan), "--out", str(out), *map(str, options))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "corpus.txt"
    path.write_bytes(CORPUS.encode("utf-8"))  # bytes: "\r\n" stays as written
    return path


def compile_plan(tmp_path_factory, corpus, *options):
    out = tmp_path_factory.mktemp("plan") / "tiny"
    proc = run_cli(COMPILE, str(ROOT / "model.py"), "--out", str(out), "--data", str(corpus), *options)
    assert proc.returncode == 0, proc.stderr
    return out


@pytest.fixture(scope="module")
def word_plan(tmp_path_factory, corpus):
    return compile_plan(tmp_path_factory, corpus, *sets(TINY))


@pytest.fixture(scope="module")
def char_plan(tmp_path_factory, corpus):
    return compile_plan(tmp_path_factory, corpus, "--tokenizer", "char", *sets(TINY))


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, corpus, word_plan):
    """An --out that an earlier prepare.py run filled."""
    out = tmp_path_factory.mktemp("prepared") / "out"
    assert prepare(corpus, word_plan, out).returncode == 0
    return out


@pytest.fixture(scope="module")
def long_text(tmp_path_factory):
    """12 MB of the corpus: a few seconds of encoding, time enough to be interrupted midway."""
    path = tmp_path_factory.mktemp("long") / "long.txt"
    path.write_bytes(CORPUS.encode("utf-8") * 2000)
    return path


def tokenizer_of(plan_dir):
    return Tokenizer.from_json(plan_io.load(plan_dir).tokenizer)


def read_ids(path, dtype):
    return np.fromfile(path, dtype=dtype)


# --- what it writes ---------------------------------------------------------------------------

def test_writes_the_encoding_split_as_nanogpt(tmp_path, corpus, word_plan):
    out = tmp_path / "tokens"
    proc = prepare(corpus, word_plan, out)
    assert proc.returncode == 0, proc.stderr
    tokenizer = tokenizer_of(word_plan)
    ids = tokenizer.encode(CORPUS)
    cut = int(len(ids) * (1 - 0.1))
    assert np.array_equal(read_ids(out / "train.bin", np.uint16), ids[:cut])
    assert np.array_equal(read_ids(out / "val.bin", np.uint16), ids[cut:])
    meta = json.loads((out / "meta.json").read_text())
    assert meta == {"format": "graphgpt-tokens", "version": 1, "dtype": "uint16",
                    "vocab_size": plan_io.load(word_plan).config["vocab_size"],
                    "tokenizer_sha256": tokenizer_digest(tokenizer), "train_tokens": cut,
                    "val_tokens": len(ids) - cut, "source": "corpus.txt"}
    assert sorted(p.name for p in out.iterdir()) == ["meta.json", "train.bin", "val.bin"]
    summary = proc.stdout.strip().splitlines()[-1]
    assert f"train.bin {cut:,} tokens, val.bin {len(ids) - cut:,} tokens (uint16" in summary


def test_training_reads_the_files_with_their_plan_only(prepared, word_plan, char_plan):
    vocab_size = plan_io.load(word_plan).config["vocab_size"]
    tokens, _ = load_tokens(prepared / "train.bin", tokenizer_of(word_plan), vocab_size)
    assert np.array_equal(tokens, read_ids(prepared / "train.bin", np.uint16))
    with pytest.raises(UserError, match="the plan's tokenizer is"):
        load_tokens(prepared / "val.bin", tokenizer_of(char_plan), vocab_size)


def test_a_vocabulary_beyond_uint16_gets_uint32_ids(tmp_path_factory, tmp_path, corpus):
    plan = compile_plan(tmp_path_factory, corpus, *sets(["n_layer=1", "n_head=2", "n_embd=8", "block_size=8",
                                                         "batch_size=2", "vocab_size=70000"]))
    out = tmp_path / "tokens"
    assert prepare(corpus, plan, out, "--val-fraction", "0.5").returncode == 0
    ids = tokenizer_of(plan).encode(CORPUS)
    cut = int(len(ids) * 0.5)
    assert np.array_equal(read_ids(out / "train.bin", np.uint32), ids[:cut])
    assert np.array_equal(read_ids(out / "val.bin", np.uint32), ids[cut:])
    assert json.loads((out / "meta.json").read_text())["dtype"] == "uint32"


@pytest.mark.parametrize("kind", ["word", "char"])
def test_encoding_in_small_pieces_gives_the_ids_of_the_whole_text(tmp_path, corpus, word_plan, char_plan, kind):
    plan = word_plan if kind == "word" else char_plan
    out = tmp_path / "pieces"
    proc = prepare(corpus, plan, out, "--val-fraction", "0", "--chunk-bytes", "7")
    assert proc.returncode == 0, proc.stderr
    assert np.array_equal(read_ids(out / "train.bin", np.uint16), tokenizer_of(plan).encode(CORPUS))
    assert not (out / "val.bin").exists()
    progress = [line for line in proc.stdout.splitlines() if "% of corpus.txt" in line]
    assert len(progress) == 10 and progress[-1].lstrip().startswith("100%")


def test_rerun_replaces_its_own_files(tmp_path, corpus, word_plan, prepared):
    out = tmp_path / "out"
    shutil.copytree(prepared, out)
    assert prepare(corpus, word_plan, out, "--val-fraction", "0").returncode == 0
    # The old val.bin would not continue the new train.bin: it goes.
    assert sorted(p.name for p in out.iterdir()) == ["meta.json", "train.bin"]
    assert np.array_equal(read_ids(out / "train.bin", np.uint16), tokenizer_of(word_plan).encode(CORPUS))
    assert json.loads((out / "meta.json").read_text())["val_tokens"] == 0


# --- bad input --------------------------------------------------------------------------------

def bad_text(tmp_path, name, content: bytes):
    path = tmp_path / name
    path.write_bytes(content)
    return path


# (text, options, fragment of the error), given the test's tmp_path and the good corpus.
BAD_INPUT = {
    "missing text": lambda t, corpus: (t / "nope.txt", [], "nope.txt does not exist"),
    "text is a directory": lambda t, corpus: (t, [], "is a directory"),
    "undecodable text": lambda t, corpus: (
        bad_text(t, "latin1.txt", CORPUS.encode() + "caf\xe9".encode("latin-1")), ["--chunk-bytes", "64"],
        f"not UTF-8 text (byte 0xe9 at offset {len(CORPUS.encode()) + 3})"),
    "empty text": lambda t, corpus: (bad_text(t, "empty.txt", b""), [], "empty.txt is empty"),
    "blank text": lambda t, corpus: (bad_text(t, "blank.txt", b" \n\t\n" * 50), ["--chunk-bytes", "16"],
                                     "empty or only whitespace"),
    "unknown tokens": lambda t, corpus: (bad_text(t, "zebra.txt", CORPUS.encode() + b" zebra"),
                                         ["--chunk-bytes", "64"], "zebra.txt: 1 distinct word token"),
    # A second --plan overrides the good one the test passes first.
    "missing plan": lambda t, corpus: (corpus, ["--plan", t / "noplan"], "noplan does not exist"),
    "val fraction 1": lambda t, corpus: (corpus, ["--val-fraction", "1"], "--val-fraction must be"),
    "val fraction below 0": lambda t, corpus: (corpus, ["--val-fraction", "-0.1"], "--val-fraction must be"),
    "too few tokens to hold out": lambda t, corpus: (bad_text(t, "short.txt", b"fox"), ["--val-fraction", "0.6"],
                                                     "too few to hold out"),
}


@pytest.mark.parametrize("out_before", ["absent", "prepared"])
@pytest.mark.parametrize("case", BAD_INPUT)
def test_bad_input_is_one_line_and_leaves_out_as_it_was(tmp_path, corpus, word_plan, prepared, case, out_before):
    out = tmp_path / "out"
    if out_before == "prepared":
        shutil.copytree(prepared, out)
    before = snapshot(out)
    text, options, fragment = BAD_INPUT[case](tmp_path, corpus)
    assert_user_error(prepare(text, word_plan, out, *options), fragment)
    assert snapshot(out) == before


def test_out_that_is_a_file(tmp_path, corpus, word_plan):
    out = tmp_path / "out.bin"
    out.write_bytes(b"precious")
    assert_user_error(prepare(corpus, word_plan, out), "is not a directory")
    assert out.read_bytes() == b"precious"


@pytest.mark.parametrize("files", [
    {"train.bin": b"\x01\x00"},
    {"val.bin": b"\x01\x00"},
    {"train.bin": b"\x01\x00", "meta.json": b'{"vocab_size": 50257}'},  # another tool's meta.json
    {"train.bin": b"\x01\x00", "meta.json": DEEP_JSON.encode()},
    {"meta.json": b"MY META\n"},  # a meta.json alone is the user's as much as a train.bin is
    {"meta.json": b'{"vocab_size": 50257}'},
    {"meta.json": b'{"format": "graphgpt-tokens", "notes": "mine"}'},  # not the fields prepare.py writes
])
def test_out_holding_token_files_of_another_tool(tmp_path, corpus, word_plan, files):
    out = tmp_path / "out"
    out.mkdir()
    for name, content in files.items():
        (out / name).write_bytes(content)
    before = snapshot(out)
    assert_user_error(prepare(corpus, word_plan, out), "not written by tools/prepare.py")
    assert snapshot(out) == before


def test_training_on_the_token_files_equals_training_on_the_text(tmp_path, corpus, word_plan, prepared):
    """train.bin and val.bin hold what --val-fraction 0.1 cuts from the text: the same run."""
    common = ["-m", "graphgpt.run", "--plan", str(word_plan), "--steps", "6", "--backend", "numpy",
              "--generate", "0", "--eval-every", "3", "--eval-batches", "2"]
    logs = {}
    for name, data in (("text", ["--data", str(corpus), "--val-fraction", "0.1"]),
                       ("bin", ["--data", str(prepared / "train.bin"), "--val-data", str(prepared / "val.bin")])):
        logs[name] = tmp_path / f"{name}.jsonl"
        proc = run_cli(*common, *data, "--log", str(logs[name]))
        assert proc.returncode == 0, proc.stderr
    strip = [{k: v for k, v in json.loads(line).items() if k not in ("ms", "tokens_per_s")}
             for line in logs["text"].read_text().splitlines()[1:]]  # after the header
    assert strip == [{k: v for k, v in json.loads(line).items() if k not in ("ms", "tokens_per_s")}
                     for line in logs["bin"].read_text().splitlines()[1:]]
    assert any("val_loss" in r for r in strip)


# --- interrupted, killed, out of space, read by head ------------------------------------------

def staging_dirs(out):
    return sorted(p.name for p in out.glob(".graphgpt-prepare.*"))


def started(text, plan, out):
    """A prepare of `text` (long.txt), once it reports progress: midway through its writing."""
    proc = subprocess.Popen([sys.executable, PREPARE, str(text), "--plan", str(plan), "--out", str(out),
                             "--chunk-bytes", str(1 << 18)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    line = proc.stdout.readline()
    assert "% of long.txt" in line, line + proc.stderr.read()
    assert [name.split(".")[2] for name in staging_dirs(out)] == [str(proc.pid)]
    return proc


def interrupted(text, plan, out, sig):
    """Start a prepare and send it `sig` once it reports progress, midway through its writing."""
    proc = started(text, plan, out)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    return proc, err


@pytest.mark.parametrize("sig, status, message", [
    (signal.SIGTERM, 128 + signal.SIGTERM, "terminated by SIGTERM: --out"),
    (signal.SIGHUP, 128 + signal.SIGHUP, "terminated by SIGHUP: --out"),
    (signal.SIGINT, 130, "interrupted"),
])
def test_a_signal_midway_removes_the_temporaries(tmp_path, long_text, word_plan, prepared, sig, status, message):
    out = tmp_path / "out"
    shutil.copytree(prepared, out)
    before = snapshot(out)
    proc, err = interrupted(long_text, word_plan, out, sig)
    lines = err.strip().splitlines()
    assert proc.returncode == status and len(lines) == 1 and lines[0].startswith(message), err
    assert snapshot(out) == before  # hidden files included: no staging directory is left


class Hangup(BaseException):
    """An exception a tool raises for a signal, as errors.Signalled is."""


def test_a_signal_stays_the_signal_when_its_unwinding_raises_another_error(capsys):
    """A signal's exception can land inside threading's lock handling, whose clean-up then raises
    RuntimeError over it (a pool's result being awaited): the tool still reports the signal."""
    def signalled(first: BaseException):
        def work():
            try:
                raise first
            finally:
                raise RuntimeError("cannot release un-acquired lock")
        return work

    assert reported(signalled(KeyboardInterrupt())) == 130
    assert capsys.readouterr().err.strip() == "interrupted"
    with pytest.raises(Hangup):
        reported(signalled(Hangup()))
    with pytest.raises(RuntimeError, match="un-acquired"):  # an error under an error stays an error
        reported(signalled(ValueError("a bug")))


def test_the_temporaries_of_a_killed_prepare_are_removed_by_the_next(tmp_path, long_text, corpus, word_plan):
    out = tmp_path / "out"
    proc, _ = interrupted(long_text, word_plan, out, signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL
    left, = out.glob(f".graphgpt-prepare.{proc.pid}.*.staging")
    assert (left / "train.bin").stat().st_size > 0  # what kill -9 leaves behind
    done = prepare(corpus, word_plan, out)
    assert done.returncode == 0, done.stderr
    assert f"removed {left}, left by an interrupted prepare (pid {proc.pid})" in done.stdout
    assert staging_dirs(out) == [] and sorted(p.name for p in out.iterdir()) == ["meta.json", "train.bin", "val.bin"]


def test_only_the_staging_directories_of_dead_prepares_are_removed(tmp_path, corpus, word_plan):
    """A directory without the marker, with the marker of another pid, or of a process that is alive,
    is left alone; in one with the marker, whatever prepare.py does not write stays."""
    out = tmp_path / "out"
    dead = []  # pids of processes that have ended
    for _ in range(3):
        with subprocess.Popen(["true"]) as ended:
            dead.append(ended.pid)
    marker = "graphgpt tools/prepare.py staging directory of pid {}\n"
    layout = {
        f".graphgpt-prepare.{dead[0]}.a1.staging": {"train.bin": "user's"},  # no marker
        f".graphgpt-prepare.{dead[1]}.b2.staging": {".graphgpt-staging": marker.format(dead[0])},
        f".graphgpt-prepare.{os.getpid()}.c3.staging": {".graphgpt-staging": marker.format(os.getpid())},  # alive
        f".graphgpt-prepare.{dead[2]}.d4.staging": {".graphgpt-staging": marker.format(dead[2]),
                                                    "train.bin": "ids", "notes.txt": "user's"},
    }
    for directory, files in layout.items():
        (out / directory).mkdir(parents=True)
        for name, content in files.items():
            (out / directory / name).write_text(content)
    done = prepare(corpus, word_plan, out)
    assert done.returncode == 0, done.stderr
    assert "removed" not in done.stdout
    left = {d: sorted(p.name for p in (out / d).iterdir()) for d in staging_dirs(out)}
    assert left == {**{d: sorted(files) for d, files in layout.items()},
                    f".graphgpt-prepare.{dead[2]}.d4.staging": ["notes.txt"]}


# Runs tools/prepare.py (argv[3:]) and SIGKILLs it just before its argv[2]-th rename or removal of
# a file of --out (argv[1]) itself, the files a reader sees: every step of its commit, one at a time.
KILL_BEFORE_STEP = """
import os, runpy, signal, sys
out, step = os.path.abspath(sys.argv[1]), int(sys.argv[2])
steps = 0
def kill_at_step(event, args):
    global steps
    if event in ("os.rename", "os.remove"):
        target = args[1] if event == "os.rename" else args[0]
        if os.path.dirname(os.path.abspath(os.fsdecode(target))) == out:
            steps += 1
            if steps == step:
                os.kill(os.getpid(), signal.SIGKILL)
sys.addaudithook(kill_at_step)
sys.argv = sys.argv[3:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.mark.parametrize("fraction", [0.1, 0])
def test_a_kill_at_any_step_of_the_commit_leaves_no_mix_that_training_reads(tmp_path, corpus, word_plan, fraction):
    """A prepare of another text of as many tokens (sizes alone cannot tell the two apart), killed
    before each step of its commit in turn, leaves the old set, the new set or one that training
    refuses; a prepare again then leaves the new set."""
    new_text = CORPUS.replace("quick brown", "brown quick")
    other = tmp_path / "other.txt"
    other.write_bytes(new_text.encode("utf-8"))
    tokenizer, vocab_size = tokenizer_of(word_plan), plan_io.load(word_plan).config["vocab_size"]
    old_ids, new_ids = tokenizer.encode(CORPUS), tokenizer.encode(new_text)
    assert len(old_ids) == len(new_ids) and not np.array_equal(old_ids, new_ids)
    old_cut, new_cut = int(len(old_ids) * 0.9), int(len(new_ids) * (1 - fraction))
    old = (old_ids[:old_cut], old_ids[old_cut:])
    new = (new_ids[:new_cut], new_ids[new_cut:] if fraction else None)

    def read(out):
        train, val, _ = load_dataset(out, tokenizer, vocab_size)
        return train, val

    def same(got, want):
        return np.array_equal(got[0], want[0]) and (
            got[1] is None if want[1] is None else got[1] is not None and np.array_equal(got[1], want[1]))

    step = 1
    while True:
        out = tmp_path / f"out{step}"
        assert prepare(corpus, word_plan, out).returncode == 0
        proc = run_cli("-c", KILL_BEFORE_STEP, str(out), str(step), PREPARE, str(other), "--plan", str(word_plan),
                       "--out", str(out), "--val-fraction", str(fraction))
        if proc.returncode == 0:  # no step left to kill it before
            break
        assert proc.returncode == -signal.SIGKILL, proc.stderr
        try:
            got = read(out)
        except UserError as e:
            assert "prepare it again" in str(e)
        else:
            mixed = not (same(got, old) or same(got, new))
            assert not mixed, f"killed before step {step}: training reads a mix of the two texts"
        again = prepare(other, word_plan, out, "--val-fraction", fraction)
        assert again.returncode == 0, again.stderr
        assert same(read(out), new)
        step += 1
    assert same(read(out), new)
    assert step > 3  # train.bin, val.bin and meta.json each changed in a step of their own


# Runs graphgpt.run (argv[4:]) and, as it opens the val.bin of --data argv[1], runs a whole
# prepare (argv[3]) of the text argv[2] into that directory: one committed between the reader's
# opening of train.bin and of val.bin.
PREPARE_WHILE_READING = """
import os, runpy, subprocess, sys
out, text, prepare = sys.argv[1:4]
val = os.path.join(os.path.abspath(out), "val.bin")
plan = sys.argv[sys.argv.index("--plan") + 1]
done = False
def prepare_meanwhile(event, args):
    global done
    if (event == "open" and not done and isinstance(args[0], (str, bytes, os.PathLike))
            and os.path.abspath(os.fsdecode(args[0])) == val):
        done = True
        subprocess.run([sys.executable, prepare, text, "--plan", plan, "--out", out], check=True)
sys.addaudithook(prepare_meanwhile)
sys.argv = [sys.argv[0], *sys.argv[4:]]
runpy.run_module("graphgpt.run", run_name="__main__", alter_sys=True)
"""


def test_training_refuses_a_directory_a_prepare_commits_into_while_it_reads(tmp_path, corpus, word_plan, prepared):
    """The old text's train.bin and the new one's val.bin, of as many tokens as the old ones, would
    pass every size check; the meta.json read first is no longer there once both are open."""
    other = tmp_path / "other.txt"
    other.write_bytes(CORPUS.replace("quick brown", "brown quick").encode("utf-8"))
    out = tmp_path / "out"
    shutil.copytree(prepared, out)
    proc = run_cli("-c", PREPARE_WHILE_READING, str(out), str(other), PREPARE, "--plan", str(word_plan),
                   "--data", str(out), "--steps", "1", "--backend", "numpy", "--generate", "0")
    assert_user_error(proc, f"data directory {out} changed while it was read")
    assert json.loads((out / "meta.json").read_text())["source"] == "other.txt"  # the prepare did run


def test_a_second_prepare_into_the_same_out_is_refused_while_the_first_works(tmp_path, long_text, corpus, word_plan):
    out = tmp_path / "out"
    first = started(long_text, word_plan, out)
    first.send_signal(signal.SIGSTOP)  # held midway, however fast the machine: the second meets it working
    try:
        second = prepare(corpus, word_plan, out)
    finally:
        first.send_signal(signal.SIGCONT)
    assert_user_error(second, f"another tools/prepare.py is writing into --out {out}")
    assert second.stdout == ""  # refused before it tokenised anything
    assert [name.split(".")[2] for name in staging_dirs(out)] == [str(first.pid)]
    _, err = first.communicate(timeout=120)
    assert first.returncode == 0, err
    meta = json.loads((out / "meta.json").read_text())
    assert meta["source"] == "long.txt"
    assert [(out / name).stat().st_size // 2 for name in ("train.bin", "val.bin")] == [meta["train_tokens"],
                                                                                      meta["val_tokens"]]
    third = prepare(corpus, word_plan, out)  # the lock ended with the first
    assert third.returncode == 0, third.stderr
    assert sorted(p.name for p in out.iterdir()) == ["meta.json", "train.bin", "val.bin"]


@pytest.mark.parametrize("full", ["before", "midway"])
def test_a_full_disk_is_one_line_and_keeps_the_old_output(small_fs, corpus, long_text, word_plan, full):
    out = small_fs / "out"
    assert prepare(corpus, word_plan, out).returncode == 0
    before = snapshot(out)
    if full == "before":
        fill(small_fs)
    proc = prepare(corpus if full == "before" else long_text, word_plan, out)
    assert_user_error(proc, f"cannot prepare {out}: No space left on device", "--out left as it was")
    assert snapshot(out) == before


def test_head_reading_one_line_does_not_stop_the_work(tmp_path, corpus, word_plan):
    text = tmp_path / "text.txt"
    text.write_bytes(CORPUS.encode("utf-8") * 50)
    out = tmp_path / "out"
    status, err = run_into_head(PREPARE, str(text), "--plan", str(word_plan), "--out", str(out),
                                "--chunk-bytes", "4096")
    assert status == 0 and err == "", err
    ids = np.concatenate([read_ids(out / "train.bin", np.uint16), read_ids(out / "val.bin", np.uint16)])
    assert np.array_equal(ids, tokenizer_of(word_plan).encode(CORPUS * 50))
