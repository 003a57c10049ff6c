"""zipjax.io.text_cache: names cost their own bytes, stores append (never rewrite), torn tails are ignored and
cut off, concurrent writers do not lose or duplicate names; prompt truncation is detected exactly."""
import multiprocessing
import os

import numpy as np

from zipjax.io.text_cache import MAGIC, TextFeatureCache, encode_record, parse_records, prompt_templates
from zipjax.models.tokenizer import get_tokenizer
from zipjax.pipeline.semantic import truncated_prompts

D = 512


def _feat(i):
  return np.random.default_rng(i).standard_normal(D).astype(np.float32)


def test_round_trip_and_size_follows_the_names(tmp_path):
  """A 10,000-character name costs ~10 KB (before: a fixed-width column made the file 80 MB)."""
  cache = TextFeatureCache("model", ["{}"], directory=str(tmp_path))
  names = ["", "orange", "Äpfel 🍎", "x" * 10_000] + [f"class {i}" for i in range(196)]
  feats = {n: _feat(i) for i, n in enumerate(names)}
  assert cache.store(feats) == len(names)
  want = len(MAGIC) + sum(12 + len(n.encode("utf-8")) + 4 * D for n in names)
  assert os.path.getsize(cache.path) == want < 0.5e6
  got = cache.load()
  assert list(got) == names
  for n in names:
    np.testing.assert_array_equal(got[n], feats[n])


def test_store_appends_without_rewriting(tmp_path):
  cache = TextFeatureCache("model", ["a {}"], directory=str(tmp_path))
  cache.store({"cat": _feat(0), "dog": _feat(1)})
  before = open(cache.path, "rb").read()
  inode = os.stat(cache.path).st_ino
  assert cache.store({"cat": _feat(0), "dog": _feat(1), "bird": _feat(2)}) == 1  # only the new name
  after = open(cache.path, "rb").read()
  assert os.stat(cache.path).st_ino == inode  # the same file, not a replacement
  assert after[:len(before)] == before and after[len(before):] == encode_record("bird", _feat(2))
  assert cache.store({"cat": _feat(0)}) == 0 and open(cache.path, "rb").read() == after


def test_torn_tail_is_ignored_then_cut_off(tmp_path):
  cache = TextFeatureCache("model", ["{}"], directory=str(tmp_path))
  cache.store({"a": _feat(0), "b": _feat(1)})
  full = open(cache.path, "rb").read()
  with open(cache.path, "wb") as f:  # a kill in the middle of the second record
    f.write(full[:-100])
  assert list(cache.load()) == ["a"]
  corrupt = bytearray(full)
  corrupt[-5] ^= 0xFF  # a flipped byte in the last record's features: its CRC fails
  with open(cache.path, "wb") as f:
    f.write(bytes(corrupt))
  assert list(cache.load()) == ["a"]
  assert cache.store({"b": _feat(1), "c": _feat(2)}) == 2
  got = cache.load()
  assert list(got) == ["a", "b", "c"] and parse_records(open(cache.path, "rb").read())[1] == os.path.getsize(
      cache.path)
  np.testing.assert_array_equal(got["b"], _feat(1))


def test_foreign_or_unreadable_file_counts_as_empty(tmp_path):
  cache = TextFeatureCache("model", ["{}"], directory=str(tmp_path))
  with open(cache.path, "wb") as f:
    f.write(b"PK\x03\x04 an old npz or anything else")
  assert cache.load() == {}
  cache.store({"a": _feat(0)})
  assert list(cache.load()) == ["a"]


def _writer(args):
  directory, k = args
  cache = TextFeatureCache("model", ["{}"], directory=directory)
  for i in range(40):
    cache.store({f"shared {i}": _feat(i), f"own {k} {i}": _feat(1000 * k + i)})


def test_concurrent_writers_lose_nothing_and_add_nothing_twice(tmp_path):
  with multiprocessing.get_context("fork").Pool(3) as pool:
    pool.map(_writer, [(str(tmp_path), k) for k in range(3)])
  cache = TextFeatureCache("model", ["{}"], directory=str(tmp_path))
  buf = open(cache.path, "rb").read()
  got, valid = parse_records(buf)
  assert valid == len(buf)
  want = {f"shared {i}" for i in range(40)} | {f"own {k} {i}" for k in range(3) for i in range(40)}
  assert set(got) == want and len(buf) == len(MAGIC) + sum(12 + len(n) + 4 * D for n in want)
  np.testing.assert_array_equal(got["own 2 7"], _feat(2007))


def test_truncated_prompts_match_brute_force():
  tok = get_tokenizer(77)
  templates = prompt_templates()
  names = ["orange", "traffic light", "word " * 80, "x" * 300, "a b " * 28, "🍊" * 30] + \
      [" ".join(["token"] * k) for k in range(50, 72, 3)]
  got = truncated_prompts(tok, names, templates)
  for name in names:
    counts = [len(tok.encode(t.format(name))) + 2 for t in templates]
    over = sum(c > 77 for c in counts)
    assert got.get(name) == ((over, max(counts)) if over else None), name
  assert "orange" not in got and "word " * 80 in got and len(got) >= 4
