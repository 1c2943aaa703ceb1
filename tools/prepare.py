"""python tools/prepare.py TEXT --plan DIR --out DIR [--val-fraction F]

Tokenises a text file once, with a compiled plan's tokenizer, into the token files training reads
without encoding again: train.bin, val.bin (the last F of the tokens, split as nanoGPT splits) and
meta.json, which records the tokenizer so that a file is never trained with another plan's ids.
`python -m graphgpt.run --data DIR` trains on train.bin and holds out val.bin.

The text is read and encoded in pieces, several at a time, and the ids are streamed to disk, so a
corpus larger than memory can be prepared. Every file is written into a staging directory in
--out, fsynced and renamed into place only once all of them are complete: an error, a full disk,
Ctrl-C, SIGTERM or SIGHUP leaves --out as it was. The renames never show a reader the files of two
preparations as one: meta.json first becomes one that counts no tokens, which training refuses,
and becomes the new one only once the token files are in place (`Staging.commit`). The staging
directory carries a marker file naming this tool and its pid; one that a killed prepare left (its
pid gone) is removed by the next prepare into the same --out, and nothing without the marker ever
is. One prepare at a time writes into an --out: it holds an advisory lock on the directory from
its checks to the end of its commit, and another is refused meanwhile.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import BinaryIO, Iterator

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout, installed or not

import numpy as np  # noqa: E402

from graphgpt import literals, plan as plan_io  # noqa: E402
from graphgpt.data import (COUNT_FIELDS, META_FILE, TOKEN_FORMAT, TOKEN_FORMAT_VERSION, TRAIN_FILE,  # noqa: E402
                           VAL_FILE, encoded_pieces, heldout_cut, open_data, read_token_meta, token_dtype,
                           tokenizer_digest, unknown_note)
from graphgpt.errors import ArgumentParser, UserError, reported, stop_on_termination  # noqa: E402
from graphgpt.fsutil import fsync_dir, lock_exclusively, process_alive  # noqa: E402
from graphgpt.monitor import GuardedStdout  # noqa: E402
from graphgpt.tokenizer import Tokenizer  # noqa: E402

CHUNK_BYTES = 4 << 20  # text encoded per piece: a worker holds some ten times that while encoding one
WORKERS = min(8, os.cpu_count() or 1)
PROGRESS_STEPS = 10  # progress lines for a text of more than one piece

# The fields of the meta.json prepare.py writes: a meta.json without exactly these is a user's.
META_FIELDS = {"format", "version", "dtype", "vocab_size", "tokenizer_sha256", "train_tokens", "val_tokens", "source"}

# The staging directory's name, and the marker file in it that says prepare.py made it.
STAGING = re.compile(r"\.graphgpt-prepare\.(\d+)\.\w+\.staging")
MARKER = ".graphgpt-staging"
# In the staging directory: the meta.json --out holds while the token files are being renamed.
PENDING_META = "pending-meta.json"


def main(argv=None) -> int:
    p = ArgumentParser(prog="tools/prepare.py", description=(
        "Tokenise a text file with a plan's tokenizer into train.bin, val.bin and meta.json, "
        "the token files training memory-maps (python -m graphgpt.run --data DIR)."))
    p.add_argument("text", type=Path, help="the UTF-8 text to tokenise")
    p.add_argument("--plan", type=Path, required=True, help="the compiled plan whose tokenizer to use")
    p.add_argument("--out", type=Path, required=True, help="directory for train.bin, val.bin and meta.json")
    p.add_argument("--val-fraction", type=literals.number, default=0.1,
                   help="the last fraction of the tokens held out as val.bin (default 0.1; 0: no val.bin)")
    p.add_argument("--chunk-bytes", type=literals.integer, default=CHUNK_BYTES, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    sys.stdout = GuardedStdout(sys.stdout)  # `| head -1`: the work goes on, quietly

    stop_on_termination()
    return reported(prepare, args.text, args.plan, args.out, args.val_fraction, args.chunk_bytes,
                    kept=f": --out {args.out} left as it was")


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
    try:
        with locked(out):
            check_out(out)
            with open_data(text_path) as text:
                remove_stale_staging(out)
                with Staging(out) as staging:
                    train = staging.open(TRAIN_FILE)
                    total, unknown = encode_file(text, text_path, tokenizer, dtype, train, chunk_bytes)
                    note = unknown_note(text_path, unknown, total - 1, tokenizer)
                    cut = split_point(total, val_fraction, text_path)
                    if cut < total:
                        move_tail(train, staging.open(VAL_FILE), cut * dtype.itemsize)
                    meta = {"format": TOKEN_FORMAT, "version": TOKEN_FORMAT_VERSION, "dtype": dtype.name,
                            "vocab_size": vocab_size, "tokenizer_sha256": tokenizer_digest(tokenizer),
                            "train_tokens": cut, "val_tokens": total - cut, "source": text_path.name}
                    staging.commit(meta)
    except OSError as e:  # a full disk, an unwritable --out, a failing read
        where = f" ({e.filename})" if e.filename else ""
        raise UserError(f"cannot prepare {out}: {e.strerror or e}{where}; --out left as it was") from None
    val = f", {VAL_FILE} {total - cut:,} tokens" if cut < total else ""
    print(f"wrote {out}/: {TRAIN_FILE} {cut:,} tokens{val} ({dtype}, vocabulary {vocab_size}{note}) "
          f"in {time.perf_counter() - start:.1f} s")


@contextlib.contextmanager
def locked(out: Path) -> Iterator[None]:
    """--out, made if missing, held against any other prepare.py into it for the block: an
    advisory lock (flock) on the directory itself, which leaves no file behind and which the kernel
    drops when the process ends, however it ends. A directory made here that the block leaves
    empty by failing is removed, while the lock still keeps others out."""
    if os.path.lexists(out) and not out.is_dir():
        raise UserError(f"--out {out} is not a directory")
    while True:
        made = [d for d in (out, *out.parents) if not d.exists()]  # deepest first
        out.mkdir(parents=True, exist_ok=True)
        fd = os.open(out, os.O_RDONLY | os.O_DIRECTORY)
        try:
            if not lock_exclusively(fd):
                print(f"warning: --out {out}: its filesystem keeps no locks, so nothing stops another "
                      "prepare.py writing here at the same time", file=sys.stderr)
        except BlockingIOError:
            os.close(fd)
            raise UserError(f"another tools/prepare.py is writing into --out {out}; wait for it to "
                            f"finish, or choose another --out") from None
        except BaseException:
            os.close(fd)
            raise
        with contextlib.suppress(FileNotFoundError):
            if os.path.samestat(os.fstat(fd), os.stat(out)):
                break
        os.close(fd)  # the directory locked is gone: a prepare that made it removed it on failing
    try:
        yield
    except BaseException:
        for directory in made:
            with contextlib.suppress(OSError):  # not empty: someone else wrote there meanwhile
                directory.rmdir()
        raise
    finally:
        os.close(fd)


def check_out(out: Path) -> None:
    """--out is a directory whose token files and meta.json, if any, prepare.py wrote: its
    meta.json says so (also the one a commit that was killed midway left)."""
    for name in (TRAIN_FILE, VAL_FILE, META_FILE):
        if (out / name).is_dir():
            raise UserError(f"--out {out} holds a directory {name}, where prepare.py writes a file")
    present = [name for name in (TRAIN_FILE, VAL_FILE, META_FILE) if os.path.lexists(out / name)]
    meta = read_token_meta(out)
    if present and (meta is None or meta.keys() != META_FIELDS or (out / META_FILE).is_symlink()):
        raise UserError(f"--out {out} holds {', '.join(present)} not written by tools/prepare.py (no {META_FILE} "
                        f"of format {TOKEN_FORMAT} with the fields it writes); choose another --out")


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

def encode_file(text: BinaryIO, text_path: Path, tokenizer: Tokenizer, dtype: np.dtype,
                out: BinaryIO, chunk_bytes: int) -> tuple[int, int]:
    """Encode the text piece by piece into `out` as `dtype` ids; returns (ids, how many of them
    are [UNK]).

    The ids are those of encoding the whole text at once: no token straddles a cut, and the [EOS]
    that `Tokenizer.encode` appends to a text is written once, after the last piece.
    """
    size = os.fstat(text.fileno()).st_size
    progress = Progress(text_path, size, enabled=size > chunk_bytes)
    total = unknown = 0
    for encoded in encoded_pieces(text, text_path, tokenizer, chunk_bytes, WORKERS):
        out.write(encoded.ids.astype(dtype).tobytes())
        total += len(encoded.ids)
        unknown += encoded.unknown
        progress.update(encoded.end, total)
    out.write(np.array([tokenizer.eos_id], dtype=dtype).tobytes())
    return total + 1, unknown


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


def remove_stale_staging(out: Path) -> None:
    """Remove the staging directories in `out` that a prepare killed midway (kill -9, a crash)
    left: only those with this tool's marker whose process is gone, and in them only the files
    prepare.py writes; a directory holding anything else stays."""
    if not out.is_dir():
        return
    for entry in out.iterdir():
        match = STAGING.fullmatch(entry.name)
        if not match or entry.is_symlink() or not entry.is_dir():
            continue
        pid = int(match.group(1))
        if pid != os.getpid() and process_alive(pid):  # a prepare at work right now
            continue
        marker, expected = entry / MARKER, _marker_text(pid)
        if marker.is_symlink() or not marker.is_file():
            continue
        with open(marker, "rb") as f:
            if f.read(len(expected) + 1) != expected:
                continue
        for name in (TRAIN_FILE, VAL_FILE, META_FILE, PENDING_META, MARKER):
            with contextlib.suppress(FileNotFoundError):
                (entry / name).unlink()
        with contextlib.suppress(OSError):  # not empty: it holds something prepare.py did not write
            entry.rmdir()
            print(f"removed {entry}, left by an interrupted prepare (pid {pid})")


def _marker_text(pid: int) -> bytes:
    return f"graphgpt tools/prepare.py staging directory of pid {pid}\n".encode()


class Staging:
    """The token files written in a staging directory in `out`, which `commit` swaps in for those
    of `out`.

    Leaving the with-block without committing (an error, Ctrl-C, SIGTERM) removes the staging
    directory, so --out is left as it was found.
    """

    def __init__(self, out: Path) -> None:
        self.out = out
        self.dir: Path | None = None  # made on entering, under a name no other directory has
        self._staging = False  # self.dir is there, to be removed
        self._files: dict[str, BinaryIO] = {}  # target name -> its file in the staging directory

    def __enter__(self) -> Staging:
        try:
            self.dir = Path(tempfile.mkdtemp(prefix=f".graphgpt-prepare.{os.getpid()}.", suffix=".staging",
                                             dir=self.out))
            self._staging = True
            # the marker first: whatever a kill -9 leaves from here on, the next prepare removes
            (self.dir / MARKER).write_bytes(_marker_text(os.getpid()))
        except BaseException:
            self.__exit__()
            raise
        return self

    def open(self, name: str) -> BinaryIO:
        """A new file in the staging directory, for out/name."""
        f = open(self.dir / name, "x+b")  # unlike mkstemp's 0600, the permissions any new file gets
        self._files[name] = f
        return f

    def commit(self, meta: dict) -> None:
        """Swap the token files opened and `meta` in for those of --out, so that at every instant a
        reader finds the old set, the new set, or a meta.json that counts no tokens (which it
        refuses, and which check_out still knows as prepare.py's):

        1. meta.json becomes `meta` without counts;
        2. train.bin and val.bin are renamed into place, an old val.bin not replaced is removed;
        3. meta.json becomes `meta`.

        Everything is written and fsynced before the first rename, and each step is made durable
        (the directory fsynced) before the next, so a crash of the machine keeps the order too.
        """
        pending = dict(meta, **dict.fromkeys(COUNT_FIELDS.values()))
        for name, fields in ((PENDING_META, pending), (META_FILE, meta)):
            self.open(name).write(json.dumps(fields, indent=1).encode() + b"\n")
        for f in self._files.values():
            f.flush()
            os.fsync(f.fileno())
            f.close()
        self._place(PENDING_META, META_FILE)
        fsync_dir(self.out)
        for name in (TRAIN_FILE, VAL_FILE):
            if name in self._files:
                self._place(name, name)
            else:  # an old val.bin (check_out made sure it is prepare.py's) would not continue train.bin
                (self.out / name).unlink(missing_ok=True)
        fsync_dir(self.out)
        self._place(META_FILE, META_FILE)
        fsync_dir(self.out)
        self._remove_staging()

    def _place(self, name: str, target: str) -> None:
        os.replace(self.dir / name, self.out / target)
        del self._files[name]

    def __exit__(self, *exc) -> None:
        for name, f in self._files.items():
            f.close()
            (self.dir / name).unlink(missing_ok=True)
        self._files.clear()
        self._remove_staging()

    def _remove_staging(self) -> None:
        if self._staging:
            (self.dir / MARKER).unlink(missing_ok=True)
            with contextlib.suppress(OSError):  # not empty: someone else wrote there meanwhile
                self.dir.rmdir()
            self._staging = False


if __name__ == "__main__":
    sys.exit(main())
