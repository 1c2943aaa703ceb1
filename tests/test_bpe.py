"""--tokenizer gpt2: GPT-2's byte-level BPE from vocabulary files on disk.

The tests build a small GPT-2-format vocabulary themselves (the 256 byte tokens in GPT-2's
order, a few dozen merges learned from a sample text, <|endoftext|> last) and write it the ways
GPT-2 ships it: OpenAI's encoder.json + vocab.bpe, a Hugging Face vocab.json, a .tiktoken file.
tiktoken's own loader of OpenAI's files is the reference the ids must equal.
"""
import base64
import json
from collections import Counter

import numpy as np
import pytest

from graphgpt.bpe import ENDOFTEXT, BpeTokenizer, byte_symbols
from graphgpt.tokenizer import Tokenizer
from tests.conftest import COMPILE, DEEP_JSON, ROOT, assert_user_error, run_cli

tiktoken = pytest.importorskip("tiktoken")

SAMPLE = ("The quick brown fox jumps over the lazy dog. It's the dog's day, isn't it? "
          "Numbers: 12345 and 67.89; symbols #@!; tabs\tand\nnewlines\n\n  spaces   end. "
          "Ünïcödé, 日本語, emoji 🙂 and the the the thethe.")


def learn_merges(text: str, n: int) -> list[tuple[bytes, bytes]]:
    """n BPE merges learned from `text` (within GPT-2's pre-tokens), most frequent pair first."""
    import regex
    from graphgpt.bpe import PATTERN
    words = [[bytes([b]) for b in w.encode()] for w in regex.findall(PATTERN, text)]
    merges, tokens = [], {bytes([b]) for b in range(256)}
    for _ in range(n):
        pairs = Counter(p for w in words for p in zip(w, w[1:]))
        if not pairs:
            break
        best = max(pairs, key=lambda p: (pairs[p], p))
        if best[0] + best[1] in tokens:  # a token two merges would make: ranks must stay one per token
            break
        tokens.add(best[0] + best[1])
        merges.append(best)
        for w in words:
            i = 0
            while i < len(w) - 1:
                if (w[i], w[i + 1]) == best:
                    w[i:i + 2] = [w[i] + w[i + 1]]
                i += 1
    return merges


