"""Semantic clues (zip_method.md section 1): prompt-ensemble text features, CLIP Surgery similarity maps and
image-level class scores.

- Text features: per class, the prompts of every template are encoded, each L2-normalised, averaged and
  L2-normalised again; the redundant features r are the same ensemble for the empty string "". The same
  ensemble gives the detector's class queries (`text_queries`).
- Similarity: F = token features L2-normalised over the token axis (`feature_norm='tokens'`, the released
  code's `norm(dim=1)` quirk) or over channels (`'channels'`); S = F (T - r)^T [B, 1 + N, n]; the CLS row is
  dropped, each class is min-max normalised over the tokens (a constant map becomes 0), reshaped to the token
  grid and resized bilinearly (torch align_corners=False) to the image size.
- Class scores: softmax over the class set of `logit_scale * cos(CLS, T)`; the CLS token of the surgery
  output is the original path's, i.e. OpenAI's `encode_image`.
"""
from __future__ import annotations

import functools
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from zipjax.errors import InputError
from zipjax.io.text_cache import prompt_templates
from zipjax.models.tokenizer import get_tokenizer

HIGHEST = jax.lax.Precision.HIGHEST


def prompts(name: str, templates: Sequence[str]) -> list[str]:
  """The prompts of one class name."""
  return [t.format(name) for t in templates]


class PromptTruncationWarning(UserWarning):
  """A class name's prompts are longer than the text encoder's context; it sees them cut off."""


def truncated_prompts(tokenizer, names: Sequence[str], templates: Sequence[str]) -> dict[str, tuple[int, int]]:
  """`{name: (prompts truncated, longest prompt in tokens)}` for the names whose prompts (with the start and
  end tokens) exceed `tokenizer.context_length` (77 for CLIP); other names are left out.

  Exact per prompt, but only for names that can be too long: a name is checked prompt by prompt only when its
  own token count plus the longest template's (+ a margin of 4 for merges at the boundary) reaches the
  context, so the usual short names cost one `encode` each.
  """
  ctx = tokenizer.context_length
  overhead = max(len(tokenizer.encode(t.format(""))) for t in templates)
  out = {}
  for name in dict.fromkeys(names):
    if len(tokenizer.encode(name)) + overhead + 2 + 4 <= ctx:
      continue
    counts = [len(tokenizer.encode(t.format(name))) + 2 for t in templates]
    over = sum(c > ctx for c in counts)
    if over:
      out[name] = (over, max(counts))
  return out


def ensemble_text_features(encode_tokens: Callable[[np.ndarray], jax.Array], tokenize: Callable,
                           names: Sequence[str], templates: Sequence[str], batch_size: int = 256) -> np.ndarray:
  """Prompt-ensemble text features of `names` -> float32 [n, D], each row unit-norm.

  Args:
    encode_tokens: int32 [b, context] -> [b, D] (unnormalised, as OpenAI's encode_text); called with a fixed
      batch size (the last chunk is padded) so it compiles once.
    tokenize: list[str] -> int [b, context].
    names: class names ("" gives the redundant features).
    templates: prompt templates with one `{}`.
    batch_size: prompts per call.
  """
  texts = [p for n in names for p in prompts(n, templates)]
  tokens = np.asarray(tokenize(texts), np.int32)  # [n * T, context]
  out = []
  for s in range(0, len(texts), batch_size):
    chunk = tokens[s:s + batch_size]
    b = chunk.shape[0]
    if b < batch_size and len(texts) > batch_size:
      chunk = np.concatenate([chunk, np.repeat(chunk[:1], batch_size - b, 0)], 0)  # [batch_size, context]
    out.append(np.asarray(encode_tokens(chunk))[:b])
  feats = np.concatenate(out, 0).astype(np.float32)  # [n * T, D]
  return _ensemble(jnp.asarray(feats).reshape(len(names), len(templates), -1))  # [n, T, D]


@jax.jit
def _ensemble(feats: jax.Array) -> np.ndarray:
  f = feats / jnp.linalg.norm(feats, axis=-1, keepdims=True)  # [n, T, D]
  m = jnp.mean(f, axis=1)  # [n, D]
  return m / jnp.linalg.norm(m, axis=-1, keepdims=True)


@functools.partial(jax.jit, static_argnames=("feature_norm", "grid"))
def surgery_similarity(tokens: jax.Array, text: jax.Array, redundant: jax.Array, *, feature_norm: str,
                       grid: tuple[int, int]) -> jax.Array:
  """Min-max normalised similarity on the token grid.

  Args:
    tokens: float32 [B, 1 + N, D] CLIP Surgery token features (unnormalised).
    text: float32 [n, D] class text features (unit norm).
    redundant: float32 [D] redundant features r.
    feature_norm: 'tokens' (released quirk) or 'channels'.
    grid: (gh, gw) with gh * gw = N.

  Returns:
    float32 [B, gh, gw, n] in [0, 1].
  """
  axis = 1 if feature_norm == "tokens" else -1
  f = tokens / jnp.linalg.norm(tokens, axis=axis, keepdims=True)  # [B, 1 + N, D]
  s = jnp.einsum("bnd,cd->bnc", f, text - redundant[None, :], precision=HIGHEST)  # [B, 1 + N, n]
  s = s[:, 1:]  # [B, N, n]
  lo = jnp.min(s, axis=1, keepdims=True)
  hi = jnp.max(s, axis=1, keepdims=True)
  span = hi - lo
  s = jnp.where(span > 0, (s - lo) / jnp.where(span > 0, span, 1.0), 0.0)
  return s.reshape(s.shape[0], grid[0], grid[1], s.shape[-1])  # [B, gh, gw, n]


@jax.jit
def class_scores(cls_features: jax.Array, text: jax.Array, logit_scale: float | jax.Array) -> jax.Array:
  """Image-level class probabilities: softmax over classes of logit_scale * cos -> float32 [B, n].

  Args:
    cls_features: float32 [B, D] projected CLS features (unnormalised).
    text: float32 [n, D] unit-norm class features.
    logit_scale: the softmax temperature's inverse (CLIP: 100).
  """
  c = cls_features / jnp.linalg.norm(cls_features, axis=-1, keepdims=True)  # [B, D]
  return jax.nn.softmax(logit_scale * jnp.einsum("bd,nd->bn", c, text, precision=HIGHEST), axis=-1)


def text_queries(clip_model, names: Sequence[str], templates: Sequence[str] | None = None,
                 batch_size: int = 256) -> np.ndarray:
  """Prompt-ensemble CLIP text embeddings of class names (the detector's class queries) -> float32
  [len(names), D], unit norm, from the text tower of `clip_model` (a zipjax.clip.ClipModel); `templates`
  default to the 85 packaged ones (['{}']: the bare names)."""
  names = list(names)
  if not names or any(not isinstance(n, str) or not n.strip() for n in names):
    raise InputError(f"text_queries: class names must be non-empty strings, got {names!r}")
  templates = list(templates) if templates is not None else prompt_templates()
  tok = get_tokenizer(clip_model.config.context_length)
  feats = ensemble_text_features(clip_model.encode_tokens, lambda t: tok.tokenize(t, truncate=True), names,
                                 templates, batch_size)
  return np.asarray(feats, np.float32)


__all__ = ["prompts", "ensemble_text_features", "text_queries", "surgery_similarity", "class_scores"]
