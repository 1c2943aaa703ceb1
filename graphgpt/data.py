"""Training data: text and token files, the held-out split, and the batch samplers.

Two samplers cut one token stream into batches (x, y) of shape (batch_size, seq_len), the targets
y being x shifted by one token:

- `SequentialSampler` follows the seed: contiguous rows, wrapping to the start near the end.
- `RandomSampler` follows nanoGPT's get_batch: every row starts anywhere in the stream.

Both are generalised to data-parallel ranks so that W ranks with batch B read exactly the rows
that one rank with batch W*B would, which keeps losses comparable between a single-GPU run and a
distributed one. Each keeps its place in one number (`state()`), so a resumed run reads the
batches the uninterrupted run would have read.

Token files (`.bin`, written by tools/prepare.py) are nanoGPT's format: flat ids, no header. They
are memory-mapped, so a data set larger than memory trains without being loaded; a directory
prepare.py wrote gives its train.bin and val.bin, once their sizes are the token counts its
meta.json records. Text is read in pieces and encoded piece by
piece, within a bound on memory. Every data path must be a regular file, checked before it is
opened (a FIFO would block, a device never ends), and text must be text: a binary file given as
text is refused, never trained on.
"""
from __future__ import annotations

import codecs
import hashlib
import json
import os
import stat
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO, Iterator, NamedTuple

import numpy as np

import graphgpt
from graphgpt import jsontext
from graphgpt.errors import UserError
from graphgpt.tokenizer import Tokenizer

SAMPLERS = ("random", "sequential")

# RandomSampler streams: independent draws from one seed. Training batches, and the fixed windows
# every evaluation of a split reads.
TRAIN_STREAM = 0
EVAL_STREAMS = {"train": 1, "val": 2}

# meta.json, written by tools/prepare.py beside its train.bin and val.bin, says which tokenizer
# produced the ids; a file of another tokenizer's ids would train without complaint, on nonsense.
META_FILE = "meta.json"
TOKEN_FORMAT = "graphgpt-tokens"
TOKEN_FORMAT_VERSION = 1
TRAIN_FILE, VAL_FILE = "train.bin", "val.bin"
# The field of meta.json that records how many ids each token file holds: the files of two
# preparations side by side (a prepare killed midway through its commit) disagree with it.
COUNT_FIELDS = {TRAIN_FILE: "train_tokens", VAL_FILE: "val_tokens"}
_META_BYTES = 1 << 16  # more than any meta.json prepare.py writes: a larger file is not one

# Ids per step when checking a token file's range: a few million at a time keeps memory flat for
# files larger than memory.
_CHECK_CHUNK = 1 << 22


# --- files ------------------------------------------------------------------------------------

_NOT_REGULAR = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))

# Where a token file should go instead, said by every error that finds one given as text.
_TOKEN_FILE_USE = ("a token file from tools/prepare.py is read as FILE.bin or as its directory "
                   "(--data DIR)")

# The byte order marks that UTF-16 text begins with (and little-endian UTF-32's starts alike).
_UTF16_BOMS = (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)

# Text encoded per piece: the pieces' Python objects (tens of bytes per token) stay a few MB.
TEXT_PIECE_BYTES = 1 << 18


def read_error(what: str, path: Path, error: OSError) -> UserError:
    """The one-line error for a file (`what`: "data file", "token file") that cannot be opened."""
    if isinstance(error, FileNotFoundError):
        return UserError(f"{what} {path} does not exist")
    if isinstance(error, IsADirectoryError):
        return UserError(f"{what} {path} is a directory, expected a file")
    return UserError(f"cannot read {what} {path}: {error.strerror or error}")


def _check_regular(what: str, path: Path, mode: int) -> None:
    if stat.S_ISDIR(mode):
        raise read_error(what, path, IsADirectoryError())
    for test, kind in _NOT_REGULAR:
        if test(mode):
            raise UserError(f"{what} {path} is {kind}, not a regular file")


def open_data(path: str | os.PathLike, what: str = "data file") -> BinaryIO:
    """`path` opened for binary reading, once it is known to be a regular file that is not empty.

    A FIFO would block the open until a writer came and a device never ends, so anything but a
    regular file is refused from its stat, before it is opened; the open itself does not wait
    (O_NONBLOCK) either, in case the path changed in between, and is checked once more.
    """
    path = Path(path)
    try:
        _check_regular(what, path, os.stat(path).st_mode)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as e:
        raise read_error(what, path, e) from None
    f = os.fdopen(fd, "rb")
    try:
        info = os.fstat(fd)
        _check_regular(what, path, info.st_mode)
        if info.st_size == 0:
            raise UserError(f"{what} {path} is empty")
    except BaseException:
        f.close()
        raise
    return f


