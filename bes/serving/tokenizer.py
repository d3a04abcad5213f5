"""Text <-> token ids for the serving front end: a checkpoint's tokenizer, or a small real
byte-level BPE trained on text the repository ships.

A served model either comes from a checkpoint directory that holds its tokenizer
(`bes.models.checkpoint.load_tokenizer`: a transformers tokenizer, e.g. OPT's GPT-2 BPE) or
has random weights (the CPU demo, tests) and no tokenizer of its own. For the latter,
`trained_tokenizer(vocab_size)` trains a byte-level BPE with the `tokenizers` library on
`bes/data/tokenizer/corpus.txt` (the repository's own documentation prose; see
bes/data/PROVENANCE.md). Training is deterministic (same corpus and size, same merges, in
any process) and takes about 0.1 s for 2,048 tokens on one CPU core, so it is done at
startup (once per process and size, cached in memory) rather than stored.

Both are wrapped by `Tokenizer`, with OPT's conventions:
  - special tokens `<s>`=0, `<pad>`=1, `</s>`=2, `<unk>`=3 (the trained BPE; a checkpoint
    tokenizer brings its own), `</s>` being both BOS and EOS as in OPT;
  - `encode(text)` prepends the BOS id (2 for OPT and the trained BPE);
  - `decode(ids)` skips special tokens and ids outside the tokenizer's vocabulary (a
    random-weight model with a larger vocabulary can produce those), with no clean-up of
    spaces, so that streaming pieces concatenate to exactly `decode(ids)`;
  - `detokenizer()` returns a `Detokenizer` for streaming: one token in, the new text out,
    holding back text while it ends in an incomplete UTF-8 character.

`tokenizer_for(checkpoint_dir, vocab_size, model_vocab)` picks one for a served model and
checks that its vocabulary fits the model's embedding (`vocab_size <= model_vocab`).
"""
from __future__ import annotations

import functools
import os
import pathlib

CORPUS_PATH = pathlib.Path(__file__).resolve().parent.parent / "data" / "tokenizer" / "corpus.txt"
SPECIAL_TOKENS = ("<s>", "<pad>", "</s>", "<unk>")   # ids 0, 1, 2, 3 (OPT's)
BOS_TOKEN = EOS_TOKEN = "</s>"
DEFAULT_VOCAB_SIZE = 2048
MIN_VOCAB_SIZE = len(SPECIAL_TOKENS) + 256          # the specials and every byte
_REPLACEMENT = "\ufffd"


def _train_bpe(vocab_size: int, corpus: str):
  """A fresh byte-level BPE `tokenizers.Tokenizer` trained on `corpus` (a text file)."""
  from tokenizers import Tokenizer as RawTokenizer  # pylint: disable=g-import-not-at-top
  from tokenizers import decoders, models, pre_tokenizers, trainers
  tok = RawTokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                show_progress=False)
  tok.train([corpus], trainer)
  for i, name in enumerate(SPECIAL_TOKENS):
    assert tok.token_to_id(name) == i, (name, tok.token_to_id(name))
  return tok


@functools.lru_cache(maxsize=8)
def _trained_raw(vocab_size: int, corpus: str):
  return _train_bpe(vocab_size, corpus)


def trained_tokenizer(vocab_size: int = DEFAULT_VOCAB_SIZE,
                      corpus: str | os.PathLike = CORPUS_PATH) -> "Tokenizer":
  """The byte-level BPE of `vocab_size` tokens (at most: a corpus too small for that many
  merges gives fewer; `Tokenizer.vocab_size` is the real count) trained on `corpus`; cached
  per process. ValueError for a size below 260 (4 specials + 256 bytes) or a missing corpus."""
  if int(vocab_size) != vocab_size or vocab_size < MIN_VOCAB_SIZE:
    raise ValueError(f"tokenizer vocab_size: expected an integer >= {MIN_VOCAB_SIZE} "
                     f"(4 special tokens + 256 bytes), got {vocab_size!r}")
  corpus = os.fspath(corpus)
  if not os.path.isfile(corpus):
    raise ValueError(f"{corpus}: tokenizer corpus not found (is the bes package data installed?)")
  raw = _trained_raw(int(vocab_size), corpus)
  return Tokenizer(raw, source=f"bpe:{vocab_size}:{os.path.basename(corpus)}")


