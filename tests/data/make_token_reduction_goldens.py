"""Writes tests/data/token_reduction_goldens.npz from the official ToMe and DiffRate code. Never run by the suite.

  git -C <ToMe mirror> archive HEAD | tar -x -C /tmp/tome          (facebookresearch/ToMe)
  git -C <DiffRate mirror> archive HEAD | tar -x -C /tmp/diffrate  (OpenGVLab/DiffRate)
  python tests/data/make_token_reduction_goldens.py /tmp/tome /tmp/diffrate

Needs torch (and tqdm, which DiffRate/utils.py imports). The official modules are loaded from those checkouts
file by file (tome/merge.py, tome/utils.py, DiffRate/{merge,ddp,utils}.py; the packages' __init__ files import
timm, which is not needed here). Used as is: ToMe's bipartite_soft_matching, merge_wavg and parse_r; DiffRate's
get_merge_func, the DiffRate rate module (ddp.py) and ste_min. Reimplemented here in torch, line for line,
because they live in timm-patching classes: ToMe's proportional attention (ToMeAttention.forward), DiffRate's
DiffRateBlock.forward (the inference step: sort by class attention, prune, merge; the training step of the search:
masked attention with softmax_with_policy, prune and merge masks) and its calculate_flop_training.
Everything runs in float64 on fixed random inputs (seed 0); the file also records both commits' ids if given.
"""
import importlib
import json
import os
import sys
import types

import numpy as np
import torch

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "token_reduction_goldens.npz")


def load(root, package, module):
  """package.module from the checkout `root`, without running the package's __init__."""
  if package not in sys.modules:
    stub = types.ModuleType(package)
    stub.__path__ = [os.path.join(root, package)]
    sys.modules[package] = stub
  return importlib.import_module(f"{package}.{module}")


def softmax_with_policy(attn, policy, eps=1e-6):
  """DiffRateAttention.softmax_with_policy, line for line (it is a method of a timm subclass)."""
  b, n = policy.size()
  attn_policy = policy.reshape(b, 1, 1, n)
  eye = torch.eye(n, dtype=attn_policy.dtype, device=attn_policy.device).view(1, 1, n, n)
  attn_policy = attn_policy + (1.0 - attn_policy) * eye
  max_att = torch.max(attn, dim=-1, keepdim=True)[0]
  attn = attn - max_att
  attn = attn.to(torch.float32).exp_() * attn_policy.to(torch.float32)
  attn = (attn + eps / n) / (attn.sum(dim=-1, keepdim=True) + eps)
  return attn.type_as(max_att)


