"""A PyTorch CRATE classifier written from the paper (Yu et al., "White-Box Transformers via Sparse Rate
Reduction"), the baseline of `benchmark.py`. Needs the `bench` extra (torch).

Per layer, with tokens Z [B, N, d], K heads of dimension p and a square dictionary D [d, d]:

  Z½     = Z + U_out · concat_k( softmax(Wₖ Wₖᵀ / √p) Wₖ ) + b,   Wₖ = LN₁(Z) Uₖ   (MSSA, q = k = v)
  Z_next = ReLU(x + η (x D − x Dᵀ D) − η λ),   x = LN₂(Z½)                       (one ISTA step)

`ista="three"` evaluates the ISTA step as written (three [B·N, d]×[d, d] matmuls, the official order);
`ista="fused"` as one matmul ReLU(x · (I + η (D − Dᵀ D)) − η λ) with the d×d matrix formed once per call.
Stem: patches of an NCHW image in (p1 p2 c) order -> LN -> Linear -> LN, class token + learned position
embedding; head: LN -> Linear on the class token. Parameter names follow the official state dict
(`to_patch_embedding.{1,2,3}`, `transformer.layers.{i}.{0,1}`, `mlp_head.{0,1}`), so official weights load
with `load_state_dict`.
"""
import torch
from torch import nn
from torch.nn import functional as F

VARIANTS = {"T": (384, 12, 6), "S": (576, 12, 12), "B": (768, 12, 12), "L": (1024, 24, 16)}  # dim, depth, heads
ISTA_FORMS = ("three", "fused")


class Patches(nn.Module):
  """[B, C, H, W] -> [B, (H/p)(W/p), p·p·C] with the patch vector in (p1 p2 c) order."""

  def __init__(self, patch):
    super().__init__()
    self.patch = patch

  def forward(self, x):
    b, c, h, w = x.shape
    p = self.patch
    x = x.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1)
    return x.reshape(b, (h // p) * (w // p), p * p * c)


class Attention(nn.Module):
  """MSSA: one bias-free projection W = x U serves as query, key and value of every head."""

  def __init__(self, dim, heads, head_dim):
    super().__init__()
    self.heads, self.scale = heads, head_dim ** -0.5
    self.qkv = nn.Linear(dim, heads * head_dim, bias=False)
    self.to_out = nn.Sequential(nn.Linear(heads * head_dim, dim))

  def forward(self, x):
    b, n, _ = x.shape
    w = self.qkv(x).reshape(b, n, self.heads, -1).transpose(1, 2)           # [B, K, N, p]
    attn = torch.softmax(w @ w.transpose(-1, -2) * self.scale, dim=-1)
    return self.to_out((attn @ w).transpose(1, 2).reshape(b, n, -1))


class ISTA(nn.Module):
  """ReLU(x + η (x D − x Dᵀ D) − η λ) with D = `weight` [d, d]."""

  def __init__(self, dim, form, eta=0.1, lmbda=0.1):
    super().__init__()
    if form not in ISTA_FORMS:
      raise ValueError(f"unknown ISTA form {form!r}; expected one of {ISTA_FORMS}")
    self.weight = nn.Parameter(torch.empty(dim, dim))
    nn.init.kaiming_uniform_(self.weight)
    self.form, self.eta, self.lmbda = form, eta, lmbda

  def forward(self, x):
    d = self.weight
    if self.form == "fused":
      m = torch.eye(d.shape[0], dtype=d.dtype, device=d.device) + self.eta * (d - d.t() @ d)
      return F.relu(x @ m.to(x.dtype) - self.eta * self.lmbda)
    return F.relu(x + self.eta * (x @ d - (x @ d.t()) @ d) - self.eta * self.lmbda)


class PreNorm(nn.Module):
  def __init__(self, dim, fn):
    super().__init__()
    self.norm, self.fn = nn.LayerNorm(dim), fn

  def forward(self, x):
    return self.fn(self.norm(x))


class Transformer(nn.Module):
  def __init__(self, dim, depth, heads, head_dim, ista):
    super().__init__()
    self.layers = nn.ModuleList(
        nn.ModuleList([PreNorm(dim, Attention(dim, heads, head_dim)), PreNorm(dim, ISTA(dim, ista))])
        for _ in range(depth))

  def forward(self, x):
    for attn, ista in self.layers:
      x = ista(attn(x) + x)
    return x


class CRATE(nn.Module):
  """CRATE classifier: images [B, C, H, W] -> logits [B, num_classes]."""

  def __init__(self, image_size, patch_size, num_classes, dim, depth, heads, head_dim=None, channels=3,
               ista="fused"):
    super().__init__()
    if image_size % patch_size:
      raise ValueError(f"image_size {image_size} is not a multiple of patch_size {patch_size}")
    patch_dim, n = channels * patch_size ** 2, (image_size // patch_size) ** 2
    self.to_patch_embedding = nn.Sequential(Patches(patch_size), nn.LayerNorm(patch_dim), nn.Linear(patch_dim, dim),
                                            nn.LayerNorm(dim))
    self.pos_embedding = nn.Parameter(torch.randn(1, n + 1, dim))
    self.cls_token = nn.Parameter(torch.randn(1, 1, dim))
    self.transformer = Transformer(dim, depth, heads, head_dim or dim // heads, ista)
    self.mlp_head = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, num_classes))

  def forward(self, images):
    x = self.to_patch_embedding(images)
    x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embedding
    return self.mlp_head(self.transformer(x)[:, 0])


def variant(name, **kwargs):
  """CRATE of a named variant (T/S/B/L): CRATE(dim=..., depth=..., heads=..., **kwargs)."""
  if name not in VARIANTS:
    raise ValueError(f"unknown CRATE variant {name!r}; expected one of {list(VARIANTS)}")
  dim, depth, heads = VARIANTS[name]
  return CRATE(dim=dim, depth=depth, heads=heads, **kwargs)