@pytest.fixture(scope="module")
def vocab(tmp_path_factory):
    """The small vocabulary in each of GPT-2's file formats, and tiktoken's reference encoding."""
    pytest.importorskip("regex")  # tiktoken's dependency; learn_merges uses its \\p classes
    root = tmp_path_factory.mktemp("vocab")
    symbols = {b: s for s, b in byte_symbols().items()}
    ranked = [bytes([b]) for b in sorted(range(256), key=lambda b: (ord(symbols[b]) >= 256, ord(symbols[b])))]
    merges = learn_merges(SAMPLE, 60)
    ranked += [a + b for a, b in merges]
    text = lambda t: "".join(symbols[b] for b in t)  # noqa: E731
    encoder = {text(t): i for i, t in enumerate(ranked)} | {ENDOFTEXT: len(ranked)}
    (root / "encoder.json").write_text(json.dumps(encoder))
    (root / "vocab.bpe").write_text("#version: 0.2\n" + "".join(f"{text(a)} {text(b)}\n" for a, b in merges))
    hf = root / "hf"
    hf.mkdir()
    (hf / "vocab.json").write_text(json.dumps(encoder))
    (root / "small.tiktoken").write_text("".join(f"{base64.b64encode(t).decode()} {i}\n" for i, t in enumerate(ranked)))
    import os
    os.environ["TIKTOKEN_CACHE_DIR"] = ""  # tiktoken reads the local files as they are
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks
    reference = tiktoken.Encoding(
        "reference", pat_str=r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s""",
        mergeable_ranks=data_gym_to_mergeable_bpe_ranks(str(root / "vocab.bpe"), str(root / "encoder.json")),
        special_tokens={ENDOFTEXT: len(ranked)})
    return root, reference, len(ranked) + 1


TEXTS = [SAMPLE, "the the the", " leading space", "trailing space ", "a\n\n\nb", "tab\t\tx", "12 345 6789",
         "don't won't they're I'm we've you'll he'd", "naïve café über", "", "<|endoftext|> as text"]


@pytest.mark.parametrize("source", ["encoder.json", "hf", "hf/vocab.json", "small.tiktoken"])
def test_ids_equal_tiktokens_gpt2_loader(vocab, source):
    """GPT-2's pattern and OpenAI's files as tiktoken reads them (its r50k pattern, its data-gym
    loader) give the same ids as graphgpt's reading of each file format."""
    root, reference, n = vocab
    tok = BpeTokenizer.from_file(root / source)
    assert len(tok.vocab) == n and tok.eos_id == n - 1
    for text in TEXTS + [SAMPLE[i:i + 37] for i in range(0, len(SAMPLE), 11)]:
        got = tok.encode(text, eos=True)
        assert got.tolist() == reference.encode_ordinary(text) + [n - 1], text
        assert tok.decode(got[:-1]) == text


def test_the_plan_carries_the_vocabulary_and_padding_ids_decode_as_replacement(vocab):
    root, _, n = vocab
    tok = BpeTokenizer.from_file(root / "encoder.json")
    again = Tokenizer.from_json(json.loads(json.dumps(tok.to_json())))
    assert again.encode(SAMPLE).tolist() == tok.encode(SAMPLE).tolist()
    assert again.decode([*tok.encode("ab", eos=False), n + 5]) == "ab\ufffd"
    padded = again.pad_to(again.encode("ab"), 10)
    assert len(padded) == 10 and (padded[-8:] == again.eos_id).all()


def test_a_text_cut_where_last_cut_says_encodes_the_same(vocab):
    root, _, _ = vocab
    tok = BpeTokenizer.from_file(root / "encoder.json")
    data = (SAMPLE * 5).encode()
    pieces, rest = [], data
    while (cut := tok.last_cut(rest[:97])) > 0:
        pieces.append(rest[:cut])
        rest = rest[cut:]
    pieces.append(rest)
    assert len(pieces) > 5
    ids = np.concatenate([tok.encode(p.decode(), eos=False) for p in pieces])
    assert ids.tolist() == tok.encode(data.decode(), eos=False).tolist()


def test_compile_prepare_and_train_with_gpt2_tokens(vocab, tmp_path):
    root, _, n = vocab
    plan = tmp_path / "plan"
    proc = run_cli(COMPILE, str(ROOT / "model.py"), "--out", str(plan), "--tokenizer", "gpt2", "--vocab", str(root / "hf"),
                   "--set", "n_layer=1", "--set", "n_head=2", "--set", "n_embd=16", "--set", "block_size=8",
                   "--set", "batch_size=2", "--set", "vocab_size=384", "--set", "tie_weights=1")
    assert proc.returncode == 0, proc.stderr
    assert f"gpt2, {n} tokens" in (plan / "report.txt").read_text()
    text = tmp_path / "corpus.txt"
    text.write_text(SAMPLE * 20)
    tokens = tmp_path / "tokens"
    proc = run_cli("tools/prepare.py", str(text), "--plan", str(plan), "--out", str(tokens), "--chunk-bytes", "64")
    assert proc.returncode == 0, proc.stderr
    ids = np.fromfile(tokens / "train.bin", np.uint16)
    val = np.fromfile(tokens / "val.bin", np.uint16)
    whole = BpeTokenizer.from_file(root / "encoder.json").encode(text.read_text()).tolist()
    assert ids.tolist() + val.tolist() == whole  # cut into 64-byte pieces, encoded on threads
    proc = run_cli("-m", "graphgpt.run", "--plan", str(plan), "--data", str(tokens / "train.bin"),
                   "--val-data", str(tokens / "val.bin"), "--steps", "3", "--backend", "numpy", "--generate", "5")
    assert proc.returncode == 0, proc.stderr
    assert "loss" in proc.stdout


@pytest.mark.parametrize("args, message", [
    (["--tokenizer", "gpt2"], "pass --vocab PATH"),
    (["--tokenizer", "char", "--vocab", "x.json"], "--vocab is GPT-2's vocabulary"),
    (["--tokenizer", "gpt2", "--vocab", "/nonexistent/encoder.json"], "--vocab /nonexistent/encoder.json does not exist"),
    (["--tokenizer", "gpt2", "--vocab", "/dev/zero"], "--vocab /dev/zero is a character device"),
])
def test_bad_vocabulary_arguments_are_one_line_and_status_2(tmp_path, args, message):
    proc = run_cli(COMPILE, str(ROOT / "model.py"), "--out", str(tmp_path / "p"), *args)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "p").exists()


def test_a_vocabulary_nested_too_deeply_is_one_line_and_status_2(tmp_path):
    (tmp_path / "encoder.json").write_text(DEEP_JSON)
    proc = run_cli(COMPILE, str(ROOT / "model.py"), "--out", str(tmp_path / "p"), "--tokenizer", "gpt2",
                   "--vocab", str(tmp_path / "encoder.json"))
    assert_user_error(proc, f"--vocab {tmp_path / 'encoder.json'}: not valid JSON (arrays or objects nested too deeply")
    assert not (tmp_path / "p").exists()


def test_a_vocabulary_without_every_byte_is_refused(tmp_path):
    symbols = {b: s for s, b in byte_symbols().items()}
    (tmp_path / "vocab.json").write_text(json.dumps({symbols[b]: i for i, b in enumerate(range(255))}))
    with pytest.raises(Exception, match="not every single byte"):
        BpeTokenizer.from_file(tmp_path)