def main(tome_root, diffrate_root):
  tome_merge, tome_utils = load(tome_root, "tome", "merge"), load(tome_root, "tome", "utils")
  dr_merge, dr_ddp, dr_utils = (load(diffrate_root, "DiffRate", m) for m in ("merge", "ddp", "utils"))
  torch.manual_seed(0)
  out, meta = {}, {"torch": torch.__version__}

  # ToMe: matching + size-weighted merge, with and without a class token; r above the cap; mean mode.
  for name, (b, n, c, r, cls) in {"cls": (2, 11, 8, 3, True), "nocls": (2, 10, 8, 4, False),
                                  "capped": (1, 9, 4, 7, True)}.items():
    metric, x = torch.randn(b, n, c, dtype=torch.float64), torch.randn(b, n, 6, dtype=torch.float64)
    size = 1.0 + torch.randint(0, 4, (b, n, 1)).double()
    merge, _ = tome_merge.bipartite_soft_matching(metric, r, class_token=cls)
    xm, sm = tome_merge.merge_wavg(merge, x, size)
    out.update({f"tome/{name}/metric": metric, f"tome/{name}/x": x, f"tome/{name}/size": size,
                f"tome/{name}/x_merged": xm, f"tome/{name}/size_merged": sm, f"tome/{name}/x_mean": merge(x)})
    meta[f"tome/{name}"] = dict(r=r, class_token=cls)
  meta["tome/parse_r"] = {f"{d},{r},{i}": tome_utils.parse_r(d, (r, i)) for d, r, i in
                          [(12, 8, 0.0), (12, 8, -1.0), (12, 5, 0.5), (4, 3, 1.0)]}

  # ToMeAttention.forward's proportional attention: softmax(q kᵀ · scale + log size) v, heads [B, H, N, d].
  q, k, v = (torch.randn(2, 3, 7, 4, dtype=torch.float64) for _ in range(3))
  size = 1.0 + torch.randint(0, 5, (2, 7, 1)).double()
  attn = ((q @ k.transpose(-2, -1)) * 4 ** -0.5 + size.log()[:, None, None, :, 0]).softmax(dim=-1)
  out.update({"prop_attn/q": q, "prop_attn/k": k, "prop_attn/v": v, "prop_attn/size": size,
              "prop_attn/out": attn @ v})

  # DiffRate's merge: tokens after `kept` into their most similar of the first `kept` (class token excluded).
  metric, x = torch.randn(2, 9, 8, dtype=torch.float64), torch.randn(2, 9, 6, dtype=torch.float64)
  merge, node_max = dr_merge.get_merge_func(metric, kept_number=4)
  out.update({"diffrate_merge/metric": metric, "diffrate_merge/x": x, "diffrate_merge/x_mean": merge(x),
              "diffrate_merge/x_sum": merge(x, mode="sum"), "diffrate_merge/node_max": node_max})

  # DiffRateBlock.forward at inference, between attention and MLP (size starts ragged to test the weighting).
  b, n, h = 2, 12, 3
  x, size = torch.randn(b, n, 6, dtype=torch.float64), 1.0 + torch.randint(0, 3, (b, n, 1)).double()
  attn = torch.randn(b, h, n, n, dtype=torch.float64).softmax(-1)
  for prune_keep, merge_keep in [(9, 5), (12, 12), (7, 7), (12, 4)]:
    cls_attn = attn[:, :, 0, 1:].mean(dim=1)
    _, idx = torch.sort(cls_attn, descending=True)
    idx = torch.cat((torch.zeros((b, 1)).long(), idx + 1), dim=1)
    xs = torch.gather(x, dim=1, index=idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))[:, :prune_keep]
    ss = torch.gather(size, dim=1, index=idx.unsqueeze(-1))[:, :prune_keep]
    if merge_keep < prune_keep:
      merge, node_max = dr_merge.get_merge_func(xs, kept_number=merge_keep)
      xs = merge(xs, mode="mean")
      ss = torch.cat((ss[:, :merge_keep], ss[:, merge_keep:] * node_max[..., None]), dim=1)
      ss = merge(ss, mode="sum")
    out.update({f"diffrate_step/{prune_keep},{merge_keep}/x": xs, f"diffrate_step/{prune_keep},{merge_keep}/size": ss})
  out.update({"diffrate_step/x": x, "diffrate_step/size": size, "diffrate_step/cls_attn": attn[:, :, 0, 1:].mean(1)})

  # The rate module (ddp.py): kept number and token mask with their gradients; the training FLOPs.
  patches, width, layers = 10, 16, 3
  rates, kept = [], []
  for i in range(layers):
    module = dr_ddp.DiffRate(patches, 1)
    with torch.no_grad():
      module.selected_probability.copy_(torch.randn(patches))
    kept_i = module.update_kept_token_number()
    mask = module.get_token_mask(patches + 1 - i)  # token_number: the tokens left by the previous layer
    (grad,) = torch.autograd.grad((mask * torch.arange(patches + 1.0)).sum(), module.selected_probability,
                                  retain_graph=True)
    (grad_kept,) = torch.autograd.grad(kept_i, module.selected_probability)
    out.update({f"ddp/{i}/logits": module.selected_probability.detach(), f"ddp/{i}/kept": kept_i.detach(),
                f"ddp/{i}/mask": mask.detach(), f"ddp/{i}/mask_grad": grad, f"ddp/{i}/kept_grad": grad_kept})
    rates.append(module)
    kept.append(module.update_kept_token_number())
  prune, merge = kept[:2], kept[1:]  # two kept numbers per layer from the three rates
  n_tok, flops = torch.tensor(patches + 1.0), 0
  for p, m in zip(prune, merge):  # calculate_flop_training without the patch-embedding and head terms
    flops += 4 * n_tok * width * width + 2 * n_tok * n_tok * width
    n_tok = dr_utils.ste_min(n_tok, p.float(), m.float())
    flops += 8 * n_tok * width * width
  grads = torch.autograd.grad(flops, [r.selected_probability for r in rates])
  out.update({"flops/value": flops.detach(), **{f"flops/grad{i}": g for i, g in enumerate(grads)}})
  meta["ddp"] = dict(patches=patches, width=width, layers=layers, pairs="prune = rates 0, 1; merge = rates 1, 2")

  # DiffRateBlock.forward's training branch (the search), two layers in a row on 1 + 10 tokens: masked attention
  # (softmax_with_policy), sort by class attention, prune mask, merge of [merge_kept, mid) keeping every token.
  b, n, h, d = 2, patches + 1, 2, 4
  x0 = torch.randn(b, n, 6, dtype=torch.float64)
  qk = [torch.randn(b, h, n, d, dtype=torch.float64) for _ in range(4)]
  # peaked near 8, 6 (layer 0: prune, merge) and 4, 2 kept patches (layer 1), so that both layers prune and merge
  logits = [torch.randn(patches) * 0.5 + 3 * torch.nn.functional.one_hot(torch.tensor(patches - c), patches)
            for c in (8, 6, 4, 2)]
  for i, z in enumerate(logits):
    out[f"search/logits{i}"] = z.clone()
  modules = []
  for i in range(4):
    module = dr_ddp.DiffRate(patches, 1)
    with torch.no_grad():
      module.selected_probability.copy_(logits[i])
    modules.append(module)
  x, size, mask = x0.clone(), torch.ones(b, n, 1, dtype=torch.float64), torch.ones(b, n, dtype=torch.float64)
  for layer in range(2):
    q, k = qk[2 * layer], qk[2 * layer + 1]
    attn = softmax_with_policy(q @ k.transpose(-2, -1) * d ** -0.5 + size.log()[:, None, None, :, 0], mask)
    _, idx = torch.sort(attn[:, :, 0, 1:].mean(dim=1), descending=True)
    idx = torch.cat((torch.zeros((b, 1)).long(), idx + 1), dim=1)
    x = torch.gather(x, dim=1, index=idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
    size = torch.gather(size, dim=1, index=idx.unsqueeze(-1))
    mask = torch.gather(mask, dim=1, index=idx)
    prune_ddp, merge_ddp = modules[2 * layer], modules[2 * layer + 1]
    last = mask[0].sum().int()
    prune_kept = prune_ddp.update_kept_token_number()
    if prune_kept < last:
      mask = mask * prune_ddp.get_token_mask(last).expand(b, -1)
    mid = min(last, int(prune_kept))
    merge_kept = merge_ddp.update_kept_token_number()
    if merge_kept < mid:
      merge_mask = merge_ddp.get_token_mask(mid)
      x_rest, size_rest = x[:, mid:], size[:, mid:]
      merge, node_max = dr_merge.get_merge_func(metric=x[:, :mid].detach(), kept_number=int(merge_kept))
      x = merge(x[:, :mid], mode="mean", training=True)
      size = torch.cat((size[:, :int(merge_kept)], size[:, int(merge_kept):mid] * node_max[..., None]), dim=1)
      size = merge(size.clamp(1), mode="sum", training=True)
      x, size, mask = torch.cat([x, x_rest], dim=1), torch.cat([size, size_rest], dim=1), mask * merge_mask
    out.update({f"search/{layer}/x": x.detach(), f"search/{layer}/size": size.detach(),
                f"search/{layer}/mask": mask.detach(), f"search/{layer}/kept": torch.stack([prune_kept, merge_kept])})
  weights = torch.linspace(-1, 1, n, dtype=torch.float64)
  objective = (x.sum(-1) * weights).sum() + (mask * weights).sum() + 0.01 * size.sum()
  grads = torch.autograd.grad(objective, [m.selected_probability for m in modules], allow_unused=True)
  grads = [torch.zeros(patches) if gr is None else gr for gr in grads]
  out.update({"search/x0": x0, **{f"search/qk{i}": t for i, t in enumerate(qk)},
              **{f"search/grad{i}": gr for i, gr in enumerate(grads)}})

  np.savez(OUT, meta=json.dumps(meta), **{k: np.asarray(v.detach().numpy() if torch.is_tensor(v) else v)
                                          for k, v in out.items()})
  print(f"wrote {OUT}: {len(out)} arrays")


if __name__ == "__main__":
  if len(sys.argv) != 3:
    sys.exit("usage: make_token_reduction_goldens.py TOME_CHECKOUT DIFFRATE_CHECKOUT")
  main(*sys.argv[1:])
