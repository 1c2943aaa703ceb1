"""GPT-2's byte-level BPE (`--tokenizer gpt2`), through tiktoken, from vocabulary files on disk.

The vocabulary is read once, at compile time, from a file the user names: GPT-2's `encoder.json`
(OpenAI's release) or `vocab.json` (a Hugging Face GPT-2 directory; give the directory or the
file), whose ids are the BPE ranks, or a tiktoken `.tiktoken` file (base64 token, rank per line).
Nothing is downloaded. The tokens then travel inside the plan, as every tokenizer's vocabulary
does, so training, preparing token files and generation need no vocabulary file.

Ids are GPT-2's: 50257 with its release, `<|endoftext|>` (50256) ending every text. A model
pads its vocabulary beyond that (`vocab_size=50304`); an id past the tokenizer's decodes as U+FFFD.
"""
from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np

from . import jsontext
from .errors import UserError

KIND = "gpt2"
ENDOFTEXT = "<|endoftext|>"
# GPT-2's pre-tokenizer (its encoder.py): contractions, letters, digits, other symbols, each with
# one leading space; whitespace runs, keeping the space before a word for that word.
PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
VOCAB_FILES = ("vocab.json", "encoder.json")  # what a directory given as the vocabulary may hold
_ASCII_SPACE = b" \t\n\r\x0b\x0c"


def byte_symbols() -> dict[str, int]:
    """GPT-2's printable stand-in for each byte in its JSON vocabulary: printable Latin-1 bytes
    stand for themselves, the other 68 (controls, space, NBSP, soft hyphen) for U+0100 onwards."""
    printable = [b for b in range(256) if chr(b).isprintable() and b != 0x20]
    others = [b for b in range(256) if b not in printable]
    return {**{chr(b): b for b in printable}, **{chr(256 + i): b for i, b in enumerate(others)}}


def read_vocabulary(path: Path) -> tuple[list[bytes], dict[str, int]]:
    """(the mergeable tokens in rank order, the special tokens by id) of a GPT-2 vocabulary file."""
    path = Path(path)
    if path.is_dir():
        found = [path / name for name in VOCAB_FILES if (path / name).is_file()]
        if not found:
            raise UserError(f"--vocab {path}: the directory has neither {' nor '.join(VOCAB_FILES)}")
        path = found[0]
    from graphgpt.data import open_data  # data.py reads text with the tokenizers, this module's users
    try:
        with open_data(path, "--vocab") as f:
            text = f.read().decode("utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"--vocab {path}: cannot read it ({getattr(e, 'strerror', None) or e})") from None
    ranks, special = (_tiktoken_ranks(path, text) if path.suffix == ".tiktoken" else _json_ranks(path, text))
    order = sorted(ranks, key=ranks.get)
    if [ranks[t] for t in order] != list(range(len(order))):
        raise UserError(f"--vocab {path}: the ranks of its {len(order)} tokens are not 0..{len(order) - 1}")
    if not all(bytes([b]) in ranks for b in range(256)):
        raise UserError(f"--vocab {path}: not every single byte is a token, so not every text can be encoded")
    special = special or {ENDOFTEXT: len(order)}
    if special.get(ENDOFTEXT) is None:
        raise UserError(f"--vocab {path}: it has no {ENDOFTEXT} token")
    return order, special


def _json_ranks(path: Path, text: str) -> tuple[dict[bytes, int], dict[str, int]]:
    try:
        encoder = jsontext.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"--vocab {path}: not valid JSON ({e.msg}, line {e.lineno})") from None
    if not isinstance(encoder, dict) or not all(isinstance(v, int) for v in encoder.values()):
        raise UserError(f"--vocab {path}: expected GPT-2's token -> id object")
    symbols, ranks, special = byte_symbols(), {}, {}
    for token, rank in encoder.items():
        if token.startswith("<|") and token.endswith("|>"):
            special[token] = rank
            continue
        try:
            ranks[bytes(symbols[c] for c in token)] = rank
        except KeyError:
            raise UserError(f"--vocab {path}: token {token!r} is not written in GPT-2's byte symbols") from None
    return ranks, special


