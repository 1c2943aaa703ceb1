"""Reading data files, the default corpus, and the loader's rows, wrap rule and rank split."""
from __future__ import annotations

import os

import numpy as np
import pytest

from graphgpt.data import DataLoader, default_corpus, read_corpus
from graphgpt.errors import UserError


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


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files regardless of permissions")
def test_read_corpus_rejects_unreadable(tmp_path):
    path = tmp_path / "secret.txt"
    path.write_text("x")
    path.chmod(0)
    with pytest.raises(UserError, match="cannot read"):
        read_corpus(path)


def test_default_corpus_is_the_package_source():
    text, description = default_corpus()
    assert "class DataLoader" in text and "def default_corpus" in text
    assert description.startswith("graphgpt source (") and description.endswith(" files)")
    assert default_corpus() == (text, description)


# --- DataLoader -------------------------------------------------------------------------------

def test_rows_and_shifted_targets():
    tokens = np.arange(100, dtype=np.int64)
    loader = DataLoader(tokens, batch_size=2, seq_len=3)
    x, y = loader.next_batch()
    assert x.dtype == np.int32 and y.dtype == np.int32 and x.shape == (2, 3)
    assert x.tolist() == [[0, 1, 2], [3, 4, 5]]
    assert y.tolist() == [[1, 2, 3], [4, 5, 6]]
    assert loader.position == 6
    x, _ = loader.next_batch()
    assert x.tolist() == [[6, 7, 8], [9, 10, 11]]


def test_wrap_rule():
    # N = 20, one batch spans 6: after the batch at 12, 18 + 6 + 1 >= 20 wraps to 0; the batch at
    # 12 itself still fits (it reads up to token 18 and target 19).
    loader = DataLoader(np.arange(20), batch_size=2, seq_len=3)
    starts = []
    for _ in range(5):
        starts.append(loader.position)
        x, _ = loader.next_batch()
        assert x[0, 0] == starts[-1]
    assert starts == [0, 6, 12, 0, 6]


def test_wrap_rule_at_exact_fit():
    # N = 13 holds exactly two batches of 6 (+1 target), but the seed's >= wraps after the first.
    loader = DataLoader(np.arange(13), batch_size=2, seq_len=3)
    loader.next_batch()
    assert loader.position == 0


def test_batch_never_reads_past_the_end():
    tokens = np.arange(7)  # exactly one batch of 6 plus its last target
    loader = DataLoader(tokens, batch_size=2, seq_len=3)
    for _ in range(3):
        x, y = loader.next_batch()
        assert x.tolist() == [[0, 1, 2], [3, 4, 5]] and y[-1, -1] == 6


@pytest.mark.parametrize("world_size", [2, 3])
def test_ranks_see_the_rows_of_one_big_batch(world_size):
    tokens = np.random.default_rng(0).integers(0, 50, size=101)
    B, T = 2, 5
    single = DataLoader(tokens, batch_size=world_size * B, seq_len=T)
    ranks = [DataLoader(tokens, batch_size=B, seq_len=T, rank=r, world_size=world_size)
             for r in range(world_size)]
    wrapped = False
    for _ in range(12):  # several batches, including wraps to the start
        x, y = single.next_batch()
        parts = [loader.next_batch() for loader in ranks]
        assert np.array_equal(np.concatenate([p[0] for p in parts]), x)
        assert np.array_equal(np.concatenate([p[1] for p in parts]), y)
        assert all(loader.position == single.position for loader in ranks)
        wrapped |= single.position == 0
    assert wrapped


def test_batches_are_copies():
    tokens = np.arange(50, dtype=np.int32)
    x, _ = DataLoader(tokens, batch_size=1, seq_len=4).next_batch()
    x[0, 0] = 99
    assert tokens[0] == 0


def test_too_little_data_names_counts():
    with pytest.raises(UserError, match=r"data has 12 tokens, one batch needs 4\*3\+1 = 13"):
        DataLoader(np.arange(12), batch_size=2, seq_len=3, rank=1, world_size=2)
    DataLoader(np.arange(13), batch_size=2, seq_len=3, rank=1, world_size=2)


@pytest.mark.parametrize("kwargs", [
    dict(batch_size=0, seq_len=3), dict(batch_size=1, seq_len=0),
    dict(batch_size=1, seq_len=3, rank=2, world_size=2), dict(batch_size=1, seq_len=3, world_size=0),
])
def test_bad_loader_settings(kwargs):
    with pytest.raises(UserError):
        DataLoader(np.arange(100), **kwargs)


def test_resume_position():
    loader = DataLoader(np.arange(100), batch_size=2, seq_len=3)
    loader.position = 42
    x, _ = loader.next_batch()
    assert x[0, 0] == 42 and loader.position == 48
    with pytest.raises(UserError):
        loader.position = 94  # 94 + 6 + 1 > 100: no room for a whole batch
    loader.position = 93
