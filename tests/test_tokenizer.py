"""bes.serving.tokenizer: the trained byte-level BPE, the checkpoint path, streaming."""
import os
import random
import subprocess
import sys

import pytest

from bes.serving import tokenizer as tokenizer_lib

TEXTS = ["Hello, world! The router picks a model per request.",
         "café naïve façade — Ünïcödé ñ", "emoji 👍🏽 and 🚀 and 家族 (family)",
         "  leading spaces\n\ttabs\nnew lines  ", ""]


@pytest.fixture(scope="module")
def tok():
  return tokenizer_lib.trained_tokenizer(2048)


def test_specials_and_size(tok):
  assert tok.vocab_size == 2048
  assert (tok.bos_token_id, tok.eos_token_id) == (2, 2)
  raw = tok._backend
  assert [raw.token_to_id(t) for t in ("<s>", "<pad>", "</s>", "<unk>")] == [0, 1, 2, 3]


@pytest.mark.parametrize("text", TEXTS)
def test_roundtrip(tok, text):
  ids = tok.encode(text)
  assert ids[0] == 2 and all(0 <= i < tok.vocab_size for i in ids)
  assert tok.decode(ids) == text


def test_merges_compress_prose(tok):
  text = "The router observes the load of every model and the arrival rate."
  assert len(tok.encode(text)) < len(text.encode()) / 2


def _stream(tok, ids):
  d = tok.detokenizer()
  pieces = [d.push(i) for i in ids]
  return pieces, d.flush()


@pytest.mark.parametrize("text", TEXTS)
def test_detokenizer_pieces_concatenate(tok, text):
  ids = tok.encode(text)
  pieces, rest = _stream(tok, ids)
  assert "".join(pieces) + rest == tok.decode(ids) == text
  assert rest == "" and not any("\ufffd" in p for p in pieces)


def test_detokenizer_holds_back_split_characters(tok):
  # An emoji is 4 bytes: with single-byte tokens its first 3 pushes yield nothing.
  byte_ids = [tok._backend.token_to_id(c) for c in "ðŁĳį"]   # byte-level symbols of 👍
  assert None not in byte_ids and tok.decode(byte_ids) == "👍"
  pieces, rest = _stream(tok, byte_ids)
  assert pieces == ["", "", "", "👍"] and rest == ""


def test_detokenizer_random_ids(tok):
  # Random ids (what a random-weight model emits): invalid UTF-8, specials, ids beyond the
  # vocabulary; the pieces still concatenate to decode(all).
  rng = random.Random(0)
  for _ in range(20):
    ids = [rng.randrange(0, 2300) for _ in range(rng.randrange(1, 40))]
    pieces, rest = _stream(tok, ids)
    assert "".join(pieces) + rest == tok.decode(ids)


def test_deterministic_across_processes(tok):
  code = ("from bes.serving import tokenizer as t; import hashlib; "
          "print(hashlib.sha256(t.trained_tokenizer(2048)._backend.to_str().encode()).hexdigest())")
  env = dict(os.environ, PYTHONHASHSEED="123")
  out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       check=True).stdout.strip()
  import hashlib
  assert out == hashlib.sha256(tok._backend.to_str().encode()).hexdigest()
  fresh = tokenizer_lib._train_bpe(2048, str(tokenizer_lib.CORPUS_PATH))
  assert fresh.to_str() == tok._backend.to_str()


def test_vocab_bounds():
  with pytest.raises(ValueError, match="exceeds the model's vocabulary of 1000"):
    tokenizer_lib.tokenizer_for(None, vocab_size=2048, model_vocab=1000)
  with pytest.raises(ValueError, match=">= 260"):
    tokenizer_lib.trained_tokenizer(100)
  assert tokenizer_lib.tokenizer_for(None, 512, model_vocab=512).vocab_size == 512


def test_corpus_is_package_data():
  assert tokenizer_lib.CORPUS_PATH.is_file()
  assert 20_000 < tokenizer_lib.CORPUS_PATH.stat().st_size < 250_000


def test_checkpoint_tokenizer(tmp_path, tok):
  from transformers import PreTrainedTokenizerFast
  hf = PreTrainedTokenizerFast(tokenizer_object=tok._backend, bos_token="</s>",
                               eos_token="</s>", pad_token="<pad>", unk_token="<unk>")
  hf.save_pretrained(tmp_path)
  loaded = tokenizer_lib.tokenizer_for(str(tmp_path), vocab_size=300, model_vocab=4096)
  assert loaded.source == str(tmp_path) and loaded._hf
  assert (loaded.vocab_size, loaded.bos_token_id, loaded.eos_token_id) == (2048, 2, 2)
  for text in TEXTS:
    assert loaded.encode(text) == tok.encode(text)
    assert loaded.decode(loaded.encode(text)) == text
    pieces, rest = _stream(loaded, loaded.encode(text))
    assert "".join(pieces) + rest == text
  with pytest.raises(ValueError, match="more than the model's vocabulary of 1024"):
    tokenizer_lib.tokenizer_for(str(tmp_path), vocab_size=300, model_vocab=1024)
  # A directory without a tokenizer falls back to the trained BPE.
  empty = tmp_path / "empty"
  empty.mkdir()
  assert tokenizer_lib.tokenizer_for(str(empty), 2048, 4096).source.startswith("bpe:2048")