def _tiktoken_ranks(path: Path, text: str) -> tuple[dict[bytes, int], dict[str, int]]:
    ranks = {}
    for number, line in enumerate(text.splitlines(), 1):
        if line:
            try:
                token, rank = line.split()
                ranks[base64.b64decode(token, validate=True)] = int(rank)
            except ValueError:
                raise UserError(f"--vocab {path}:{number}: expected 'base64-token rank'") from None
    return ranks, {}


class BpeTokenizer:
    """GPT-2's tokenizer over a vocabulary of byte strings; ids are their ranks."""

    kind = KIND

    def __init__(self, tokens: list[bytes], special: dict[str, int]):
        try:
            import tiktoken
        except ImportError:
            raise UserError("the gpt2 tokenizer needs tiktoken: pip install tiktoken "
                            "(or pip install -e '.[gpt2]')") from None
        self.tokens, self.special = list(tokens), dict(special)
        self._encoding = tiktoken.Encoding(name=KIND, pat_str=PATTERN,
                                           mergeable_ranks={t: i for i, t in enumerate(self.tokens)},
                                           special_tokens=self.special)
        n = max([len(self.tokens) - 1, *self.special.values()]) + 1
        # token strings as the other tokenizers hold theirs: one latin-1 character per byte
        self.vocab = [""] * n
        for i, t in enumerate(self.tokens):
            self.vocab[i] = t.decode("latin-1")
        for name, i in self.special.items():
            self.vocab[i] = name

    @classmethod
    def from_file(cls, path: Path) -> BpeTokenizer:
        return cls(*read_vocabulary(path))

    @property
    def eos_id(self) -> int:
        return self.special[ENDOFTEXT]

    @property
    def pad_id(self) -> None:
        return None

    @property
    def unk_id(self) -> None:
        return None  # every text has byte-level tokens

    def encode(self, text: str, eos: bool = True, *, source: str | None = None,
               strict: bool = False) -> np.ndarray:
        """GPT-2's ids of `text` (int32), `<|endoftext|>` appended when `eos`. Special tokens
        written in the text are encoded as the text they are, as nanoGPT's prepare.py does.
        Every text has byte-level tokens, so `source` and `strict` change nothing here."""
        ids = self._encoding.encode_ordinary(text)
        if eos:
            ids.append(self.eos_id)
        return np.array(ids, dtype=np.int32)

    def decode(self, ids) -> str:
        ids = np.asarray(ids, dtype=np.int64).reshape(-1).tolist()
        known = len(self.vocab)
        out, run = [], []
        for i in ids:  # ids past the vocabulary (a padded model's) show as U+FFFD
            if 0 <= i < known:
                run.append(i)
                continue
            out.append(self._encoding.decode(run, errors="replace"))
            out.append("\ufffd")
            run = []
        out.append(self._encoding.decode(run, errors="replace"))
        return "".join(out)

    def pad_to(self, ids: np.ndarray, n: int) -> np.ndarray:
        """A text shorter than one batch, made n tokens long with `<|endoftext|>` (GPT-2 has no
        padding token: the vocabulary stays as it is)."""
        ids = np.asarray(ids, dtype=np.int32)
        if len(ids) >= n:
            return ids
        return np.concatenate([ids, np.full(n - len(ids), self.eos_id, dtype=np.int32)])

    @staticmethod
    def last_cut(block: bytes) -> int:
        """The last offset in `block` before which the text may be cut without changing its
        tokens, or -1 when there is none: a space between a non-space and an ASCII letter (" word"
        always starts a pre-token, and the token before it ends where the space begins)."""
        at = len(block)
        while (at := block.rfind(b" ", 0, at)) > 0:
            if block[at + 1:at + 2].isalpha() and block[at - 1] not in _ASCII_SPACE:
                return at
        return -1

    def to_json(self) -> dict:
        return {"kind": KIND, "tokens": [base64.b64encode(t).decode("ascii") for t in self.tokens],
                "special": self.special}

    @classmethod
    def from_json(cls, d: dict) -> BpeTokenizer:
        tokens, special = d.get("tokens"), d.get("special")
        if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens) \
                or not isinstance(special, dict) or ENDOFTEXT not in special:
            raise UserError(f"a gpt2 tokenizer needs 'tokens' (base64 strings) and 'special' with {ENDOFTEXT}")
        return cls([base64.b64decode(t) for t in tokens], {k: int(v) for k, v in special.items()})
