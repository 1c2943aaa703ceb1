"""Text <-> token ids: the seed's word tokenizer and a character tokenizer (GPT-2's BPE: bpe.py).

The vocabulary is fixed when a model is compiled and travels inside the plan (`to_json`), so
training and generation always agree on what an id means.

Word tokens work on the UTF-8 bytes of the text, as the seed's C code does. Each byte is held as
one latin-1 character, so a token string stays 1:1 with its bytes and non-ASCII text survives a
round trip through encode/decode.
"""
from __future__ import annotations

import os
import re
from collections import Counter
from pathlib import Path

import numpy as np

from graphgpt.bpe import KIND as BPE_KIND
from graphgpt.bpe import VOCAB_FILES, BpeTokenizer
from graphgpt.errors import UserError

EOS = "[EOS]"
PAD = "[PAD]"
UNK = "[UNK]"
SPECIAL_TOKENS = (EOS, PAD, UNK)
KINDS = ("word", "char")

# The seed's rule with C-locale ctype: isalnum and isspace are ASCII-only. A NUL byte is skipped
# as well, because the seed keeps tokens in C strings.
_WORD_TOKEN = re.compile(r"[A-Za-z0-9]+|[^A-Za-z0-9\x00\t\n\v\f\r ]")

# Tabs, newlines and printable ASCII: enough for source code and English prose without data.
_DEFAULT_CHAR_VOCAB = ["\t", "\n"] + [chr(c) for c in range(32, 127)] + [UNK, EOS]

# How many unknown tokens an error message lists.
_SHOWN_UNKNOWN = 5

# Bytes a text may be cut before: ASCII, and neither a letter nor a digit (marked 0; all others 1).
# No token straddles such a cut: a word token is a run of ASCII letters and digits or a single
# byte, a char token is one character, and an ASCII byte never lies inside a UTF-8 character.
_CUT_BEFORE = bytes(0 if b < 0x80 and not chr(b).isalnum() else 1 for b in range(256))


def split_words(text: str) -> list[str]:
    """The seed's word split of `text`, each token as latin-1 characters standing for its bytes."""
    return _WORD_TOKEN.findall(text.encode("utf-8").decode("latin-1"))


def _is_ascii_alnum(ch: str) -> bool:
    # str.isalnum() would also accept latin-1 letters such as "é", which the seed's isalnum rejects.
    return ch.isascii() and ch.isalnum()


