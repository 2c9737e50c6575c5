"""Converter command: official weights file <-> effjax checkpoint.

  python -m effjax.convert --model crate --input CRATE_base.pth --output runs/crate_b/checkpoints
  python -m effjax.convert --model crate --input runs/crate_b --output crate_b.pth --template official.pth

Official -> effjax: the file is read by `effjax.weights.read` (any suffix it knows; --select keeps the names
under one prefix, e.g. one model of a multi-model golden file) and converted by the family module's
`convert_official`; the params are saved as an orbax checkpoint (step 0) that `config.init_from.path` and
`checkpoint.restore_params` read. effjax -> official: the params of the newest checkpoint under --input (a
workdir or its checkpoints/ directory) are written under the official names and layouts, in the format of
--output's suffix. The inverse of `convert_official` is derived, not written per family: the --template (an
official file of the same architecture, e.g. the official model's freshly initialised state dict) is
converted with every element replaced by its (key, index) tag, which shows where each official element lands
in the effjax params; only a pure rearrangement (renaming, transposes, reshapes) is invertible this way.
Official keys that no param fills (buffers, unused weights) keep the template's values and are listed.

The converter never deletes or overwrites: an --output directory that already holds checkpoints, or an
--output file that exists, is refused unless --overwrite is given. Every failure is one line on stderr.
"""
import argparse
import os
import shutil
import sys

import jax
import numpy as np

from effjax import checkpoint, sharding, weights

_DIGIT = 1 << 12  # tag digits: an element index is written as two base-4096 digits (exact in float32)


def _flat_params(tree):
  return {sharding.path_str(p): np.asarray(v) for p, v in jax.tree_util.tree_leaves_with_path(tree)}


def _tags(convert_official, template, fill, fixed):
  """Flat effjax params of convert_official(template with each element replaced by fill(key_id, index));
  keys in `fixed` keep their template values."""
  tagged = {k: v if k in fixed else fill(i, np.arange(v.size).reshape(v.shape)).astype(np.float32)
            for i, (k, v) in enumerate(template.items())}
  return _flat_params(convert_official(tagged))


def _tag_all(convert_official, template, fill):
  """_tags, keeping at their template values the keys that the converter validates (e.g. fixed sin-cos
  buffers, which it checks and drops): a ValueError naming a key marks that key fixed and retries."""
  fixed = set()
  while True:
    try:
      return _tags(convert_official, template, fill, fixed)
    except ValueError as e:
      named = [k for k in template if k not in fixed and k in str(e)]
      if not named:
        raise
      fixed.add(max(named, key=len))


