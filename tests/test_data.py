"""Data files (text and token files), the held-out split, and the samplers' rows, ranks and resume."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from graphgpt import data
from graphgpt.data import (RandomSampler, SequentialSampler, available_memory, default_corpus, load_dataset,
                           load_tokens, make_sampler, read_corpus, split_heldout, tokenizer_digest)
from graphgpt.errors import UserError
from graphgpt.tokenizer import Tokenizer


# --- read_corpus ------------------------------------------------------------------------------

def test_read_corpus_reads_utf8(tmp_path):
    path = tmp_path / "data.txt"
    path.write_text("héllo\nworld\n", encoding="utf-8")
    assert read_corpus(path) == "héllo\nworld\n"
    assert read_corpus(str(path)) == "héllo\nworld\n"


@pytest.mark.parametrize("content", [b"", b"  \n\t\n"])
def test_read_corpus_rejects_blank(tmp_path, content):
    path = tmp_path / "blank.txt"
    path.write_bytes(content)
    with pytest.raises(UserError, match="blank.txt"):
        read_corpus(path)


def test_read_corpus_rejects_missing_directory_and_binary(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        read_corpus(tmp_path / "nope.txt")
    with pytest.raises(UserError, match="directory"):
        read_corpus(tmp_path)
    binary = tmp_path / "latin1.txt"
    binary.write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(UserError, match="not UTF-8.*0xe9 at offset 3"):
        read_corpus(binary)


# --- what is not a regular text file ----------------------------------------------------------

@pytest.mark.parametrize("name", ["data.txt", "data.bin"])
def test_a_socket_is_refused_as_data(tmp_path, name):
    path = tmp_path / name
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(path))
        with pytest.raises(UserError, match=f"{name} is a socket, not a regular file"):
            load_tokens(path, WORDS, 5)
        with pytest.raises(UserError, match=f"{name} is a socket, not a regular file"):
            read_corpus(path)


@pytest.mark.parametrize("device", ["/dev/null", "/dev/zero"])
@pytest.mark.parametrize("suffix", ["", ".bin"])
def test_a_device_is_refused_before_it_is_read(tmp_path, device, suffix):
    """/dev/zero read as text would never end: refused from its stat (the link is followed)."""
    link = tmp_path / f"data{suffix}"
    link.symlink_to(device)
    with pytest.raises(UserError, match=f"data{suffix} is a character device, not a regular file"):
        load_tokens(link, WORDS, 5)


@pytest.mark.parametrize("content,fragment", [
    (np.array([1, 2, 3, 4], np.uint16).tobytes(), r"is not text \(a NUL byte at offset 1\); a token file from "
                                                   r"tools/prepare.py is read as FILE.bin or as its directory"),
    (b"the cat sat" + bytes([0xff, 0xfe]) + b" the", r"not UTF-8 text \(byte 0xff at offset 11\); convert it"),
])
def test_a_binary_file_given_as_text_is_refused(tmp_path, content, fragment):
    """A token file renamed .dat is not trained on as text, however small its ids."""
    path = tmp_path / "train.dat"
    path.write_bytes(content)
    for read in (read_corpus, lambda p: load_tokens(p, WORDS, 5)):
        with pytest.raises(UserError, match=fragment):
            read(path)


def test_utf16_text_is_named_so(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("the cat", encoding="utf-16")
    with pytest.raises(UserError, match="is UTF-16 text .*iconv -f UTF-16 -t UTF-8"):
        load_tokens(path, WORDS, 5)


def test_a_nul_byte_deep_in_a_long_text_is_found_at_its_offset(tmp_path):
    path = tmp_path / "data.txt"
    text = b"the cat sat. " * 50_000
    path.write_bytes(text + b"\0" + b"the cat")
    with pytest.raises(UserError, match=f"a NUL byte at offset {len(text)}"):
        load_tokens(path, WORDS, 5)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files regardless of permissions")
def test_read_corpus_rejects_unreadable(tmp_path):
    path = tmp_path / "secret.txt"
    path.write_text("x")
    path.chmod(0)
    with pytest.raises(UserError, match="cannot read"):
        read_corpus(path)


def test_default_corpus_is_the_package_source():
    text, description = default_corpus()
    assert "class SequentialSampler" in text and "def default_corpus" in text
    assert description.startswith("graphgpt source (") and description.endswith(" files)")
    assert default_corpus() == (text, description)


# --- SequentialSampler ------------------------------------------------------------------------

def position(sampler: SequentialSampler) -> int:
    return sampler.state()["position"]


def test_rows_and_shifted_targets():
    tokens = np.arange(100, dtype=np.int64)
    sampler = SequentialSampler(tokens, batch_size=2, seq_len=3)
    x, y = sampler.next_batch()
    assert x.dtype == np.int32 and y.dtype == np.int32 and x.shape == (2, 3)
    assert x.tolist() == [[0, 1, 2], [3, 4, 5]]
    assert y.tolist() == [[1, 2, 3], [4, 5, 6]]
    assert sampler.state() == {"kind": "sequential", "position": 6}
    x, _ = sampler.next_batch()
    assert x.tolist() == [[6, 7, 8], [9, 10, 11]]


def test_wrap_rule():
    # N = 20, one batch spans 6: after the batch at 12, 18 + 6 + 1 >= 20 wraps to 0; the batch at
    # 12 itself still fits (it reads up to token 18 and target 19).
    sampler = SequentialSampler(np.arange(20), batch_size=2, seq_len=3)
    starts = []
    for _ in range(5):
        starts.append(position(sampler))
        x, _ = sampler.next_batch()
        assert x[0, 0] == starts[-1]
    assert starts == [0, 6, 12, 0, 6]


def test_wrap_rule_at_exact_fit():
    # N = 13 holds exactly two batches of 6 (+1 target), but the seed's >= wraps after the first.
    sampler = SequentialSampler(np.arange(13), batch_size=2, seq_len=3)
    sampler.next_batch()
    assert position(sampler) == 0


def test_batch_never_reads_past_the_end():
    tokens = np.arange(7)  # exactly one batch of 6 plus its last target
    sampler = SequentialSampler(tokens, batch_size=2, seq_len=3)
    for _ in range(3):
        x, y = sampler.next_batch()
        assert x.tolist() == [[0, 1, 2], [3, 4, 5]] and y[-1, -1] == 6


def test_batches_are_copies():
    tokens = np.arange(50, dtype=np.int32)
    x, _ = SequentialSampler(tokens, batch_size=1, seq_len=4).next_batch()
    x[0, 0] = 99
    assert tokens[0] == 0


def test_too_little_data_names_counts():
    with pytest.raises(UserError, match=r"data has 12 tokens, one batch needs 4\*3\+1 = 13"):
        SequentialSampler(np.arange(12), batch_size=2, seq_len=3, rank=1, world_size=2)
    SequentialSampler(np.arange(13), batch_size=2, seq_len=3, rank=1, world_size=2)


def test_restore_position():
    sampler = SequentialSampler(np.arange(100), batch_size=2, seq_len=3)
    sampler.restore({"kind": "sequential", "position": 42})
    x, _ = sampler.next_batch()
    assert x[0, 0] == 42 and position(sampler) == 48
    with pytest.raises(UserError, match=r"position 94 is outside this data \(100 tokens; .* 0\.\.93\)"):
        sampler.restore({"kind": "sequential", "position": 94})  # 94 + 6 + 1 > 100: no whole batch
    assert position(sampler) == 48
    sampler.restore({"kind": "sequential", "position": 93})
    assert sampler.next_batch()[1][-1, -1] == 99


# --- both samplers ----------------------------------------------------------------------------

SAMPLERS = [SequentialSampler, RandomSampler]


@pytest.mark.parametrize("sampler_class", SAMPLERS)
@pytest.mark.parametrize("world_size", [2, 3])
def test_ranks_see_the_rows_of_one_big_batch(sampler_class, world_size):
    tokens = np.random.default_rng(0).integers(0, 50, size=101)
    B, T = 2, 5
    single = sampler_class(tokens, batch_size=world_size * B, seq_len=T)
    ranks = [sampler_class(tokens, batch_size=B, seq_len=T, rank=r, world_size=world_size)
             for r in range(world_size)]
    for _ in range(12):  # several batches, for the sequential sampler including wraps to the start
        x, y = single.next_batch()
        parts = [sampler.next_batch() for sampler in ranks]
        assert np.array_equal(np.concatenate([p[0] for p in parts]), x)
        assert np.array_equal(np.concatenate([p[1] for p in parts]), y)
        assert all(sampler.state() == single.state() for sampler in ranks)


@pytest.mark.parametrize("sampler_class", SAMPLERS)
def test_targets_are_the_inputs_shifted_by_one(sampler_class):
    tokens = np.random.default_rng(1).permutation(500)  # distinct ids: an id tells its position
    position_of = np.argsort(tokens)
    sampler = sampler_class(tokens, batch_size=4, seq_len=9)
    for _ in range(5):
        x, y = sampler.next_batch()
        assert x.dtype == y.dtype == np.int32 and x.shape == y.shape == (4, 9)
        assert x.flags.c_contiguous and y.flags.c_contiguous
        for row_x, row_y in zip(x, y):
            start = position_of[row_x[0]]
            assert np.array_equal(row_x, tokens[start:start + 9])
            assert np.array_equal(row_y, tokens[start + 1:start + 10])


@pytest.mark.parametrize("sampler_class", SAMPLERS)
@pytest.mark.parametrize("dtype", [np.uint16, np.uint32])
def test_memmap_is_read_in_place(tmp_path, sampler_class, dtype):
    path = tmp_path / "tokens.bin"
    np.arange(64, dtype=dtype).tofile(path)
    tokens = np.memmap(path, dtype=dtype, mode="r+")
    sampler = sampler_class(tokens, batch_size=2, seq_len=4)
    tokens[:] = 7  # the sampler holds a view of the file, not a copy made when it was built
    x, y = sampler.next_batch()
    assert x.dtype == np.int32 and (x == 7).all() and (y == 7).all()


@pytest.mark.parametrize("sampler_class", SAMPLERS)
@pytest.mark.parametrize("kwargs", [
    dict(batch_size=0, seq_len=3), dict(batch_size=1, seq_len=0),
    dict(batch_size=1, seq_len=3, rank=2, world_size=2), dict(batch_size=1, seq_len=3, world_size=0),
])
def test_bad_sampler_settings(sampler_class, kwargs):
    with pytest.raises(UserError):
        sampler_class(np.arange(100), **kwargs)


@pytest.mark.parametrize("sampler_class,other", [(SequentialSampler, "random"), (RandomSampler, "sequential")])
def test_restore_refuses_another_samplers_state(sampler_class, other):
    sampler = sampler_class(np.arange(100), batch_size=2, seq_len=3)
    other_state = make_sampler(other, np.arange(100), 2, 3, 0, 1, seed=0).state()
    with pytest.raises(UserError, match=f"the checkpoint's data sampler is '{other}'; this run uses "
                                        f"'{sampler_class.kind}' \\(pass --sampler {other}\\)"):
        sampler.restore(other_state)
    key = next(k for k in sampler.state() if k != "kind")
    for bad in ({}, None, {"kind": "shuffled", key: 1}, {"kind": sampler_class.kind},
                {"kind": sampler_class.kind, key: -1}, {"kind": sampler_class.kind, key: 2.5}):
        with pytest.raises(UserError, match="the checkpoint's") as error:
            sampler.restore(bad)
        assert "\n" not in str(error.value)


def test_make_sampler():
    tokens = np.arange(100)
    random = make_sampler("random", tokens, 2, 3, rank=1, world_size=2, seed=5)
    assert isinstance(random, RandomSampler) and (random.seed, random.stream, random.rank) == (5, 0, 1)
    sequential = make_sampler("sequential", tokens, 2, 3, rank=1, world_size=2, seed=5)
    assert isinstance(sequential, SequentialSampler) and sequential.world_size == 2
    with pytest.raises(UserError, match="unknown data sampler 'shuffled'"):
        make_sampler("shuffled", tokens, 2, 3, 0, 1, 0)


# --- RandomSampler ----------------------------------------------------------------------------

def starts_of(x: np.ndarray) -> list[int]:
    """Row starts of a batch drawn from np.arange(N), where each token is its own position."""
    return x[:, 0].tolist()


def test_random_rows_follow_numpys_counter_based_generator():
    N, B, T = 1000, 4, 8
    sampler = RandomSampler(np.arange(N), batch_size=B, seq_len=T, seed=3, stream=2)
    for i in range(3):
        x, _ = sampler.next_batch()
        expected = np.random.default_rng([3, 2, i]).integers(0, N - T - 1, size=B, endpoint=True)
        assert starts_of(x) == expected.tolist()
        assert np.array_equal(x, expected[:, None] + np.arange(T))


def test_random_resume_continues_identically():
    tokens = np.random.default_rng(0).integers(0, 50, size=300)
    sampler = RandomSampler(tokens, batch_size=3, seq_len=7, seed=11)
    for _ in range(5):
        sampler.next_batch()
    state = json.loads(json.dumps(sampler.state()))  # as a checkpoint stores it
    assert state == {"kind": "random", "batches": 5}
    resumed = RandomSampler(tokens, batch_size=3, seq_len=7, seed=11)
    resumed.restore(state)
    for _ in range(5):
        for a, b in zip(sampler.next_batch(), resumed.next_batch()):
            assert np.array_equal(a, b)
    assert resumed.state() == sampler.state() == {"kind": "random", "batches": 10}


def test_random_starts_cover_the_whole_range():
    N, T = 12, 3  # starts 0 .. 8: the last window's target is token 11, the last one
    sampler = RandomSampler(np.arange(N), batch_size=4, seq_len=T, seed=1)
    starts, last_target = set(), 0
    for _ in range(100):
        x, y = sampler.next_batch()
        starts.update(starts_of(x))
        last_target = max(last_target, int(y.max()))
    assert starts == set(range(N - T))
    assert last_target == N - 1


def test_random_starts_are_not_aligned_to_rows():
    T = 8
    sampler = RandomSampler(np.arange(10_000), batch_size=16, seq_len=T, seed=0)
    offsets = {s % T for _ in range(4) for s in starts_of(sampler.next_batch()[0])}
    assert len(offsets) > 1


def test_random_seed_and_stream_give_independent_draws():
    tokens = np.arange(10_000)
    first = RandomSampler(tokens, 8, 4, seed=0, stream=0).next_batch()[0]
    assert np.array_equal(first, RandomSampler(tokens, 8, 4, seed=0, stream=0).next_batch()[0])
    assert not np.array_equal(first, RandomSampler(tokens, 8, 4, seed=1, stream=0).next_batch()[0])
    assert not np.array_equal(first, RandomSampler(tokens, 8, 4, seed=0, stream=1).next_batch()[0])


def test_random_needs_one_window():
    with pytest.raises(UserError, match=r"data has 5 tokens, one row needs seq_len\+1 = 6"):
        RandomSampler(np.arange(5), batch_size=4, seq_len=5)
    x, y = RandomSampler(np.arange(6), batch_size=4, seq_len=5).next_batch()
    assert (x == np.arange(5)).all() and (y == np.arange(1, 6)).all()


@pytest.mark.parametrize("kwargs", [dict(seed=-1), dict(stream=-1)])
def test_random_refuses_negative_seeds(kwargs):
    with pytest.raises(UserError, match=">= 0, got -1"):
        RandomSampler(np.arange(100), 2, 3, **kwargs)


# --- split_heldout ----------------------------------------------------------------------------

@pytest.mark.parametrize("n,fraction,cut", [(1001, 0.1, 900), (10, 0.25, 7), (3, 0.5, 1)])
def test_split_heldout_cuts_as_nanogpt(n, fraction, cut):
    tokens = np.arange(n)
    train, val = split_heldout(tokens, fraction)
    assert cut == int(n * (1 - fraction))
    assert np.array_equal(train, tokens[:cut]) and np.array_equal(val, tokens[cut:])
    assert np.shares_memory(train, tokens) and np.shares_memory(val, tokens)


@pytest.mark.parametrize("fraction", [0, 1, -0.1, 1.5, float("nan")])
def test_split_heldout_refuses_a_fraction_outside_0_1(fraction):
    with pytest.raises(UserError, match="between 0 and 1"):
        split_heldout(np.arange(10), fraction)


# --- load_tokens ------------------------------------------------------------------------------

WORDS = Tokenizer("word", ["the", "cat", "sat", ".", "[EOS]"])


def write_meta(directory, tokenizer, dtype, **counts):
    meta = {"format": "graphgpt-tokens", "version": 1, "dtype": dtype,
            "tokenizer_sha256": tokenizer_digest(tokenizer), **counts}
    (directory / "meta.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("vocab_size,dtype", [(5, np.uint16), (65_536, np.uint16), (65_537, np.uint32)])
def test_load_token_file_maps_it_with_the_vocabularys_dtype(tmp_path, vocab_size, dtype):
    ids = np.array([0, 3, vocab_size - 1, 1, 4], dtype=dtype)
    path = tmp_path / "train.bin"
    ids.tofile(path)
    tokens, description = load_tokens(path, WORDS, vocab_size)
    assert isinstance(tokens, np.memmap) and tokens.dtype == dtype and not tokens.flags.writeable
    assert np.array_equal(tokens, ids)
    assert description == f"{path} ({np.dtype(dtype).name} token file)"


def test_load_text_encodes_it(tmp_path):
    path = tmp_path / "data.txt"
    path.write_text("the cat sat. the cat")
    tokens, description = load_tokens(path, WORDS, 5)
    assert np.array_equal(tokens, WORDS.encode("the cat sat. the cat")) and description == str(path)
    (tmp_path / "dog.txt").write_text("the dog")
    with pytest.raises(UserError, match="dog.txt: 1 distinct word token"):
        load_tokens(tmp_path / "dog.txt", WORDS, 5)


def test_a_text_is_encoded_in_pieces_as_a_whole(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "TEXT_PIECE_BYTES", 7)
    text = "the cat sat. the cat sat.the  cat. " * 20
    path = tmp_path / "data.txt"
    path.write_text(text)
    tokens, _ = load_tokens(path, WORDS, 5)
    assert tokens.dtype == np.uint16 and np.array_equal(tokens, WORDS.encode(text))


CHARS = Tokenizer("char", ["a", "b", " ", "[UNK]", "[EOS]"])


def test_tokens_read_as_unk_are_counted(tmp_path):
    path = tmp_path / "data.txt"
    path.write_text("ab üaï ba")  # 9 characters, 2 of them outside the vocabulary
    tokens, description = load_tokens(path, CHARS, 5)
    assert np.count_nonzero(tokens == 3) == 2
    assert description == f"{path}, 2 of 9 characters outside the vocabulary, read as [UNK]"
    path.write_text("ünï")
    with pytest.raises(UserError, match="all 3 characters are outside the plan's vocabulary; compile"):
        load_tokens(path, CHARS, 5)


def test_a_text_too_large_for_memory_is_refused_with_its_size(tmp_path):
    """A sparse file as large as the available memory: refused from its size, before any read."""
    path = tmp_path / "huge.txt"
    size = available_memory()
    with open(path, "wb") as f:
        f.truncate(size)
    with pytest.raises(UserError) as error:
        load_tokens(path, WORDS, 5)
    message = str(error.value)
    assert f"is {size / 1e6:,.0f} MB" in message and "tools/prepare.py" in message and "--data DIR" in message
    with pytest.raises(UserError, match=f"is {size / 1e6:,.0f} MB.*build the vocabulary from a part of it"):
        read_corpus(path)


def test_a_text_is_encoded_in_bounded_memory(tmp_path):
    """The peak memory of encoding a text grows by a few bytes per byte of it (its uint16 ids and
    one piece: 3.5 here), not by the tens of bytes per token that encoding it whole costs (22)."""
    path = tmp_path / "data.txt"
    path.write_bytes(b"ab ba, aab.\n" * 500_000)
    script = (
        "import resource, sys\n"
        "from graphgpt.data import load_tokens\n"
        "from graphgpt.tokenizer import build_tokenizer\n"
        "tok = build_tokenizer('char', 'ab ,.\\n')\n"
        "peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024\n"
        "before = peak()\n"
        "tokens, _ = load_tokens(sys.argv[1], tok, len(tok.vocab))\n"
        "print(peak() - before, len(tokens))\n")
    proc = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=str(data.Path(data.__file__).parents[1])))
    assert proc.returncode == 0, proc.stderr
    grown, n = map(int, proc.stdout.split())
    size = path.stat().st_size
    assert n == size + 1 and grown < 6 * size, (grown, size)


def test_load_token_file_refuses_an_id_outside_the_vocabulary(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "_CHECK_CHUNK", 4)  # the offending id lies in the third chunk
    path = tmp_path / "train.bin"
    ids = np.full(12, 4, dtype=np.uint16)
    ids[9], ids[11] = 5, 9
    ids.tofile(path)
    with pytest.raises(UserError, match=r"has id 5 at token 9 \(byte offset 18\), outside the plan's "
                                        r"vocabulary of 5"):
        load_tokens(path, WORDS, 5)


@pytest.mark.parametrize("vocab_size,size,message", [
    (5, 7, r"has 7 bytes, not a whole number of uint16 ids \(2 bytes each"),
    (70_000, 6, r"has 6 bytes, not a whole number of uint32 ids \(4 bytes each"),
    (5, 0, "is empty"),
])
def test_load_token_file_refuses_a_partial_or_empty_file(tmp_path, vocab_size, size, message):
    path = tmp_path / "train.bin"
    path.write_bytes(bytes(size))
    with pytest.raises(UserError, match=message):
        load_tokens(path, WORDS, vocab_size)


def test_load_token_file_refuses_a_missing_file_or_directory(tmp_path):
    with pytest.raises(UserError, match="token file .*nope.bin does not exist"):
        load_tokens(tmp_path / "nope.bin", WORDS, 5)
    (tmp_path / "dir.bin").mkdir()
    with pytest.raises(UserError, match="is a directory"):
        load_tokens(tmp_path / "dir.bin", WORDS, 5)


def test_load_token_file_checks_the_tokenizer_in_meta_json(tmp_path):
    path = tmp_path / "train.bin"
    np.array([0, 1, 2], dtype=np.uint16).tofile(path)
    write_meta(tmp_path, WORDS, "uint16")
    assert np.array_equal(load_tokens(path, WORDS, 5)[0], [0, 1, 2])

    other = Tokenizer("word", ["the", "dog", "sat", ".", "[EOS]"])
    with pytest.raises(UserError) as error:
        load_tokens(path, other, 5)
    message = str(error.value)
    assert f"tokenizer {tokenizer_digest(WORDS)[:12]}" in message
    assert f"the plan's tokenizer is {tokenizer_digest(other)[:12]}" in message
    assert "tools/prepare.py" in message and "\n" not in message

    write_meta(tmp_path, WORDS, "uint32")
    with pytest.raises(UserError, match="holds uint32 ids .*this plan reads uint16 ids"):
        load_tokens(path, WORDS, 5)


def test_load_token_file_ignores_a_foreign_meta_json(tmp_path):
    path = tmp_path / "train.bin"
    np.array([0, 1, 2], dtype=np.uint16).tofile(path)
    (tmp_path / "meta.json").write_text('{"vocab_size": 50257}')
    assert np.array_equal(load_tokens(path, WORDS, 5)[0], [0, 1, 2])


def test_tokenizer_digest_names_the_vocabulary():
    digest = tokenizer_digest(WORDS)
    assert len(digest) == 64 and digest == tokenizer_digest(Tokenizer.from_json(WORDS.to_json()))
    assert digest != tokenizer_digest(Tokenizer("word", ["the", "cat", "sat", "[EOS]", "."]))
    assert digest != tokenizer_digest(Tokenizer("char", ["t", "h", "e", "[EOS]"]))


# --- a directory of tools/prepare.py ----------------------------------------------------------

def prepared_dir(tmp_path, val: bool = True):
    np.array([0, 1, 2, 3, 0], dtype=np.uint16).tofile(tmp_path / "train.bin")
    if val:
        np.array([2, 1], dtype=np.uint16).tofile(tmp_path / "val.bin")
    write_meta(tmp_path, WORDS, "uint16", train_tokens=5, val_tokens=2 if val else 0)
    return tmp_path


@pytest.mark.parametrize("val", [True, False])
def test_a_prepared_directory_gives_train_bin_and_val_bin(tmp_path, val):
    train, held, description = load_dataset(prepared_dir(tmp_path, val), WORDS, 5)
    assert np.array_equal(train, [0, 1, 2, 3, 0])
    assert (held is None) if not val else np.array_equal(held, [2, 1])
    assert description == f"{tmp_path}/train.bin (uint16 token files{', val.bin held out' if val else ''})"


def test_a_file_gives_no_held_out_tokens(tmp_path):
    path = tmp_path / "data.txt"
    path.write_text("the cat")
    tokens, held, description = load_dataset(path, WORDS, 5)
    assert np.array_equal(tokens, WORDS.encode("the cat")) and held is None and description == str(path)


def test_a_directory_prepare_did_not_write_is_refused(tmp_path):
    with pytest.raises(UserError, match="has no meta.json of tools/prepare.py; pass a text file"):
        load_dataset(tmp_path, WORDS, 5)
    (tmp_path / "meta.json").write_text('{"vocab_size": 5}')  # another tool's
    with pytest.raises(UserError, match="has no meta.json of tools/prepare.py"):
        load_dataset(tmp_path, WORDS, 5)
    os.mkfifo(tmp_path / "fifo")  # a FIFO named meta.json is no meta.json, and is not waited on
    (tmp_path / "meta.json").unlink()
    (tmp_path / "meta.json").symlink_to(tmp_path / "fifo")
    with pytest.raises(UserError, match="has no meta.json of tools/prepare.py"):
        load_dataset(tmp_path, WORDS, 5)


def test_a_prepared_directory_without_train_bin_or_of_another_tokenizer_is_refused(tmp_path):
    prepared_dir(tmp_path)
    other = Tokenizer("word", ["the", "dog", "sat", ".", "[EOS]"])
    with pytest.raises(UserError, match="holds ids of tokenizer .* the plan's tokenizer is"):
        load_dataset(tmp_path, other, 5)
    (tmp_path / "train.bin").unlink()
    with pytest.raises(UserError, match="has no train.bin; prepare it again"):
        load_dataset(tmp_path, WORDS, 5)
