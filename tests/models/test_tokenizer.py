"""The BPE tokenizer against OpenAI's clip.simple_tokenizer (ids and padded rows as clip.tokenize)."""
import functools

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from tests.reference import clip_modules
from zipjax.models.tokenizer import get_tokenizer

TEXTS = ["", "a photo of a cat.", "A PHOTO of   the\tdog!!", "naïve café", "traffic light", "it's 3:45pm",
         "<|startoftext|>hello<|endoftext|>", "&amp; html &lt;b&gt;", "emoji 🍊🍊 orange", "日本語のテキスト",
         "hyphen-ated words, and... punctuation?", "x" * 200]


@functools.lru_cache(maxsize=1)
def _reference():
  return clip_modules()[1].SimpleTokenizer()


@pytest.fixture(scope="module")
def ref():
  return _reference()


def _ref_row(ref, text, length=77):
  ids = [ref.encoder["<|startoftext|>"]] + ref.encode(text) + [ref.encoder["<|endoftext|>"]]
  row = np.zeros(length, np.int32)
  row[:len(ids)] = ids
  return row


@pytest.mark.parametrize("text", TEXTS)
def test_encode_matches_reference(ref, text):
  assert get_tokenizer().encode(text) == ref.encode(text)


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=40))
def test_encode_random_text(text):
  assert get_tokenizer().encode(text) == _reference().encode(text)


def test_tokenize_rows(ref):
  texts = ["a photo of a cat.", "", "orange"]
  out = get_tokenizer().tokenize(texts)
  assert out.dtype == np.int32 and out.shape == (3, 77)
  for row, text in zip(out, texts):
    np.testing.assert_array_equal(row, _ref_row(ref, text))


def test_too_long_text():
  long = "word " * 100
  with pytest.raises(ValueError, match="more than the context length 77"):
    get_tokenizer().tokenize([long])
  row = get_tokenizer().tokenize([long], truncate=True)[0]
  assert row[-1] == get_tokenizer().eot_id and row[0] == get_tokenizer().sot_id
