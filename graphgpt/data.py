"""Training text and the batch loader.

The loader follows the seed: contiguous rows of one token stream, targets shifted by one, wrapping
to the start near the end. It is generalised to data-parallel ranks so that W ranks with batch B
read exactly the rows that one rank with batch W*B would, which keeps losses comparable between a
single-GPU run and a distributed one.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

import graphgpt
from graphgpt.errors import UserError


def read_corpus(path: str | os.PathLike) -> str:
    """The text of a UTF-8 data file; a missing, unreadable, non-UTF-8 or blank file is a UserError."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"data file {path} does not exist") from None
    except IsADirectoryError:
        raise UserError(f"data file {path} is a directory, expected a text file") from None
    except OSError as e:
        raise UserError(f"cannot read data file {path}: {e.strerror or e}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"data file {path} is not UTF-8 text "
                        f"(byte 0x{raw[e.start]:02x} at offset {e.start})") from None
    if not text.strip():
        raise UserError(f"data file {path} is empty or only whitespace")
    return text


def default_corpus() -> tuple[str, str]:
    """(text, description): graphgpt's own source, so a fresh install has data to train on.

    Files are taken in order of their path relative to the package, so the text (and with it the
    vocabulary) is the same wherever the package is installed.
    """
    package = Path(graphgpt.__file__).resolve().parent
    files = sorted(package.rglob("*.py"), key=lambda p: p.relative_to(package).as_posix())
    text = "".join(p.read_text(encoding="utf-8") for p in files)
    return text, f"graphgpt source ({len(files)} files)"


class DataLoader:
    """Batches (x, y) of shape (batch_size, seq_len) for one rank of `world_size`.

    The global batch has G = world_size * batch_size rows; global row j is
    tokens[pos + j*T : pos + j*T + T] and rank r takes rows r*B .. r*B + B - 1. After each batch
    pos advances by G*T and returns to 0 once a further batch could reach the last token (the
    seed's `pos + G*T + 1 >= N`).
    """

    def __init__(self, tokens: np.ndarray, batch_size: int, seq_len: int,
                 rank: int = 0, world_size: int = 1) -> None:
        tokens = np.asarray(tokens)
        if tokens.ndim != 1 or not np.issubdtype(tokens.dtype, np.integer):
            raise ValueError(f"tokens must be a 1-D integer array, got {tokens.dtype} {tokens.shape}")
        for name, value in (("batch_size", batch_size), ("seq_len", seq_len), ("world_size", world_size)):
            if value < 1:
                raise UserError(f"{name} must be at least 1, got {value}")
        if not 0 <= rank < world_size:
            raise UserError(f"rank {rank} is outside world size {world_size}")
        rows = world_size * batch_size
        self._span = rows * seq_len  # tokens one global batch consumes
        if len(tokens) < self._span + 1:
            raise UserError(f"data has {len(tokens)} tokens, one batch needs {rows}*{seq_len}+1 = "
                            f"{self._span + 1} ({world_size} rank(s) x batch {batch_size} x seq_len "
                            f"{seq_len}); use more data or a smaller batch or seq_len")
        self._tokens = tokens
        self.batch_size = batch_size
        self.seq_len = seq_len
        self.rank = rank
        self.world_size = world_size
        self._position = 0

    @property
    def position(self) -> int:
        """Where the next global batch starts in the token stream."""
        return self._position

    @position.setter
    def position(self, value: int) -> None:
        # Resuming with a position from another run: it must still leave room for a whole batch.
        if not 0 <= value <= len(self._tokens) - self._span - 1:
            raise UserError(f"data position {value} is outside the data ({len(self._tokens)} tokens, "
                            f"one batch needs {self._span + 1})")
        self._position = value

    def next_batch(self) -> tuple[np.ndarray, np.ndarray]:
        B, T = self.batch_size, self.seq_len
        start = self._position + self.rank * B * T
        x = self._tokens[start:start + B * T].reshape(B, T).astype(np.int32)
        y = self._tokens[start + 1:start + B * T + 1].reshape(B, T).astype(np.int32)
        self._position += self._span
        if self._position + self._span + 1 >= len(self._tokens):
            self._position = 0
        return x, y
