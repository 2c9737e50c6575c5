"""Writes tests/data/token_reduction_goldens.npz from the official ToMe and DiffRate code. Never run by the suite.

  git -C <ToMe mirror> archive HEAD | tar -x -C /tmp/tome          (facebookresearch/ToMe)
  git -C <DiffRate mirror> archive HEAD | tar -x -C /tmp/diffrate  (OpenGVLab/DiffRate)
  python tests/data/make_token_reduction_goldens.py /tmp/tome /tmp/diffrate

Needs torch (and tqdm, which DiffRate/utils.py imports). The official modules are loaded from those checkouts
file by file (tome/merge.py, tome/utils.py, DiffRate/{merge,ddp,utils}.py; the packages' __init__ files import
timm, which is not needed here). Used as is: ToMe's bipartite_soft_matching, merge_wavg and parse_r; DiffRate's
get_merge_func, the DiffRate rate module (ddp.py) and ste_min. Reimplemented here in torch, line for line,
because they live in timm-patching classes: ToMe's proportional attention (ToMeAttention.forward), DiffRate's
inference step of DiffRateBlock.forward (sort by class attention, prune, merge) and its calculate_flop_training.
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

  np.savez(OUT, meta=json.dumps(meta), **{k: np.asarray(v.detach().numpy() if torch.is_tensor(v) else v)
                                          for k, v in out.items()})
  print(f"wrote {OUT}: {len(out)} arrays")


if __name__ == "__main__":
  if len(sys.argv) != 3:
    sys.exit("usage: make_token_reduction_goldens.py TOME_CHECKOUT DIFFRATE_CHECKOUT")
  main(*sys.argv[1:])