class Tokenizer:
    """A fixed vocabulary of one kind ("word" or "char"); ids are positions in `vocab`."""

    def __init__(self, kind: str, vocab: list[str]) -> None:
        if kind not in KINDS:
            raise UserError(f"unknown tokenizer kind {kind!r}; expected 'word' or 'char'")
        for token in vocab:
            _check_token(kind, token)
        self.kind = kind
        self.vocab = list(vocab)
        self._ids = {token: i for i, token in enumerate(self.vocab)}
        if len(self._ids) != len(self.vocab):
            duplicates = sorted(t for t, count in Counter(self.vocab).items() if count > 1)
            raise UserError(f"tokenizer vocabulary repeats tokens: {', '.join(map(repr, duplicates[:_SHOWN_UNKNOWN]))}")
        if EOS not in self._ids:
            raise UserError(f"tokenizer vocabulary has no {EOS} token")

    @property
    def eos_id(self) -> int:
        return self._ids[EOS]

    @property
    def pad_id(self) -> int | None:
        return self._ids.get(PAD)

    @property
    def unk_id(self) -> int | None:
        return self._ids.get(UNK)

    def encode(self, text: str, eos: bool = True, *, source: str | None = None,
               strict: bool = False) -> np.ndarray:
        """Token ids of `text` (int32), with [EOS] appended once when `eos`.

        A token outside the vocabulary becomes [UNK] when the vocabulary has one and not `strict`,
        and is an error otherwise; `source` (a file name) makes that error name where the text
        came from.
        """
        pieces = split_words(text) if self.kind == "word" else list(text)
        unk = None if strict else self.unk_id
        ids = [self._ids.get(piece, unk) for piece in pieces]
        if unk is None and None in ids:
            raise UserError(self._unknown_message(self.unknown_tokens(pieces), source))
        if eos:
            ids.append(self.eos_id)
        return np.array(ids, dtype=np.int32)

    def decode(self, ids) -> str:
        """Text of `ids`; an id outside the vocabulary shows as [UNK], as in the seed."""
        tokens = [self.vocab[i] if 0 <= i < len(self.vocab) else UNK
                  for i in np.asarray(ids, dtype=np.int64).reshape(-1).tolist()]
        if self.kind == "char":
            return "".join(tokens)
        parts = []
        for position, token in enumerate(tokens):
            punctuation = len(token) == 1 and not _is_ascii_alnum(token)
            if position > 0 and not punctuation:
                parts.append(" ")
            parts.append(token)
        # Back from latin-1 characters to the bytes they stand for; a lone byte of a multi-byte
        # character (a cut-off generation) shows as U+FFFD instead of failing.
        return "".join(parts).encode("latin-1").decode("utf-8", errors="replace")

    def pad_to(self, ids: np.ndarray, n: int) -> np.ndarray:
        """The seed's padding: ids without their trailing [EOS], padded with [PAD] to n, [EOS] back.

        As in the seed, padding happens only when the stream without its [EOS] is shorter than n;
        [PAD] then joins the vocabulary (once), so the vocabulary grows by one.
        """
        ids = np.asarray(ids, dtype=np.int32)
        has_eos = len(ids) > 0 and ids[-1] == self.eos_id
        body = ids[:-1] if has_eos else ids
        if len(body) >= n:
            return ids
        if PAD not in self._ids:
            self._ids[PAD] = len(self.vocab)
            self.vocab.append(PAD)
        padding = np.full(n - len(body), self._ids[PAD], dtype=np.int32)
        tail = np.array([self.eos_id] if has_eos else [], dtype=np.int32)
        return np.concatenate([body, padding, tail])

    @staticmethod
    def last_cut(block: bytes) -> int:
        """The last offset in `block` before which the text may be cut without changing its
        tokens (before an ASCII byte that is no letter or digit), or -1 when there is none."""
        return block.translate(_CUT_BEFORE).rfind(0)

    def to_json(self) -> dict:
        return {"kind": self.kind, "vocab": list(self.vocab)}

    @classmethod
    def from_json(cls, d) -> "Tokenizer | BpeTokenizer":
        """The tokenizer a plan records, of any kind."""
        if not isinstance(d, dict):
            raise UserError(f"tokenizer must be a JSON object with 'kind' and 'vocab', got {type(d).__name__}")
        if d.get("kind") == BPE_KIND:
            return BpeTokenizer.from_json(d)
        kind, vocab = d.get("kind"), d.get("vocab")
        if not isinstance(kind, str):
            raise UserError(f"tokenizer 'kind' must be a string, got {kind!r}")
        if not isinstance(vocab, list) or not all(isinstance(t, str) for t in vocab):
            raise UserError("tokenizer 'vocab' must be a list of strings")
        return cls(kind, vocab)

    def unknown_tokens(self, pieces) -> list[str]:
        """The distinct tokens among `pieces` outside the vocabulary, in order of appearance."""
        return list(dict.fromkeys(p for p in pieces if p not in self._ids))

    def _unknown_message(self, unknown: list[str], source: str | None) -> str:
        shown = ", ".join(self._show(t) for t in unknown[:_SHOWN_UNKNOWN])
        more = ", ..." if len(unknown) > _SHOWN_UNKNOWN else ""
        where = source or "text"
        # a data file can become the vocabulary's source; a prompt can only keep to it
        remedy = (f", compile with --data {source} to build it from this text"
                  if source and Path(source).is_file() else "")
        return (f"{where}: {len(unknown)} distinct {self.kind} token(s) not in the vocabulary "
                f"({shown}{more}); the vocabulary is fixed at compile time{remedy}")

    def _show(self, token: str) -> str:
        if self.kind == "word" and not token.isascii():
            return f"byte 0x{ord(token):02x}"  # non-ASCII word tokens are single bytes
        return repr(token)


