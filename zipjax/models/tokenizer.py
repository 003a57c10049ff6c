"""CLIP's byte-level BPE tokenizer (lower-cased, whitespace-cleaned), with its vocabulary as package data.

Produces the same ids as OpenAI's `clip.simple_tokenizer.SimpleTokenizer` and `clip.tokenize`:
[<|startoftext|>] + BPE ids + [<|endoftext|>], zero-padded to the context length.
"""
from __future__ import annotations

import functools
import gzip
import html
import importlib.resources

import ftfy
import numpy as np
import regex

VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"
SOT, EOT = "<|startoftext|>", "<|endoftext|>"
_NUM_MERGES = 49152 - 256 - 2
_TOKEN_RE = regex.compile(
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
    regex.IGNORECASE)


@functools.lru_cache(maxsize=1)
def _byte_alphabet() -> dict[int, str]:
  """Reversible byte -> printable unicode character map (GPT-2 / CLIP byte-level BPE)."""
  printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
               + list(range(ord("®"), ord("ÿ") + 1)))
  table = {b: chr(b) for b in printable}
  extra = 0
  for b in range(256):
    if b not in table:
      table[b] = chr(256 + extra)
      extra += 1
  return table


def _clean(text: str) -> str:
  text = ftfy.fix_text(text)
  text = html.unescape(html.unescape(text)).strip()
  return regex.sub(r"\s+", " ", text).strip().lower()


class Tokenizer:
  """CLIP BPE tokenizer.

  Attributes:
    encoder: token string -> id.
    context_length: padded length of `tokenize`'s rows.
  """

  def __init__(self, vocab_path: str | None = None, context_length: int = 77):
    if vocab_path is None:
      data = importlib.resources.files("zipjax").joinpath("assets", VOCAB_FILE).read_bytes()
    else:
      with open(vocab_path, "rb") as f:
        data = f.read()
    lines = gzip.decompress(data).decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1:_NUM_MERGES + 1]]
    alphabet = list(_byte_alphabet().values())
    vocab = alphabet + [c + "</w>" for c in alphabet] + ["".join(m) for m in merges] + [SOT, EOT]
    self.encoder = {tok: i for i, tok in enumerate(vocab)}
    self._ranks = {m: i for i, m in enumerate(merges)}
    self._cache = {SOT: SOT, EOT: EOT}
    self.context_length = context_length
    self.sot_id, self.eot_id = self.encoder[SOT], self.encoder[EOT]

  def _bpe(self, word: str) -> str:
    """Merges the characters of one pre-token greedily by merge rank -> space-separated BPE tokens."""
    if word in self._cache:
      return self._cache[word]
    parts = list(word[:-1]) + [word[-1] + "</w>"]
    while len(parts) > 1:
      pairs = {(parts[i], parts[i + 1]) for i in range(len(parts) - 1)}
      best = min(pairs, key=lambda p: self._ranks.get(p, float("inf")))
      if best not in self._ranks:
        break
      merged, i = [], 0
      while i < len(parts):
        if i < len(parts) - 1 and (parts[i], parts[i + 1]) == best:
          merged.append(parts[i] + parts[i + 1])
          i += 2
        else:
          merged.append(parts[i])
          i += 1
      parts = merged
    out = " ".join(parts)
    self._cache[word] = out
    return out

  def encode(self, text: str) -> list[int]:
    """Text -> BPE ids (no start/end tokens)."""
    alphabet = _byte_alphabet()
    ids = []
    for token in _TOKEN_RE.findall(_clean(text)):
      token = "".join(alphabet[b] for b in token.encode("utf-8"))
      ids.extend(self.encoder[t] for t in self._bpe(token).split(" "))
    return ids

  def tokenize(self, texts, truncate: bool = False) -> np.ndarray:
    """list of strings -> int32 [N, context_length], as `clip.tokenize`.

    Raises ValueError naming the text if it is too long (unless `truncate`, which keeps EOT last).
    """
    if isinstance(texts, str):
      texts = [texts]
    out = np.zeros((len(texts), self.context_length), np.int32)
    for i, text in enumerate(texts):
      ids = [self.sot_id] + self.encode(text) + [self.eot_id]
      if len(ids) > self.context_length:
        if not truncate:
          raise ValueError(f"text {text[:60]!r} has {len(ids)} tokens, more than the context length "
                           f"{self.context_length}")
        ids = ids[:self.context_length]
        ids[-1] = self.eot_id
      out[i, :len(ids)] = ids
    return out


@functools.lru_cache(maxsize=4)
def get_tokenizer(context_length: int = 77) -> Tokenizer:
  return Tokenizer(context_length=context_length)
