"""NumPy / torch + skimage reference of the released Zip discovery (zip_method.md sections 3-4).

Written from the specification, in the released code's style: Lloyd k-means with a per-cluster Python loop,
`collections.Counter.most_common` for the candidate clusters, `skimage.measure.label` per cluster, a
per-fragment loop over `regionprops`, and a final `label` + area filter. Used by tests/pipeline and by
bench/discover.py (the torch k-means is the baseline the JAX kernels are timed against).
"""
from __future__ import annotations

from collections import Counter

import numpy as np
from skimage import measure


def linspace_indices_torch(n: int, k: int) -> np.ndarray:
  """round(torch.linspace(0, n - 1, k)) made unique, as the released code computes its init rows."""
  import torch  # pylint: disable=g-import-not-at-top
  idx = torch.unique(torch.round(torch.linspace(0, n - 1, k)))
  return idx.to(torch.long).numpy()


def kmeans_numpy(x: np.ndarray, init_idx: np.ndarray, k: int, max_iters: int = 100, rtol: float = 1e-5,
                 atol: float = 1e-8, init: np.ndarray | None = None) -> tuple[np.ndarray, int]:
  """Lloyd loop in NumPy (float64 distances, float32 means) -> (labels 0..k-1 [N], iterations)."""
  x = np.asarray(x, np.float32)
  new = (x[init_idx] if init is None else np.asarray(init, np.float32)).copy()
  x64 = x.astype(np.float64)
  labels = np.zeros((x.shape[0],), np.int64)
  it = 0
  for it in range(1, max_iters + 1):
    c64 = new.astype(np.float64)
    d = (x64 ** 2).sum(1)[:, None] - 2 * x64 @ c64.T + (c64 ** 2).sum(1)[None, :]
    labels = np.argmin(d, axis=1)
    old = new.copy()
    for j in range(k):
      pts = x[labels == j]
      new[j] = pts.mean(axis=0) if len(pts) > 0 else old[j]
    if np.allclose(new, old, rtol=rtol, atol=atol):
      break
  return labels, it


def kmeans_torch(x, k: int = 20, max_iters: int = 100, rtol: float = 1e-5) -> tuple[np.ndarray, int]:
  """The released code's k-means, step for step in torch: linspace init, `torch.cdist`, per-cluster loop,
  `torch.allclose(new, old, rtol)` stop -> (labels 0..k-1 [N], iterations)."""
  import torch  # pylint: disable=g-import-not-at-top
  x = torch.as_tensor(x)
  n = x.shape[0]
  idx = torch.unique(torch.round(torch.linspace(0, n - 1, k))).to(torch.long)
  new = x[idx].clone()
  labels = None
  it = 0
  with torch.no_grad():
    for it in range(1, max_iters + 1):
      labels = torch.argmin(torch.cdist(x, new, p=2), dim=1)
      old = new.clone()
      for j in range(k):
        pts = x[labels == j]
        new[j] = pts.mean(dim=0) if len(pts) > 0 else old[j]
      if torch.allclose(new, old, rtol=rtol):
        break
  return labels.numpy(), it


def select_and_build(cluster_ids: np.ndarray, act: np.ndarray, top_k: int = 20,
                     count_background_in_top_k: bool = True, min_activated_fraction: float = 0.3,
                     max_bbox_ratio: float = 3.0, min_instance_cells: int = 100,
                     connectivity: int = 1) -> np.ndarray:
  """Fragments -> instances from cluster ids 1..K [h, w] and bool activation [h, w].

  Returns:
    int label map [h, w]: 0 background, 1..n instances (>= min_instance_cells cells) in raster order of their
    first cell.
  """
  act = np.asarray(act, bool)
  masked = cluster_ids * act
  counter = Counter(masked.flatten().tolist())
  if not count_background_in_top_k:
    counter.pop(0, None)
  union = np.zeros(cluster_ids.shape, np.float64)
  for value, _ in counter.most_common(top_k):
    if value == 0:
      continue
    specific = np.float64(cluster_ids == value)
    frag_labels = measure.label(specific, connectivity=connectivity, background=0)
    for prop in measure.regionprops(frag_labels):
      frag = np.float64(frag_labels == prop.label)
      gain = np.sum(frag * act) / np.sum(frag)
      r0, c0, r1, c1 = prop.bbox
      loss = (r1 - r0) * (c1 - c0) / prop.area
      if gain > min_activated_fraction and loss < max_bbox_ratio:
        union = union + frag
  labels = measure.label(union != 0, connectivity=connectivity, background=0)
  out = np.zeros(labels.shape, np.int32)
  n = 0
  for prop in measure.regionprops(labels):  # ordered by label = raster order of the first cell
    if prop.area < min_instance_cells:
      continue
    n += 1
    out[labels == prop.label] = n
  return out


