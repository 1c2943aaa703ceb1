"""python tools/prepare.py TEXT --plan DIR --out DIR [--val-fraction F]

Tokenises a text file once, with a compiled plan's tokenizer, into the token files training reads
without encoding again: train.bin, val.bin (the last F of the tokens, split as nanoGPT splits) and
meta.json, which records the tokenizer so that a file is never trained with another plan's ids.

The text is read and encoded in pieces, several at a time, and the ids are streamed to disk, so a
corpus larger than memory can be prepared. Every file is written under a temporary name, fsynced
and renamed into place only once all of them are complete: an error or Ctrl-C leaves --out as it
was.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO, Iterator, NamedTuple

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout, installed or not

import numpy as np  # noqa: E402

from graphgpt import plan as plan_io  # noqa: E402
from graphgpt.data import (META_FILE, TOKEN_FORMAT, TOKEN_FORMAT_VERSION, heldout_cut, read_error,  # noqa: E402
                           read_token_meta, token_dtype, tokenizer_digest, utf8_error)
from graphgpt.errors import ArgumentParser, UserError, reported  # noqa: E402
from graphgpt.tokenizer import Tokenizer  # noqa: E402

CHUNK_BYTES = 16 << 20  # text encoded per piece
TRAIN_FILE, VAL_FILE = "train.bin", "val.bin"
WORKERS = min(8, os.cpu_count() or 1)
PROGRESS_STEPS = 10  # progress lines for a text of more than one piece



def main(argv=None) -> int:
    p = ArgumentParser(prog="tools/prepare.py", description=(
        "Tokenise a text file with a plan's tokenizer into train.bin, val.bin and meta.json, "
        "the token files training memory-maps."))
    p.add_argument("text", type=Path, help="the UTF-8 text to tokenise")
    p.add_argument("--plan", type=Path, required=True, help="the compiled plan whose tokenizer to use")
    p.add_argument("--out", type=Path, required=True, help="directory for train.bin, val.bin and meta.json")
    p.add_argument("--val-fraction", type=float, default=0.1,
                   help="the last fraction of the tokens held out as val.bin (default 0.1; 0: no val.bin)")
    p.add_argument("--chunk-bytes", type=int, default=CHUNK_BYTES, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    return reported(prepare, args.text, args.plan, args.out, args.val_fraction, args.chunk_bytes)


def prepare(text_path: Path, plan_dir: Path, out: Path, val_fraction: float, chunk_bytes: int) -> None:
    """Write out/train.bin, out/val.bin (none when val_fraction is 0) and out/meta.json.

    Every check that needs no encoding comes before anything is written.
    """
    start = time.perf_counter()
    if not 0 <= val_fraction < 1:
        raise UserError(f"--val-fraction must be at least 0 and below 1, got {val_fraction}")
    if chunk_bytes < 1:
        raise UserError(f"--chunk-bytes must be at least 1, got {chunk_bytes}")
    plan = plan_io.load(plan_dir)
    tokenizer = Tokenizer.from_json(plan.tokenizer)
    vocab_size = plan.config["vocab_size"]
    dtype = token_dtype(vocab_size)
    check_out(out)
    try:
        text = open(text_path, "rb")
    except OSError as e:
        raise read_error("data file", text_path, e) from None
    try:
        with text, Staging(out) as staging:
            train = staging.open(TRAIN_FILE)
            total = encode_file(text, text_path, tokenizer, dtype, train, chunk_bytes)
            cut = split_point(total, val_fraction, text_path)
            if cut < total:
                move_tail(train, staging.open(VAL_FILE), cut * dtype.itemsize)
            meta = {"format": TOKEN_FORMAT, "version": TOKEN_FORMAT_VERSION, "dtype": dtype.name,
                    "vocab_size": vocab_size, "tokenizer_sha256": tokenizer_digest(tokenizer),
                    "train_tokens": cut, "val_tokens": total - cut, "source": text_path.name}
            staging.open(META_FILE).write(json.dumps(meta, indent=1).encode() + b"\n")
            staging.commit()
        if cut == total:  # a val.bin of an earlier run (check_out made sure) would not match train.bin
            (out / VAL_FILE).unlink(missing_ok=True)
    except OSError as e:  # a full disk, an unwritable --out, a failing read
        raise UserError(f"{e.filename or out}: {e.strerror or e}") from None
    val = f", {VAL_FILE} {total - cut:,} tokens" if cut < total else ""
    print(f"wrote {out}/: {TRAIN_FILE} {cut:,} tokens{val} ({dtype}, vocabulary {vocab_size}) "
          f"in {time.perf_counter() - start:.1f} s")


def check_out(out: Path) -> None:
    """--out is a directory (or not yet there) whose token files, if any, prepare.py wrote."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, expected a directory")
    for name in (TRAIN_FILE, VAL_FILE, META_FILE):
        if (out / name).is_dir():
            raise UserError(f"--out {out} holds a directory {name}, where prepare.py writes a file")
    present = [name for name in (TRAIN_FILE, VAL_FILE) if (out / name).exists()]
    if present and read_token_meta(out) is None:
        raise UserError(f"--out {out} holds {' and '.join(present)} not written by tools/prepare.py "
                        f"(no {META_FILE} of format {TOKEN_FORMAT}); choose another --out")


def split_point(total: int, val_fraction: float, text_path: Path) -> int:
    """How many of the tokens train.bin takes; each file written must hold at least one."""
    if val_fraction == 0:
        return total
    cut = heldout_cut(total, val_fraction)
    if not 0 < cut < total:
        raise UserError(f"data file {text_path} has {total} tokens, too few to hold out "
                        f"{val_fraction} of them; use more text or --val-fraction 0")
    return cut


# --- encoding ---------------------------------------------------------------------------------

