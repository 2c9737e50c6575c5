"""Writes tests/data/awq_official.npz: AWQ's scale search and quantizer, run from the official code. Never run by the
test suite.

  git -C <mirror of mit-han-lab/llm-awq> archive HEAD awq | tar -x -C /tmp/llm-awq
  python tests/data/make_awq_golden.py /tmp/llm-awq $(git -C <mirror> rev-parse HEAD)

The official modules import CUDA extensions and transformers at their top, so this script does not import them:
it takes the source of three functions from the given checkout — `pseudo_quantize_tensor`
(awq/quantize/quantizer.py), `get_act_scale` and `_search_module_scale` (nested in `auto_scale_block`,
awq/quantize/auto_scale.py) — and executes them unchanged, with torch and the closure `w_quantize_func`
(pseudo_quantize_tensor with zero_point=True, as auto_scale_block builds it) in their namespace. The inspected
block is the linear layer itself (module2inspect = layers[0], as the official code does for a single layer).

Per case: param/<case>/{weight [out, in], bias [out]}, input/<case> [2, rows, in] (a few input channels ~10x
larger, the outliers AWQ protects), output/<case>/{scales [in] (the chosen s), wq [out, in] (Q(W·s)/s, the weight
the quantized layer computes with), q_scales, q_zeros [out, in/g] (the quantizer's Δ and z on W·s)}; meta: JSON.
"""
import ast
import json
import os
import sys

import numpy as np
import torch

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "awq_official.npz")
CASES = {  # case -> (in, out, rows, bits, q_group_size)
    "int4_g16": (64, 24, 48, 4, 16),
    "int4_g32": (64, 24, 48, 4, 32),
    "int8": (64, 24, 48, 8, -1),
}


def _function_source(path, name, parent=None):
  tree = ast.parse(open(path).read())
  scope = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == parent) if parent else tree
  node = next(n for n in ast.walk(scope) if isinstance(n, ast.FunctionDef) and n.name == name)
  node.decorator_list = []
  return ast.unparse(node)


def main(root, commit):
  quantizer = os.path.join(root, "awq", "quantize", "quantizer.py")
  auto_scale = os.path.join(root, "awq", "quantize", "auto_scale.py")
  ns = {"torch": torch}
  exec(_function_source(quantizer, "pseudo_quantize_tensor"), ns)
  exec(_function_source(auto_scale, "get_act_scale"), ns)
  arrays = {}
  for case, (n_in, n_out, rows, bits, group) in CASES.items():
    torch.manual_seed(sorted(CASES).index(case))
    layer = torch.nn.Linear(n_in, n_out)
    scale = torch.ones(n_in)
    scale[torch.randperm(n_in)[:4]] = 10.0
    x = torch.randn(2, rows, n_in) * scale
    ns["w_quantize_func"] = lambda p, bits=bits, group=group: ns["pseudo_quantize_tensor"](
        p, n_bit=bits, zero_point=True, q_group_size=group).detach()
    exec(_function_source(auto_scale, "_search_module_scale", parent="auto_scale_block"), ns)
    weight, bias = layer.weight.detach().clone(), layer.bias.detach().clone()
    with torch.no_grad():
      s = ns["_search_module_scale"](layer, [layer], x.reshape(-1, n_in))
      wq, q_scales, q_zeros = ns["pseudo_quantize_tensor"](weight * s.view(1, -1), n_bit=bits, zero_point=True,
                                                           q_group_size=group, get_scale_zp=True)
    assert torch.equal(layer.weight, weight), "the search must restore the layer"
    arrays.update({f"param/{case}/weight": weight.numpy(), f"param/{case}/bias": bias.numpy(),
                   f"input/{case}": x.numpy(), f"output/{case}/scales": s.numpy(),
                   f"output/{case}/wq": (wq / s.view(1, -1)).numpy(),
                   f"output/{case}/q_scales": q_scales.numpy(), f"output/{case}/q_zeros": q_zeros.numpy()})
  meta = {"source": "github.com/mit-han-lab/llm-awq", "commit": commit,
          "torch": torch.__version__, "cases": {k: dict(zip(("in", "out", "rows", "bits", "q_group_size"), v))
                                                for k, v in CASES.items()}}
  np.savez_compressed(OUT, meta=np.array(json.dumps(meta)), **{k: np.asarray(v, np.float32) for k, v in arrays.items()})
  print("wrote", OUT, json.dumps(meta))


if __name__ == "__main__":
  if len(sys.argv) != 3:
    sys.exit("usage: make_awq_golden.py <path of an llm-awq checkout> <its commit>")
  main(*sys.argv[1:])