def decode_text(path: Path, data: bytes, offset: int = 0) -> str:
    """`data`, bytes from `offset` on in the text file `path`, as a string. Bytes that are no text
    (a NUL byte, bytes that are not UTF-8) are a UserError: a binary file is never trained on as
    text."""
    if offset == 0 and data.startswith(_UTF16_BOMS):
        raise UserError(f"data file {path} is UTF-16 text (it starts with a UTF-16 byte order mark); "
                        f"convert it: iconv -f UTF-16 -t UTF-8 {path} > {path.stem}.utf8{path.suffix}")
    nul = data.find(b"\0")
    if nul >= 0:
        raise UserError(f"data file {path} is not text (a NUL byte at offset {offset + nul}); "
                        f"{_TOKEN_FILE_USE}")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"data file {path} is not UTF-8 text (byte 0x{data[e.start]:02x} at offset "
                        f"{offset + e.start}); convert it (iconv -t UTF-8), or: {_TOKEN_FILE_USE}") from None


def available_memory() -> int:
    """Bytes of memory the system can give without swapping (MemAvailable, else free pages)."""
    try:
        with open("/proc/meminfo", "rb") as f:
            for line in f:
                if line.startswith(b"MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def check_fits_memory(path: Path, size: int, need: int, remedy: str) -> None:
    """A text whose work in memory (`need` bytes) exceeds half the available memory is refused
    with its size, before any of it is read: the other half stays for the model and the system."""
    free = available_memory()
    if need > free // 2:
        raise UserError(f"data file {path} is {size / 1e6:,.0f} MB; in memory it could take "
                        f"{need / 1e6:,.0f} MB, more than half of the {free / 1e6:,.0f} MB available; "
                        f"{remedy}")


def read_corpus(path: str | os.PathLike) -> str:
    """The whole text of a UTF-8 data file, for building a vocabulary from it. A file that is not a
    regular file, unreadable, not text, blank, or too large to hold (it and its UTF-8 bytes twice
    over, about 4 bytes per byte) in half the available memory is a UserError."""
    path = Path(path)
    with open_data(path) as f:
        size = os.fstat(f.fileno()).st_size
        check_fits_memory(path, size, 4 * size,
                          f"build the vocabulary from a part of it (head -c 100M {path} > part.txt)")
        try:
            raw = f.read()
        except OSError as e:
            raise read_error("data file", path, e) from None
    text = decode_text(path, raw)
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


def token_dtype(vocab_size: int) -> np.dtype:
    """The id type of a token file: uint16 while every id fits, as nanoGPT writes them."""
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


def tokenizer_digest(tokenizer: Tokenizer) -> str:
    """sha256 of the tokenizer's vocabulary: equal digests, equal meaning of every id."""
    return hashlib.sha256(json.dumps(tokenizer.to_json(), sort_keys=True).encode("utf-8")).hexdigest()


def read_token_meta(directory: Path) -> dict | None:
    """The meta.json tools/prepare.py wrote in `directory`, or None where there is none of its kind."""
    opened = _open_token_meta(Path(directory))
    if opened is None:
        return None
    opened[0].close()
    return opened[1]


def _open_token_meta(directory: Path) -> tuple[BinaryIO, dict] | None:
    """(the open file, its fields) of the meta.json tools/prepare.py wrote in `directory`, or None."""
    try:
        f = open_data(directory / META_FILE, META_FILE)
    except (UserError, OSError):  # absent, no file, unreadable: not prepare.py's
        return None
    try:
        meta = jsontext.loads(f.read(_META_BYTES))
    except (OSError, ValueError):  # unreadable or not JSON: not prepare.py's
        meta = None
    if isinstance(meta, dict) and meta.get("format") == TOKEN_FORMAT:
        return f, meta
    f.close()
    return None


def load_dataset(path: str | os.PathLike, tokenizer: Tokenizer,
                 vocab_size: int) -> tuple[np.ndarray, np.ndarray | None, str]:
    """(training tokens, held-out tokens or None, description) of --data: a file (`load_tokens`),
    or a directory tools/prepare.py wrote, as nanoGPT's data directories: its train.bin, and its
    val.bin as the held-out tokens where its meta.json records any.

    The files must be one preparation's: each holds the ids its meta.json counts, and there is no
    val.bin where it counts none. meta.json stays open while the token files are opened and must
    still be the one at its path afterwards: prepare.py replaces it before its first token file
    and after its last, so the files opened are those it describes."""
    path = Path(path)
    if not path.is_dir():
        tokens, description = load_tokens(path, tokenizer, vocab_size)
        return tokens, None, description
    opened = _open_token_meta(path)
    if opened is None:
        raise UserError(f"data directory {path} has no {META_FILE} of tools/prepare.py; pass a text "
                        f"file, a .bin token file, or a directory that tools/prepare.py wrote")
    meta_file, meta = opened
    with meta_file:
        if not (path / TRAIN_FILE).exists():
            raise UserError(f"data directory {path} has no {TRAIN_FILE}; {_again(path)}")
        dtype = token_dtype(vocab_size)
        _check_meta(path / TRAIN_FILE, meta, tokenizer, dtype)
        train_count, val_count = (_recorded_count(path, meta, name) for name in (TRAIN_FILE, VAL_FILE))
        val_there = os.path.lexists(path / VAL_FILE)
        if val_there and not val_count:
            raise UserError(f"data directory {path} has a {VAL_FILE}, its {META_FILE} records "
                            f"{COUNT_FIELDS[VAL_FILE]} 0: they are of different preparations; {_again(path)}")
        if val_count and not val_there:
            raise UserError(f"data directory {path} has no {VAL_FILE}, its {META_FILE} records "
                            f"{COUNT_FIELDS[VAL_FILE]} {val_count:,}; {_again(path)}")
        train = _open_token_file(path / TRAIN_FILE, dtype, vocab_size, train_count)
        val = _open_token_file(path / VAL_FILE, dtype, vocab_size, val_count) if val_count else None
        if not _still_at(meta_file, path / META_FILE):
            raise UserError(f"data directory {path} changed while it was read (a tools/prepare.py "
                            f"writing into it?); run again once that has finished")
    for name, tokens in ((TRAIN_FILE, train), (VAL_FILE, val)):
        if tokens is not None:
            _check_ids(path / name, tokens, vocab_size)
    held = f", {VAL_FILE} held out" if val is not None else ""
    return train, val, f"{path}/{TRAIN_FILE} ({train.dtype} token files{held})"


def load_tokens(path: str | os.PathLike, tokenizer: Tokenizer, vocab_size: int) -> tuple[np.ndarray, str]:
    """(tokens, description for the progress line) of a data file.

    A `.bin` file is a token file, memory-mapped read-only; any other file is text, encoded here
    piece by piece (`encode_text_file`). A token file beside a prepare.py meta.json holds ids of
    this plan's tokenizer and, if it is the train.bin or val.bin the meta.json counts, that many.
    """
    path = Path(path)
    if path.suffix == ".bin":
        dtype = token_dtype(vocab_size)
        meta, count = read_token_meta(path.parent), None
        if meta is not None:
            _check_meta(path, meta, tokenizer, dtype)
            if COUNT_FIELDS.get(path.name) in meta:
                count = _recorded_count(path.parent, meta, path.name)
        tokens = _open_token_file(path, dtype, vocab_size, count)
        _check_ids(path, tokens, vocab_size)
        return tokens, f"{path} ({tokens.dtype} token file)"
    tokens, unknown = encode_text_file(path, tokenizer, token_dtype(vocab_size))
    return tokens, f"{path}{unknown_note(path, unknown, len(tokens) - 1, tokenizer)}"


def _again(directory: Path) -> str:
    return f"prepare it again: python tools/prepare.py TEXT --plan PLAN --out {directory}"


def _open_token_file(path: Path, dtype: np.dtype, vocab_size: int, count: int | None) -> np.memmap:
    """The token file `path` mapped as `dtype` ids; `count`: how many it must hold, if known."""
    with open_data(path, "token file") as f:
        size = os.fstat(f.fileno()).st_size
        if size % dtype.itemsize:
            raise UserError(f"token file {path} has {size} bytes, not a whole number of {dtype} ids "
                            f"({dtype.itemsize} bytes each for a vocabulary of {vocab_size})")
        if count is not None and size != count * dtype.itemsize:
            raise UserError(f"data directory {path.parent}: {path.name} holds {size // dtype.itemsize:,} "
                            f"{dtype} ids, its {META_FILE} records {COUNT_FIELDS[path.name]} {count:,}: "
                            f"they are of different preparations; {_again(path.parent)}")
        return np.memmap(f, dtype=dtype, mode="r")  # the map keeps the file once f is closed


def _recorded_count(directory: Path, meta: dict, name: str) -> int:
    """How many ids meta.json records for its token file `name`. prepare.py's meta.json of a
    commit under way records none (null), so that no token file is read beside it."""
    field = COUNT_FIELDS[name]
    value = meta.get(field)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise UserError(f"data directory {directory}: its {META_FILE} records {field} "
                        f"{json.dumps(value)}, not a token count (a tools/prepare.py into it was "
                        f"interrupted, or is at work); {_again(directory)}")
    return value


def _still_at(f: BinaryIO, path: Path) -> bool:
    """Whether the open file `f` is still the file at `path`: nothing was renamed over it. Being
    open, its inode cannot be reused by a file renamed there since."""
    try:
        return os.path.samestat(os.fstat(f.fileno()), os.stat(path))
    except OSError:
        return False


def _check_meta(path: Path, meta: dict, tokenizer: Tokenizer, dtype: np.dtype) -> None:
    """A token file beside the prepare.py meta.json `meta` holds ids of this plan's tokenizer, as `dtype`."""
    again = _again(path.parent)
    ours, theirs = tokenizer_digest(tokenizer), str(meta.get("tokenizer_sha256"))
    if theirs != ours:
        raise UserError(f"token file {path} holds ids of tokenizer {theirs[:12]} (its {META_FILE}), "
                        f"the plan's tokenizer is {ours[:12]}; {again}")
    if meta.get("dtype") != dtype.name:
        raise UserError(f"token file {path} holds {meta.get('dtype')} ids (its {META_FILE}), "
                        f"this plan reads {dtype} ids; {again}")


def _check_ids(path: Path, tokens: np.ndarray, vocab_size: int) -> None:
    """Every id names a row of the embedding: a larger one would index past it."""
    for start in range(0, len(tokens), _CHECK_CHUNK):
        chunk = tokens[start:start + _CHECK_CHUNK]
        if int(chunk.max()) >= vocab_size:
            i = start + int(np.argmax(chunk >= vocab_size))
            raise UserError(f"token file {path} has id {int(tokens[i])} at token {i} (byte offset "
                            f"{i * tokens.itemsize}), outside the plan's vocabulary of {vocab_size}")


# --- encoding text ----------------------------------------------------------------------------

class Encoded(NamedTuple):
    """One piece of a text, encoded."""
    ids: np.ndarray
    end: int  # the byte of the text after this piece
    blank: bool  # the piece is only whitespace
    unknown: int  # ids of tokens outside the vocabulary ([UNK])


def encoded_pieces(text: BinaryIO, path: Path, tokenizer: Tokenizer, piece_bytes: int = TEXT_PIECE_BYTES,
                   workers: int = 1) -> Iterator[Encoded]:
    """The text of the open file `text` (of `path`), encoded piece by piece in order, `workers`
    pieces at a time; the ids of all pieces are those of encoding the whole text at once without
    its [EOS]. Memory stays at a few pieces however long the text is. A text that is no text or
    only whitespace is a UserError."""
    unk = tokenizer.unk_id

    def encode(offset: int, data: bytes) -> Encoded:
        piece = decode_text(path, data, offset)
        ids = tokenizer.encode(piece, eos=False, source=str(path))
        unknown = 0 if unk is None else int(np.count_nonzero(ids == unk))
        return Encoded(ids, offset + len(data), piece.isspace(), unknown)

    blank = True
    with ThreadPoolExecutor(workers) as pool:
        for encoded in in_order(pool, encode, text_pieces(text, piece_bytes, tokenizer.last_cut),
                                lookahead=2 * workers):
            blank &= encoded.blank
            yield encoded
    if blank:  # an empty file has no pieces at all
        raise UserError(f"data file {path} is empty or only whitespace")


def text_pieces(text: BinaryIO, piece_bytes: int, last_cut) -> Iterator[tuple[int, bytes]]:
    """(offset, bytes): the text in pieces of about piece_bytes, each cut where the tokenizer's
    `last_cut(block)` says no token straddles the cut.

    A stretch with no such byte is not cut: it grows into one larger piece.
    """
    offset, pending = 0, []
    while block := text.read(piece_bytes):
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


def encode_text_file(path: Path, tokenizer: Tokenizer, dtype: np.dtype) -> tuple[np.ndarray, int]:
    """(ids as `dtype`, [EOS] last; how many are [UNK]) of a text file, encoded in pieces.

    A text gives at most one id per byte, so the ids go into an array of size + 1 ids, of which
    only the pages written take memory: size * itemsize bytes at most. A text for which that is
    more than half the available memory is refused with its size before it is read, and pointed
    at tools/prepare.py, which streams the ids to disk instead.
    """
    with open_data(path) as f:
        size = os.fstat(f.fileno()).st_size
        check_fits_memory(path, size, (size + 1) * dtype.itemsize,
                          f"tokenise it to disk once (python tools/prepare.py {path} --plan PLAN "
                          f"--out DIR) and train with --data DIR")
        ids, n, unknown = np.empty(size + 1, dtype), 0, 0
        try:
            for encoded in encoded_pieces(f, path, tokenizer):
                ids[n:n + len(encoded.ids)] = encoded.ids
                n += len(encoded.ids)
                unknown += encoded.unknown
        except OSError as e:  # a read failing midway
            raise read_error("data file", path, e) from None
    ids[n] = tokenizer.eos_id
    return ids[:n + 1], unknown


def unknown_note(path: Path, unknown: int, total: int, tokenizer: Tokenizer) -> str:
    """"" where every one of a text's `total` tokens is in the vocabulary, else a note of how many
    became [UNK]; a text with no known token at all is a UserError."""
    if not unknown:
        return ""
    what = "characters" if tokenizer.kind == "char" else f"{tokenizer.kind} tokens"
    if unknown == total:
        raise UserError(f"data file {path}: all {total:,} {what} are outside the plan's vocabulary; "
                        f"compile the plan with --data {path} to build its vocabulary from this text")
    return f", {unknown:,} of {total:,} {what} outside the vocabulary, read as [UNK]"


# --- splitting --------------------------------------------------------------------------------

def heldout_cut(n: int, fraction: float) -> int:
    """Where the held-out last `fraction` of n tokens begins, exactly as nanoGPT cuts."""
    if not 0 < fraction < 1:
        raise UserError(f"the held-out fraction must be between 0 and 1 (exclusive), got {fraction}")
    return int(n * (1 - fraction))


def split_heldout(tokens: np.ndarray, fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """(train, val): the stream before and from `heldout_cut`, as views of `tokens`."""
    cut = heldout_cut(len(tokens), fraction)
    return tokens[:cut], tokens[cut:]


# --- samplers ---------------------------------------------------------------------------------

def _token_stream(tokens) -> np.ndarray:
    tokens = np.asarray(tokens)  # a view: a memmap stays backed by its file
    if tokens.ndim != 1 or not np.issubdtype(tokens.dtype, np.integer):
        raise ValueError(f"tokens must be a 1-D integer array, got {tokens.dtype} {tokens.shape}")
    return tokens


def _check_layout(batch_size: int, seq_len: int, rank: int, world_size: int) -> None:
    for name, value in (("batch_size", batch_size), ("seq_len", seq_len), ("world_size", world_size)):
        if value < 1:
            raise UserError(f"{name} must be at least 1, got {value}")
    if not 0 <= rank < world_size:
        raise UserError(f"rank {rank} is outside world size {world_size}")


def _saved_count(state, kind: str, key: str) -> int:
    """The number `key` of a sampler state saved by a `kind` sampler; any other state is a UserError."""
    saved = state.get("kind") if isinstance(state, dict) else None
    if saved not in SAMPLERS:
        raise UserError(f"the checkpoint's data sampler state {state!r} is not one graphgpt writes")
    if saved != kind:
        raise UserError(f"the checkpoint's data sampler is {saved!r}; this run uses {kind!r} "
                        f"(pass --sampler {saved})")
    value = state.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise UserError(f"the checkpoint's {kind} data sampler has {key} {value!r}, "
                        f"expected a whole number >= 0")
    return value


class SequentialSampler:
    """The seed's batches (x, y) of shape (batch_size, seq_len) for one rank of `world_size`.

    The global batch has G = world_size * batch_size rows; global row j is
    tokens[pos + j*T : pos + j*T + T] and rank r takes rows r*B .. r*B + B - 1. After each batch
    pos advances by G*T and returns to 0 once a further batch could reach the last token (the
    seed's `pos + G*T + 1 >= N`).
    """

    kind = "sequential"

    def __init__(self, tokens: np.ndarray, batch_size: int, seq_len: int,
                 rank: int = 0, world_size: int = 1) -> None:
        tokens = _token_stream(tokens)
        _check_layout(batch_size, seq_len, rank, world_size)
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

    def state(self) -> dict:
        """Where the next global batch starts in the token stream: all a resumed run needs."""
        return {"kind": self.kind, "position": self._position}

    def restore(self, state: dict) -> None:
        position = _saved_count(state, self.kind, "position")
        # A position from another run must still leave room for a whole batch in this data.
        last = len(self._tokens) - self._span - 1
        if position > last:
            raise UserError(f"the checkpoint's data position {position} is outside this data "
                            f"({len(self._tokens)} tokens; a batch of {self._span}+1 starts at 0..{last})")
        self._position = position

    def next_batch(self) -> tuple[np.ndarray, np.ndarray]:
        B, T = self.batch_size, self.seq_len
        start = self._position + self.rank * B * T
        x = self._tokens[start:start + B * T].reshape(B, T).astype(np.int32)
        y = self._tokens[start + 1:start + B * T + 1].reshape(B, T).astype(np.int32)
        self._position += self._span
        if self._position + self._span + 1 >= len(self._tokens):
            self._position = 0
        return x, y


class RandomSampler:
    """nanoGPT's batches: rows of seq_len + 1 tokens starting anywhere in the stream.

    Global batch i draws G = world_size * batch_size starts uniformly from 0 .. N - T - 1 with the
    generator `default_rng([seed, stream, i])`, and rank r takes rows r*B .. r*B + B - 1. Because
    every batch has its own generator, the number of batches drawn is the whole state.
    """

    kind = "random"

    def __init__(self, tokens: np.ndarray, batch_size: int, seq_len: int, rank: int = 0,
                 world_size: int = 1, seed: int = 0, stream: int = TRAIN_STREAM) -> None:
        tokens = _token_stream(tokens)
        _check_layout(batch_size, seq_len, rank, world_size)
        for name, value in (("seed", seed), ("stream", stream)):
            if value < 0:  # NumPy's seed sequences take only non-negative numbers
                raise UserError(f"the data sampler's {name} must be >= 0, got {value}")
        if len(tokens) < seq_len + 1:
            raise UserError(f"data has {len(tokens)} tokens, one row needs seq_len+1 = {seq_len + 1}; "
                            f"use more data or a smaller seq_len")
        self._tokens = tokens
        self._last_start = len(tokens) - seq_len - 1
        self._window = np.arange(seq_len + 1)
        self.batch_size = batch_size
        self.seq_len = seq_len
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.stream = stream
        self._batches = 0

    def state(self) -> dict:
        """How many global batches have been drawn: all a resumed run needs."""
        return {"kind": self.kind, "batches": self._batches}

    def restore(self, state: dict) -> None:
        self._batches = _saved_count(state, self.kind, "batches")

    def next_batch(self) -> tuple[np.ndarray, np.ndarray]:
        B = self.batch_size
        rng = np.random.default_rng([self.seed, self.stream, self._batches])
        starts = rng.integers(0, self._last_start, size=self.world_size * B, endpoint=True)
        mine = starts[self.rank * B:(self.rank + 1) * B]
        # One gather of (B, T+1) ids: reads only those rows' pages of a memory-mapped file.
        rows = self._tokens[mine[:, None] + self._window].astype(np.int32)
        self._batches += 1
        return np.ascontiguousarray(rows[:, :-1]), np.ascontiguousarray(rows[:, 1:])


def make_sampler(kind: str, tokens: np.ndarray, batch_size: int, seq_len: int, rank: int,
                 world_size: int, seed: int) -> SequentialSampler | RandomSampler:
    """The training sampler `kind` ("random" or "sequential"; the sequential one has no seed)."""
    if kind == "random":
        return RandomSampler(tokens, batch_size, seq_len, rank, world_size, seed=seed, stream=TRAIN_STREAM)
    if kind == "sequential":
        return SequentialSampler(tokens, batch_size, seq_len, rank, world_size)
    raise UserError(f"unknown data sampler {kind!r}; expected one of {', '.join(SAMPLERS)}")