class Tokenizer:
  """A `tokenizers.Tokenizer` (the trained BPE) or a transformers tokenizer (a checkpoint's)
  behind one interface (module docstring for the conventions).

  Attributes:
    bos_token_id: prepended by `encode` (None: nothing is prepended).
    eos_token_id: the end-of-sequence id generation stops at.
    vocab_size: number of ids the tokenizer knows (special and added tokens included).
    source: where it comes from ('bpe:2048:corpus.txt' or the checkpoint directory).
  """

  def __init__(self, backend, source: str = ""):
    self._backend = backend
    self.source = source
    self._hf = not hasattr(backend, "get_vocab_size")   # transformers vs tokenizers
    if self._hf:
      self.vocab_size = len(backend)
      self.bos_token_id = backend.bos_token_id
      self.eos_token_id = backend.eos_token_id
    else:
      self.vocab_size = backend.get_vocab_size()
      self.bos_token_id = backend.token_to_id(BOS_TOKEN)
      self.eos_token_id = backend.token_to_id(EOS_TOKEN)

  def __repr__(self) -> str:
    return f"Tokenizer({self.source!r}, vocab_size={self.vocab_size})"

  def encode(self, text: str) -> list[int]:
    """Token ids of `text`, BOS first."""
    if self._hf:
      ids = self._backend.encode(text, add_special_tokens=False)
    else:
      ids = self._backend.encode(text, add_special_tokens=False).ids
    return ([] if self.bos_token_id is None else [self.bos_token_id]) + list(ids)

  def decode(self, ids) -> str:
    """Text of `ids`, special tokens and ids outside the vocabulary skipped."""
    ids = [int(i) for i in ids if 0 <= int(i) < self.vocab_size]
    if self._hf:
      return self._backend.decode(ids, skip_special_tokens=True,
                                  clean_up_tokenization_spaces=False)
    return self._backend.decode(ids, skip_special_tokens=True)

  def detokenizer(self) -> "Detokenizer":
    """A fresh incremental detokenizer (for one streamed completion)."""
    return Detokenizer(self)


class Detokenizer:
  """Streaming decode: `push(token_id)` returns the text the token adds ('' while the text
  ends in an incomplete UTF-8 character, which the next tokens complete); `flush()` at the
  end returns what is held back (as U+FFFD, like `decode`). The pieces of every `push` and
  the final `flush` concatenate to `tokenizer.decode(all ids)`.

  Decodes a window from the last emitted character boundary only (two decodes of a few
  tokens per push), so a long completion costs O(length), not O(length^2).
  """

  def __init__(self, tokenizer: Tokenizer):
    self._tok = tokenizer
    self._ids: list[int] = []
    self._prefix = 0   # window start: a character boundary
    self._read = 0     # ids before this are emitted

  def push(self, token_id: int) -> str:
    self._ids.append(int(token_id))
    return self._advance(final=False)

  def flush(self) -> str:
    return self._advance(final=True)

  def _advance(self, final: bool) -> str:
    done = self._tok.decode(self._ids[self._prefix:self._read])
    text = self._tok.decode(self._ids[self._prefix:])
    if len(text) <= len(done) and not final:
      return ""
    if text.endswith(_REPLACEMENT) and not final:
      return ""
    self._prefix, self._read = self._read, len(self._ids)
    return text[len(done):]


def tokenizer_for(checkpoint_dir: str | None, vocab_size: int = DEFAULT_VOCAB_SIZE,
                  model_vocab: int | None = None) -> Tokenizer:
  """The tokenizer of a served model: the one saved in `checkpoint_dir` when there is one
  (`bes.models.checkpoint.load_tokenizer`), else the trained BPE of `vocab_size` tokens.

  Raises ValueError (one line) when the tokenizer's vocabulary exceeds `model_vocab`, the
  model's embedding rows (ids the model could not take).
  """
  tok = None
  if checkpoint_dir:
    from bes.models import checkpoint  # pylint: disable=g-import-not-at-top  (imports jax)
    backend = checkpoint.load_tokenizer(checkpoint_dir)
    if backend is not None:
      tok = Tokenizer(backend, source=os.fspath(checkpoint_dir))
  if tok is None:
    if model_vocab is not None and vocab_size > model_vocab:
      raise ValueError(f"tokenizer vocab_size={vocab_size} exceeds the model's vocabulary "
                       f"of {model_vocab} tokens; expected vocab_size <= {model_vocab}")
    tok = trained_tokenizer(vocab_size)
  if model_vocab is not None and tok.vocab_size > model_vocab:
    raise ValueError(f"{tok.source}: tokenizer has {tok.vocab_size} tokens, more than the "
                     f"model's vocabulary of {model_vocab}")
  return tok
