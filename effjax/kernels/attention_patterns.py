"""Attention patterns (which keys a query may see) and the tile plans that make kernels block-sparse.

Every pattern is one rule on integer token coordinates c_q(i), c_k(j):

    query i may attend to key j  <=>  lo <= c_k(j) - c_q(i) <= hi

| pattern                 | c_q(i), c_k(j)          | lo, hi          | meaning                                  |
|-------------------------|-------------------------|-----------------|------------------------------------------|
| full()                  | 0, 0                    | 0, 0            | everything                               |
| causal()                | i, j                    | -inf, 0         | j <= i (top-left aligned when Lq != Lk)  |
| local(left, right)      | i, j                    | -left, right    | sliding window i-left <= j <= i+right     |
| dilated(stride)         | i mod s, j mod s        | 0, 0            | dilated groups {g·s + r} (D-Former GS-MSA)|
| grouped(q_size, k_size) | i // q_size, j // k_size| 0, 0            | FIT groups: q group t sees k group t     |
| chunk_causal(chunk)     | i // c, j // c          | -inf, 0         | same or earlier chunk                    |
| grid_local(grid, w)     | window id of the token  | 0, 0            | non-overlapping windows of an n-D grid   |
| grid_dilated(grid, s)   | ravel(index mod s)      | 0, 0            | dilated groups of an n-D grid            |

`local(w, 0)` is causal sliding-window attention; `grouped(w)` is non-overlapping windows (D-Former LS-MSA
in 1D). The grid patterns take tokens in row-major order over `grid` (L = prod(grid)); windows and groups
at the edges of a grid that is not divisible are simply smaller (no padding needed): D-Former's LS-MSA and
GS-MSA over images and volumes (models/dformer.py); `groups` lists equal groups for the XLA path. Kernels
only ever evaluate the comparison above on precomputed coordinates, so they need no integer division, and a
token permutation (sorting by coordinate) turns the dilated pattern into a block diagonal one. `tile_plan` lists the
(q-block, k-block) tiles holding at least one visible pair; kernels run their grid over that list only.
"""
import dataclasses
import functools

import numpy as np

UNBOUNDED = 1 << 29          # |lo|, |hi| stand-in for "no bound"; coordinates stay far below it
PAD_Q = -(3 << 28)           # coordinate of a padded query: c_k - c_q > hi for every key
PAD_K = 3 << 28              # coordinate of a padded key: c_k - c_q > hi for every query (no int32 overflow)
KINDS = ("full", "causal", "local", "dilated", "grouped", "chunk_causal", "grid_local", "grid_dilated")

# Tile flags in the plans.
FIRST, LAST, MASKED = 1, 2, 4