class Encoded(NamedTuple):
    ids: np.ndarray
    end: int  # the byte of the text after this piece
    blank: bool  # the piece is only whitespace


def encode_file(text: BinaryIO, text_path: Path, tokenizer: Tokenizer, dtype: np.dtype,
                out: BinaryIO, chunk_bytes: int) -> int:
    """Encode the text piece by piece into `out` as `dtype` ids; returns the number of ids.

    The ids are those of encoding the whole text at once: no token straddles a cut, and the [EOS]
    that `Tokenizer.encode` appends to a text is written once, after the last piece.
    """
    size = os.fstat(text.fileno()).st_size
    progress = Progress(text_path, size, enabled=size > chunk_bytes)
    total, blank = 0, True

    def encode(offset: int, data: bytes) -> Encoded:
        try:
            piece = data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise utf8_error(text_path, data, e, offset) from None
        ids = tokenizer.encode(piece, eos=False, source=str(text_path))
        return Encoded(ids, offset + len(data), piece.isspace())

    with ThreadPoolExecutor(WORKERS) as pool:
        pieces = text_pieces(text, chunk_bytes, tokenizer.last_cut)
        for encoded in in_order(pool, encode, pieces, lookahead=2 * WORKERS):
            out.write(encoded.ids.astype(dtype).tobytes())
            total += len(encoded.ids)
            blank &= encoded.blank
            progress.update(encoded.end, total)
    if blank:  # an empty file has no pieces at all
        raise UserError(f"data file {text_path} is empty or only whitespace")
    out.write(np.array([tokenizer.eos_id], dtype=dtype).tobytes())
    return total + 1


def text_pieces(text: BinaryIO, chunk_bytes: int, last_cut) -> Iterator[tuple[int, bytes]]:
    """(offset, bytes): the text in pieces of about chunk_bytes, each cut where the tokenizer's
    `last_cut(block)` says no token straddles the cut.

    A stretch with no such byte is not cut: it grows into one larger piece.
    """
    offset, pending = 0, []
    while block := text.read(chunk_bytes):
        cut = last_cut(block)
        if cut < 0:
            pending.append(block)
            continue
        piece = b"".join([*pending, block[:cut]])
        pending = [block[cut:]]
        if piece:
            yield offset, piece
            offset += len(piece)
    rest = b"".join(pending)
    if rest:
        yield offset, rest


def in_order(pool: ThreadPoolExecutor, fn, items, lookahead: int) -> Iterator:
    """fn(*item) for every item, run in the pool and yielded in order, at most `lookahead` ahead.

    The bound keeps memory to a few pieces whatever the length of the text.
    """
    pending = deque()
    try:
        for item in items:
            pending.append(pool.submit(fn, *item))
            if len(pending) >= lookahead:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:  # after an error, the pieces not yet started are not needed
        for future in pending:
            future.cancel()


class Progress:
    """One line each time another tenth of a long text is encoded."""

    def __init__(self, text_path: Path, size: int, enabled: bool) -> None:
        self.text_path, self.size, self.enabled = text_path, size, enabled
        self.start = time.perf_counter()
        self.next_step = 1

    def update(self, done: int, tokens: int) -> None:
        if not self.enabled or done * PROGRESS_STEPS < self.next_step * self.size:
            return
        self.next_step = done * PROGRESS_STEPS // self.size + 1
        print(f"  {100 * done // self.size:3d}% of {self.text_path.name}: {done / 1e6:,.1f} MB, "
              f"{tokens:,} tokens, {time.perf_counter() - self.start:.1f} s", flush=True)


# --- output -----------------------------------------------------------------------------------

def move_tail(source: BinaryIO, target: BinaryIO, at: int) -> None:
    """Move the bytes of `source` from `at` on to `target`, leaving `source` cut at `at`."""
    source.flush()
    source.seek(at)
    while block := source.read(CHUNK_BYTES):
        target.write(block)
    source.truncate(at)


class Staging:
    """Files written under temporary names in `out`, renamed into place together by `commit`.

    Leaving the with-block without committing (an error, Ctrl-C) removes the temporary files and
    the directories this created, so --out is left as it was found.
    """

    def __init__(self, out: Path) -> None:
        self.out = out
        self._made: list[Path] = []  # directories created here, deepest first
        self._files: dict[str, tuple[Path, BinaryIO]] = {}  # target name -> (temporary path, file)

    def __enter__(self) -> Staging:
        self._made = [d for d in (self.out, *self.out.parents) if not d.exists()]
        self.out.mkdir(parents=True, exist_ok=True)
        return self

    def open(self, name: str) -> BinaryIO:
        """A new file that `commit` will rename to out/name."""
        tmp = self.out / f".{name}.{os.getpid()}.tmp"
        f = open(tmp, "x+b")  # unlike mkstemp's 0600, the permissions any new file gets
        self._files[name] = (tmp, f)
        return f

    def commit(self) -> None:
        """fsync every file, rename them into place in the order they were opened, fsync --out."""
        for _, f in self._files.values():
            f.flush()
            os.fsync(f.fileno())
        for name, (tmp, f) in self._files.items():
            f.close()
            os.replace(tmp, self.out / name)
        self._files.clear()
        self._made.clear()
        directory = os.open(self.out, os.O_RDONLY)
        try:
            os.fsync(directory)  # the renames themselves survive a crash
        finally:
            os.close(directory)

    def __exit__(self, *exc) -> None:
        for tmp, f in self._files.values():
            f.close()
            tmp.unlink(missing_ok=True)
        for directory in self._made:
            with contextlib.suppress(OSError):  # not empty: someone else wrote there meanwhile
                directory.rmdir()


if __name__ == "__main__":
    sys.exit(main())
