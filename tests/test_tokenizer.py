"""The word tokenizer against the seed's rules, the char tokenizer, padding and serialisation."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from graphgpt.errors import UserError
from graphgpt.tokenizer import Tokenizer, build_tokenizer

SEED_CORPUS = Path(__file__).resolve().parents[2] / "shared" / "data" / "dummy.txt"


def tokens(tok: Tokenizer, ids) -> list[str]:
    return [tok.vocab[i] for i in ids]


# --- word -------------------------------------------------------------------------------------

def test_word_split_rules():
    tok = build_tokenizer("word", "Hello, world!\n  x_y 42")
    ids = tok.encode("Hello, world!\n  x_y 42")
    assert ids.dtype == np.int32
    assert tokens(tok, ids) == ["Hello", ",", "world", "!", "x", "_", "y", "42", "[EOS]"]


def test_word_vocab_in_order_of_first_appearance_then_eos():
    tok = build_tokenizer("word", "b a b. a1 ,b")
    assert tok.vocab == ["b", "a", ".", "a1", ",", "[EOS]"]
    assert tok.eos_id == 5 and tok.pad_id is None
    assert tok.encode("a b").tolist() == [1, 0, 5]
    assert tok.encode("a b", eos=False).tolist() == [1, 0]


def test_word_all_c_whitespace_is_dropped_and_nul_skipped():
    tok = build_tokenizer("word", "a\tb\nc\vd\fe\rf g\x00h")
    assert tok.vocab == ["a", "b", "c", "d", "e", "f", "g", "h", "[EOS]"]


def test_word_non_ascii_is_one_token_per_byte_and_round_trips():
    text = "café über"
    tok = build_tokenizer("word", text)
    ids = tok.encode(text)
    # "é" is two UTF-8 bytes, each a one-character token; "ü" likewise.
    assert len(ids) == len(["caf", "\xc3", "\xa9", "\xc3", "\xbc", "ber", "[EOS]"])
    # The seed's spacing treats each lone byte as punctuation, so "ü" sticks to the word before it;
    # the bytes themselves survive and re-encode to the same ids.
    assert tok.decode(ids[:-1]) == "caféü ber"
    assert np.array_equal(tok.encode(tok.decode(ids[:-1])), ids)
    assert "\u00e9" not in "".join(tok.vocab)  # tokens are bytes, not decoded characters


def test_word_decode_spacing():
    tok = build_tokenizer("word", "Hello, world! It is 42.")
    ids = tok.encode("Hello, world! It is 42.")
    assert tok.decode(ids) == "Hello, world! It is 42. [EOS]"
    assert tok.decode(ids[:-1]) == "Hello, world! It is 42."
    assert tok.decode([]) == ""


def test_word_decode_then_encode_round_trips_ids():
    text = "a(b) = c[d] + 7; x-y. Done!"
    tok = build_tokenizer("word", text)
    ids = tok.encode(text)
    assert np.array_equal(tok.encode(tok.decode(ids[:-1])), ids)


def test_decode_out_of_range_id_shows_unk():
    tok = build_tokenizer("word", "a b")
    assert tok.decode([0, 99, -1]) == "a [UNK] [UNK]"


def test_word_unknown_tokens_raise_with_count_and_examples(tmp_path):
    tok = build_tokenizer("word", "the cat sat")
    pets = tmp_path / "pets.txt"
    pets.write_text("the dog and the bird and the dog")
    with pytest.raises(UserError) as err:
        tok.encode(pets.read_text(), source=str(pets))
    message = str(err.value)
    assert "\n" not in message
    assert "pets.txt" in message and "3 distinct" in message and "'dog'" in message
    assert f"--data {pets}" in message  # a data file can be compiled into a vocabulary
    with pytest.raises(UserError) as err:
        tok.encode("the dog", source="--prompt")
    assert str(err.value).startswith("--prompt: 1 distinct") and "--data" not in str(err.value)


def test_word_build_errors():
    with pytest.raises(UserError):
        build_tokenizer("word", None)
    with pytest.raises(UserError):
        build_tokenizer("word", "  \n\t ")
    with pytest.raises(UserError):
        build_tokenizer("bpe", "text")


@pytest.mark.skipif(not SEED_CORPUS.is_file(), reason="seed corpus shared/data/dummy.txt not present")
def test_word_counts_on_seed_corpus():
    text = SEED_CORPUS.read_text(encoding="utf-8")
    tok = build_tokenizer("word", text)
    ids = tok.encode(text)
    # The seed's numbers: 52,600 text tokens plus the appended [EOS]; 171 distinct tokens + [EOS].
    assert len(ids) == 52_601 and ids[-1] == tok.eos_id
    assert len(tok.vocab) == 172 and tok.vocab[-1] == "[EOS]"


# --- padding ----------------------------------------------------------------------------------

def test_pad_to_pads_body_and_reappends_eos():
    tok = build_tokenizer("word", "a b c")
    ids = tok.encode("a b c")
    padded = tok.pad_to(ids, 6)
    assert tok.vocab[-1] == "[PAD]" and tok.pad_id == 4
    assert tokens(tok, padded) == ["a", "b", "c", "[PAD]", "[PAD]", "[PAD]", "[EOS]"]
    # [PAD] joins the vocabulary once.
    tok.pad_to(ids, 8)
    assert tok.vocab.count("[PAD]") == 1


def test_pad_to_follows_the_seed_length_rule():
    tok = build_tokenizer("word", "a b c")
    ids = tok.encode("a b c")  # 3 tokens + EOS
    assert tok.pad_to(ids, 3) is ids  # the body already has n tokens
    assert tok.pad_id is None
    # Body of 3 is shorter than 4, although the stream with EOS has 4 tokens.
    assert tokens(tok, tok.pad_to(ids, 4)) == ["a", "b", "c", "[PAD]", "[EOS]"]


def test_pad_to_without_trailing_eos():
    tok = build_tokenizer("word", "a b")
    padded = tok.pad_to(tok.encode("a b", eos=False), 4)
    assert tokens(tok, padded) == ["a", "b", "[PAD]", "[PAD]"]


# --- char -------------------------------------------------------------------------------------

def test_char_default_vocab():
    tok = build_tokenizer("char", None)
    assert len(tok.vocab) == 99
    assert tok.vocab[:3] == ["\t", "\n", " "] and tok.vocab[-3:] == ["~", "[UNK]", "[EOS]"]
    ids = tok.encode("hé\n")
    assert tokens(tok, ids) == ["h", "[UNK]", "\n", "[EOS]"]
    assert tok.decode(ids) == "h[UNK]\n[EOS]"
    text = "def f(x):\n\treturn x ~ 1\n"
    assert tok.decode(tok.encode(text, eos=False)) == text


def test_char_vocab_from_text():
    tok = build_tokenizer("char", "hello wörld")
    assert tok.vocab == [" ", "d", "e", "h", "l", "o", "r", "w", "ö", "[EOS]"]
    assert tok.decode(tok.encode("world", eos=False)) == "world"
    with pytest.raises(UserError) as err:
        tok.encode("help!")
    assert "2 distinct" in str(err.value)


def test_char_pad_to():
    tok = build_tokenizer("char", "ab")
    padded = tok.pad_to(tok.encode("ab"), 4)
    assert tokens(tok, padded) == ["a", "b", "[PAD]", "[PAD]", "[EOS]"]


# --- json -------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind,text", [("word", "Hi, there. ünï"), ("char", None), ("char", "xyz\n")])
def test_json_round_trip(kind, text, tmp_path):
    tok = build_tokenizer(kind, text)
    tok.pad_to(tok.encode(""), 3)
    path = tmp_path / "tok.json"
    path.write_text(json.dumps(tok.to_json()))
    again = Tokenizer.from_json(json.loads(path.read_text()))
    assert again.kind == tok.kind and again.vocab == tok.vocab
    assert again.pad_id == tok.pad_id and again.eos_id == tok.eos_id
    assert json.dumps(again.to_json()) == json.dumps(tok.to_json())


@pytest.mark.parametrize("bad", [
    ["word", "[EOS]"],
    {"kind": "word"},
    {"kind": 3, "vocab": ["[EOS]"]},
    {"kind": "bpe", "vocab": ["[EOS]"]},
    {"kind": "word", "vocab": ["a", 1, "[EOS]"]},
    {"kind": "word", "vocab": ["a", "b"]},
    {"kind": "word", "vocab": ["a", "a", "[EOS]"]},
    {"kind": "word", "vocab": ["two words", "[EOS]"]},
    {"kind": "word", "vocab": ["ab,", "[EOS]"]},
    {"kind": "char", "vocab": ["ab", "[EOS]"]},
])
def test_from_json_rejects_malformed(bad):
    with pytest.raises(UserError):
        Tokenizer.from_json(bad)