def discover_reference(features: np.ndarray, act: np.ndarray, k: int = 20, max_iters: int = 100,
                       rtol: float = 1e-5, atol: float = 1e-8, backend: str = "numpy",
                       **select_kwargs) -> tuple[np.ndarray, np.ndarray]:
  """The released algorithm for one image and class -> (instance labels [h, w], cluster ids 1..K [h, w])."""
  h, w, c = features.shape
  x = np.asarray(features, np.float32).reshape(h * w, c)  # [h*w, C]
  if backend == "torch":
    labels, _ = kmeans_torch(x, k, max_iters, rtol)
  else:
    labels, _ = kmeans_numpy(x, linspace_indices_torch(h * w, k), k, max_iters, rtol, atol)
  ids = labels.reshape(h, w) + 1
  return select_and_build(ids, act, **select_kwargs), ids


def synthetic_scene(rng: np.random.Generator, h: int = 48, w: int = 64, c: int = 16, n_objects: int = 4,
                    touching: bool = True, noise: float = 0.02, activation: str = "planted",
                    dtype=np.float32) -> tuple[np.ndarray, np.ndarray]:
  """Boundary features with planted instances, and a class activation.

  Scene: two or three background segments; `n_objects` rectangles of the target class (the first two touch
  along an edge when `touching`) and one object of another class; a boundary band (one cell wide, its own
  prototype) along every object's outline, which is what separates touching instances; `noise` = fraction of
  cells replaced by one of three noise prototypes. Features are integer-valued (exact float32 sums) and each
  group of cells shares one vector, so k-means is free of argmin near-ties.

  activation: 'planted' (target objects, outlines included), 'loose' (planted, grown by 2 cells, 5% random
  flips), 'empty', 'full'.

  Returns:
    (features dtype [h, w, c], activation bool [h, w]).
  """
  protos = rng.integers(-40, 41, (8, c))  # 0-2 background, 3 boundary, 4 target class, 5 other class, 6-7 noise
  region = np.zeros((h, w), np.int64)
  if rng.random() < 0.5:
    region[h // 2:] = 1
  else:
    region[:, w // 3:] = 1
    region[:, 2 * w // 3:] = 2
  feat = protos[region].copy()
  objects = np.zeros((h, w), np.int64)  # 0 none, 1.. object index
  target = []
  for i in range(n_objects + 1):
    oh, ow = int(rng.integers(9, 17)), int(rng.integers(9, 17))
    if i == 1 and touching:  # share the right edge of object 1
      r0, c0 = prev[0] + int(rng.integers(-3, 4)), prev[3]
    else:
      r0, c0 = int(rng.integers(0, h - oh)), int(rng.integers(0, w - ow))
    r0 = int(np.clip(r0, 0, h - oh))
    c0 = int(np.clip(c0, 0, w - ow))
    prev = (r0, c0, r0 + oh, c0 + ow)
    objects[r0:r0 + oh, c0:c0 + ow] = i + 1
    cls = 5 if i == n_objects else 4
    offset = np.zeros(c, np.int64)
    offset[rng.choice(c, 3, replace=False)] = rng.integers(-6, 7, 3)  # per-object variation
    feat[objects == i + 1] = protos[cls] + offset
    if cls == 4:
      target.append(i + 1)
  # boundary band: object cells with a 4-neighbour in another object or outside
  pad = np.pad(objects, 1, constant_values=-1)
  edge = np.zeros((h, w), bool)
  for dr, dc in ((-1, 0), (1, 0), (0, -1), (0, 1)):
    edge |= pad[1 + dr:1 + dr + h, 1 + dc:1 + dc + w] != objects
  edge &= objects > 0
  feat[edge] = protos[3]
  noisy = rng.random((h, w)) < noise
  feat[noisy] = protos[6 + rng.integers(0, 2, (h, w))][noisy]
  act = np.isin(objects, target)
  if activation == "loose":
    from scipy import ndimage  # pylint: disable=g-import-not-at-top
    act = ndimage.binary_dilation(act, iterations=2) ^ (rng.random((h, w)) < 0.05)
  elif activation == "empty":
    act = np.zeros((h, w), bool)
  elif activation == "full":
    act = np.ones((h, w), bool)
  return feat.astype(dtype), act