def inverse_map(model_name, template):
  """{effjax param path: (key ids, element indices)} locating each effjax element in the official template."""
  convert_official = weights.converter(model_name)
  if any(v.size >= _DIGIT ** 2 for v in template.values()):
    raise ValueError(f"template tensors of {_DIGIT ** 2} or more elements are not supported")
  try:
    keys = _tag_all(convert_official, template, lambda i, idx: np.full(idx.shape, i))
    high = _tag_all(convert_official, template, lambda i, idx: idx // _DIGIT)
    low = _tag_all(convert_official, template, lambda i, idx: idx % _DIGIT)
  except (ValueError, KeyError) as e:
    raise ValueError(f"cannot invert convert_official of {model_name} on this template: {e}") from None
  out = {}
  for path in keys:
    k, h, lo = keys[path], high[path], low[path]
    if not all(np.array_equal(a, np.round(a)) for a in (k, h, lo)) or k.min() < 0 or k.max() >= len(template):
      raise ValueError(f"convert_official of {model_name} computes {path} (not a rearrangement): cannot invert")
    out[path] = (k.astype(np.int64), (h * _DIGIT + lo).astype(np.int64))
  return out


def to_official(params, model_name, template):
  """effjax params -> ({official name: array}, [official names filled from the template])."""
  flat = _flat_params(params)
  names = list(template)
  out = {k: np.array(v, copy=True) for k, v in template.items()}
  filled = {k: np.zeros(v.size, bool) for k, v in template.items()}
  for path, (key_ids, index) in inverse_map(model_name, template).items():
    if path not in flat:
      raise ValueError(f"the effjax params have no {path!r}, which the official model needs")
    if flat[path].shape != key_ids.shape:
      raise ValueError(f"effjax param {path} has shape {flat[path].shape}, the template implies {key_ids.shape}")
    for key_id in np.unique(key_ids):
      name, sel = names[key_id], key_ids == key_id
      out[name].reshape(-1)[index[sel]] = flat[path][sel].astype(out[name].dtype)
      filled[name][index[sel]] = True
  return out, [k for k, f in filled.items() if not f.all()]


def _params_dir(path):
  sub = os.path.join(path, "checkpoints")
  return sub if os.path.isdir(sub) else path


def _select(flat, prefix):
  if not prefix:
    return flat
  picked = {k[len(prefix):]: v for k, v in flat.items() if k.startswith(prefix)}
  if not picked:
    raise ValueError(f"no official name starts with {prefix!r}")
  return picked


def main(argv=None):
  parser = argparse.ArgumentParser(prog="python -m effjax.convert", description=__doc__.split("\n\n")[0])
  parser.add_argument("--model", required=True, help="effjax model module name, e.g. crate, crate_alpha, fit")
  parser.add_argument("--input", required=True, help="official weights file, or an effjax workdir/checkpoints")
  parser.add_argument("--output", required=True, help="checkpoints directory, or an official weights file")
  parser.add_argument("--template", help="effjax -> official: an official file of the same architecture")
  parser.add_argument("--select", default="", help="keep only official names starting with this prefix")
  parser.add_argument("--overwrite", action="store_true",
                      help="replace the checkpoints in --output (a directory) or the --output file")
  args = parser.parse_args(argv)
  try:
    if not os.path.exists(args.input):
      raise ValueError(f"--input {args.input} does not exist")
    if os.path.isfile(args.input):
      _official_to_effjax(args)
    else:
      _effjax_to_official(args)
  except Exception as e:  # the converter's whole job is one call: any failure is one line
    message = (str(e).splitlines() or [""])[0]
    print(f"effjax: error: {message if isinstance(e, ValueError) else f'{type(e).__name__}: {message}'}",
          file=sys.stderr)
    return 1
  return 0


def _official_to_effjax(args):
  variables = weights.load_official_variables_from(_select(weights.read(args.input), args.select), args.model)
  out = os.path.abspath(args.output)
  if os.path.exists(out) and not os.path.isdir(out):
    raise ValueError(f"--output {out} is a file, not a checkpoints directory")
  existing = sorted(n for n in os.listdir(out) if n.split(".")[0].isdigit()) if os.path.isdir(out) else []
  if existing and not args.overwrite:
    raise ValueError(f"--output {out} already holds checkpoints ({', '.join(existing)}); nothing was changed. "
                     f"Choose another directory, or pass --overwrite to replace them")
  for name in existing:
    shutil.rmtree(os.path.join(out, name))
  params = variables.pop("params")
  ckpt = checkpoint.Checkpointer(out, keep=1, async_save=False)
  ckpt.save(0, {"params": params, "model_state": variables}, {},
            {"model_name": args.model, "converted_from": os.path.abspath(args.input)}, force=True)
  ckpt.wait()
  ckpt.close()
  print(f"wrote {len(_flat_params(params))} params"
        + (f" and {', '.join(variables)}" if variables else "") + f" to {out}/0")


def _effjax_to_official(args):
  if not args.template:
    raise ValueError("effjax -> official needs --template (an official file of the same architecture)")
  if os.path.exists(args.output) and not args.overwrite:
    raise ValueError(f"--output {args.output} exists; nothing was changed. Choose another name, or pass "
                     f"--overwrite to replace it")
  params = checkpoint.restore_params(_params_dir(args.input))
  template = _select(weights.read(args.template), args.select)
  flat, kept = to_official(params, args.model, template)
  weights.write(args.output, flat)
  print(f"wrote {len(flat)} official tensors to {args.output}"
        + (f"; kept from the template: {', '.join(kept)}" if kept else ""))


if __name__ == "__main__":
  sys.exit(main())