def encode_prompt(tokenizer: Tokenizer | BpeTokenizer, prompt: str) -> np.ndarray:
    """The ids of a --prompt, every token of which must be in the vocabulary: the model never
    learned what [UNK] stands for, so a prompt read as [UNK] would be continued from nonsense."""
    return tokenizer.encode(prompt_text(prompt), eos=False, source="--prompt", strict=True)


def prompt_text(prompt: str) -> str:
    """--prompt as text. Command-line bytes that are not text in the locale's encoding reach
    Python as surrogate escapes: they are read as UTF-8 where they are (a terminal in UTF-8 under
    another locale), and are a UserError naming the first byte that is not text otherwise."""
    try:
        prompt.encode("utf-8")
        return prompt
    except UnicodeEncodeError:
        pass
    try:
        raw = os.fsencode(prompt)
    except UnicodeEncodeError as e:  # a lone surrogate that no byte stands for
        raise UserError(f"--prompt is not text: U+{ord(prompt[e.start]):04X} at character {e.start}") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"--prompt is not UTF-8 text: byte 0x{raw[e.start]:02x} at byte {e.start} "
                        f"of {len(raw)}") from None


def _check_token(kind: str, token: str) -> None:
    if token in SPECIAL_TOKENS:
        return
    if kind == "char":
        ok = len(token) == 1
    else:
        ok = all(ord(c) < 256 for c in token) and _WORD_TOKEN.fullmatch(token) is not None
    if not ok:
        raise UserError(f"tokenizer vocabulary has {token!r}, which is not a {kind} token")


def build_tokenizer(kind: str, text: str | None) -> Tokenizer:
    """The vocabulary for `kind`, from `text` (the training data) or, for "char" only, without data."""
    if kind == "char":
        if text is None:
            return Tokenizer("char", _DEFAULT_CHAR_VOCAB)
        if not text:
            raise UserError("cannot build a char vocabulary from empty data")
        return Tokenizer("char", sorted(set(text)) + [EOS])
    if kind == "word":
        if text is None:
            raise UserError("the word tokenizer builds its vocabulary from data; give a data file")
        # one pass over the matches, not a list of them: a large text's words would take
        # tens of bytes each at once
        latin1 = text.encode("utf-8").decode("latin-1")
        words = list(dict.fromkeys(m.group() for m in _WORD_TOKEN.finditer(latin1)))
        if not words:
            raise UserError("cannot build a word vocabulary: the data has no tokens")
        return Tokenizer("word", words + [EOS])
    raise UserError(f"unknown tokenizer kind {kind!r}; expected 'word' or 'char'")


def compile_tokenizer(data_path: Path | None, kind: str | None,
                      vocab_path: Path | None = None) -> Tokenizer | BpeTokenizer:
    """The tokenizer a compile puts in its plan, from tools/compile.py's --data, --tokenizer and --vocab."""
    if kind == BPE_KIND:
        if vocab_path is None:
            raise UserError("--tokenizer gpt2 reads GPT-2's vocabulary from disk: pass --vocab PATH "
                            f"(encoder.json, vocab.json, a .tiktoken file, or a directory holding {' or '.join(VOCAB_FILES)})")
        return BpeTokenizer.from_file(vocab_path)
    if vocab_path is not None:
        raise UserError("--vocab is GPT-2's vocabulary, for --tokenizer gpt2")
    if data_path is None:
        if kind == "word":
            raise UserError("the word tokenizer builds its vocabulary from data: pass --data FILE")
        return build_tokenizer("char", None)
    from graphgpt.data import read_corpus
    return build_tokenizer(kind or "word", read_corpus(data_path))