@dataclasses.dataclass(frozen=True)
class Pattern:
  """A static attention pattern; build it with the factory functions below."""
  kind: str = "full"
  left: int = 0
  right: int = 0
  size: int = 1
  k_size: int = 1
  grid: tuple[int, ...] = ()
  shape: tuple[int, ...] = ()

  def coords(self, n: int, side: str) -> np.ndarray:
    """Integer coordinates [n] of the queries (side="q") or keys (side="k")."""
    i = np.arange(n, dtype=np.int64)
    if self.kind in ("grid_local", "grid_dilated"):
      if n != int(np.prod(self.grid)):
        raise ValueError(f"{self.kind} pattern over grid {self.grid} needs {int(np.prod(self.grid))} tokens, got {n}")
      idx = np.unravel_index(i, self.grid)
      if self.kind == "grid_local":
        parts = [x // w for x, w in zip(idx, self.shape)]
        dims = [-(-g // w) for g, w in zip(self.grid, self.shape)]
      else:
        parts, dims = [x % s for x, s in zip(idx, self.shape)], list(self.shape)
      return np.ravel_multi_index(parts, dims).astype(np.int64)
    if self.kind == "full":
      return np.zeros(n, np.int64)
    if self.kind in ("causal", "local"):
      return i
    if self.kind == "dilated":
      return i % self.size
    if self.kind == "grouped":
      return i // (self.size if side == "q" else self.k_size)
    return i // self.size  # chunk_causal

  def bounds(self) -> tuple[int, int]:
    """(lo, hi) of the allowed coordinate difference c_k - c_q."""
    if self.kind in ("causal", "chunk_causal"):
      return -UNBOUNDED, 0
    if self.kind == "local":
      return -self.left, self.right
    return 0, 0

  def mask(self, lq: int, lk: int) -> np.ndarray:
    """Dense bool mask [lq, lk] (True = may attend); for references and tests."""
    lo, hi = self.bounds()
    d = self.coords(lk, "k")[None, :] - self.coords(lq, "q")[:, None]
    return (d >= lo) & (d <= hi)


def full():
  return Pattern("full")


def causal():
  return Pattern("causal")


def local(left: int, right: int | None = None):
  """Sliding window: query i sees keys i-left .. i+right (right defaults to left)."""
  right = left if right is None else right
  if left < 0 or right < 0:
    raise ValueError(f"local window sizes must be >= 0, got left={left}, right={right}")
  return Pattern("local", left=left, right=right)


def dilated(stride: int):
  """Dilated groups: query i sees keys j with j ≡ i (mod stride)."""
  if stride < 1:
    raise ValueError(f"dilation stride must be >= 1, got {stride}")
  return Pattern("dilated", size=stride)


def grouped(q_size: int, k_size: int | None = None):
  """FIT-style groups: query group i // q_size sees key group j // k_size (k_size defaults to q_size)."""
  k_size = q_size if k_size is None else k_size
  if q_size < 1 or k_size < 1:
    raise ValueError(f"group sizes must be >= 1, got q_size={q_size}, k_size={k_size}")
  return Pattern("grouped", size=q_size, k_size=k_size)


def chunk_causal(chunk: int):
  """Chunk-causal: query i sees keys of its own and earlier chunks of `chunk` tokens."""
  if chunk < 1:
    raise ValueError(f"chunk size must be >= 1, got {chunk}")
  return Pattern("chunk_causal", size=chunk)


def _grid_args(grid, shape, what):
  grid, shape = tuple(int(g) for g in grid), tuple(int(s) for s in shape)
  if len(grid) != len(shape) or not grid or min(grid + shape) < 1:
    raise ValueError(f"{what} needs positive grid and shape of one rank, got grid {grid}, shape {shape}")
  return grid, shape


def grid_local(grid, window):
  """Non-overlapping windows of shape `window` over a row-major token grid `grid` (any rank)."""
  grid, window = _grid_args(grid, window, "grid_local")
  return Pattern("grid_local", grid=grid, shape=window)


def grid_dilated(grid, stride):
  """Dilated groups over a row-major token grid: tokens attend when their indices agree mod `stride`
  on every axis (D-Former GS-MSA with stride = grid / members)."""
  grid, stride = _grid_args(grid, stride, "grid_dilated")
  return Pattern("grid_dilated", grid=grid, shape=stride)


CLASSES = {"full": "full", "causal": "causal", "local": "local", "chunk_causal": "local", "dilated": "grouped",
           "grouped": "grouped", "grid_local": "grouped", "grid_dilated": "grouped"}


def pattern_class(pattern: Pattern) -> str:
  """The validation record's pattern class: "full", "causal", "local" (bands: sliding windows, chunk-causal) or
  "grouped" (equal-coordinate groups: dilated, FIT groups, grid windows and dilated groups)."""
  return CLASSES[pattern.kind]


def as_pattern(pattern) -> Pattern:
  """None -> full(); "full"/"causal" -> that pattern; a Pattern passes through."""
  if pattern is None:
    return full()
  if isinstance(pattern, Pattern):
    return pattern
  if pattern in ("full", "causal"):
    return Pattern(pattern)
  raise ValueError(f"attention pattern {pattern!r} is not a Pattern, 'full' or 'causal'; build others with "
                   "effjax.kernels.attention_patterns.local/dilated/grouped/chunk_causal/grid_local/grid_dilated")


@functools.lru_cache(maxsize=128)
def groups(pattern: Pattern, lq: int, lk: int):
  """(q_order [Lq], k_order [Lk], G) when `pattern` splits the queries and the keys into G groups of equal
  sizes, query group g seeing exactly key group g (dilated, grouped and grid patterns on divisible sizes);
  None otherwise. Gathering by the orders and reshaping gives [G, Lq / G] x [G, Lk / G] dense blocks."""
  if pattern.kind == "full" or pattern.bounds() != (0, 0):
    return None
  qc, kc = pattern.coords(lq, "q"), pattern.coords(lk, "k")
  (qv, qn), (kv, kn) = np.unique(qc, return_counts=True), np.unique(kc, return_counts=True)
  if not (np.array_equal(qv, kv) and np.all(qn == qn[0]) and np.all(kn == kn[0])):
    return None
  return np.argsort(qc, kind="stable"), np.argsort(kc, kind="stable"), len(qv)


@dataclasses.dataclass(frozen=True)
class TilePlan:
  """Everything static a block-sparse kernel needs, for one pattern and padded problem size.

  q_perm/k_perm: token order used inside the kernel (None = identity); q_coord [Lq_pad], k_coord [Lk_pad]:
  coordinates in that order (padding gets PAD_Q / PAD_K); nonempty/dense [nq, nk] bool tile maps;
  q_major/k_major: int32 [3, P] rows (q block, k block, flags) listing the tiles in q-major / k-major
  order; flags mark the FIRST/LAST tile of each q (resp. k) block and tiles that need the MASKED path.
  Blocks with no visible pair still get one MASKED tile so that their outputs are written (as zeros).
  """
  block_q: int
  block_k: int
  lq_pad: int
  lk_pad: int
  q_perm: np.ndarray | None
  k_perm: np.ndarray | None
  q_coord: np.ndarray
  k_coord: np.ndarray
  nonempty: np.ndarray
  dense: np.ndarray
  q_major: np.ndarray
  k_major: np.ndarray

  @property
  def num_visited(self) -> int:
    return self.q_major.shape[1]


def _order(c):
  """Stable sort permutation of coordinates, or None when they are already sorted."""
  if np.all(c[1:] >= c[:-1]):
    return None
  return np.argsort(c, kind="stable")


def _pairs(nonempty, dense, major_axis):
  """Tile list in major-axis order with FIRST/LAST/MASKED flags."""
  tiles = nonempty if major_axis == 0 else nonempty.T
  full = dense if major_axis == 0 else dense.T
  rows = []
  for a in range(tiles.shape[0]):
    minors = np.flatnonzero(tiles[a])
    masked = ~full[a, minors]
    if minors.size == 0:  # no visible pair: one masked visit writes zeros
      minors, masked = np.array([0]), np.array([True])
    for t, (b, m) in enumerate(zip(minors, masked)):
      flag = (FIRST if t == 0 else 0) | (LAST if t == minors.size - 1 else 0) | (MASKED if m else 0)
      rows.append((a, b, flag) if major_axis == 0 else (b, a, flag))
  return np.asarray(rows, np.int32).T.copy()


@functools.lru_cache(maxsize=128)
def tile_plan(pattern: Pattern, lq: int, lk: int, block_q: int, block_k: int) -> TilePlan:
  """Computes the block-sparse tile plan of `pattern` on an lq x lk problem (numpy, cached)."""
  qc, kc = pattern.coords(lq, "q"), pattern.coords(lk, "k")
  q_perm, k_perm = _order(qc), _order(kc)
  if q_perm is not None:
    qc = qc[q_perm]
  if k_perm is not None:
    kc = kc[k_perm]
  nq, nk = -(-lq // block_q), -(-lk // block_k)
  qc = np.concatenate([qc, np.full(nq * block_q - lq, PAD_Q)])
  kc = np.concatenate([kc, np.full(nk * block_k - lk, PAD_K)])
  lo, hi = pattern.bounds()
  nonempty = np.zeros((nq, nk), bool)
  dense = np.zeros((nq, nk), bool)
  for i in range(nq):  # one q block at a time keeps memory at block_q x lk
    d = kc[None, :] - qc[i * block_q:(i + 1) * block_q, None]
    visible = ((d >= lo) & (d <= hi)).reshape(block_q, nk, block_k)
    nonempty[i] = visible.any(axis=(0, 2))
    dense[i] = visible.all(axis=(0, 2))
  return TilePlan(block_q, block_k, nq * block_q, nk * block_k, q_perm, k_perm,
                  qc.astype(np.int32), kc.astype(np.int32), nonempty, dense,
                  _pairs(nonempty, dense, 0), _pairs(nonempty, dense, 1))
