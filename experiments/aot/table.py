"""Compiles every paper-scale config for a TPU slice, one at a time, and writes the table experiments/aot/table.md.

    python experiments/aot/table.py [--only SUBSTRING] [--redo]

Each row runs `python -m effjax.aot --config <config> --topology <slice> --out experiments/aot/results` in its own
process (a failed or does-not-fit compile is a row too); rows whose results/<name>.json exists are skipped unless
--redo. The table is rewritten after every row from all results present, so it can be committed as rows complete.
"""
import argparse
import json
import pathlib
import subprocess
import sys

HERE = pathlib.Path(__file__).parent
REPO = HERE.parent.parent
RESULTS = HERE / "results"
sys.path.insert(0, str(REPO))
from effjax import aot  # noqa: E402

# (config, slice, why this slice[, --config.a.b=value overrides]). The slices keep the paper's global batch;
# where the paper names no TPU slice the slice is a current one giving 32-128 examples per chip.
ROWS = [
    ("configs/crate.py:variant=B", "v5e:4x4", "batch 512, 32 per chip"),
    ("configs/crate.py:variant=T", "v5e:4x4", "batch 512, 32 per chip"),
    ("configs/dformer.py", "v5e:1x1", "Synapse 64x128x128 crops, batch 2 on one chip (the paper: one GPU)"),
    ("configs/terminator.py", "v5e:1x1", "CIFAR-10, batch 64 on one chip (the paper: one GPU)"),
    ("configs/fit.py", "v5e:4x8", "batch 1024, 32 per chip; eval ops: centre crop to 224 (the ImageNet recipe)",
     "--config.data.pp_eval=('center_crop(size=224,resize_small=256)','normalize(mean=0.5,std=0.5)')"),
    ("configs/crate_alpha.py:variant=B/16", "v5p:4x4x4",
     "ImageNet-21K pre-training, batch 4096, 64 per chip; chip-hours need --train_examples "
     "(the ImageNet-21K size is not recorded offline)"),
    ("configs/crate_mae.py:variant=B", "v5e:8x8", "batch 4096, 64 per chip; eval ops: centre crop to 224",
     "--config.data.pp_eval=('center_crop(size=224,resize_small=256)',"
     "'normalize(mean=(0.485,0.456,0.406),std=(0.229,0.224,0.225))')"),
    ("configs/convnext.py:variant=tiny", "v5e:8x8", "batch 4096, 64 per chip"),
    ("configs/crate.py:variant=S", "v5e:4x4", "batch 512, 32 per chip"),
    ("configs/crate.py:variant=L", "v5e:4x4", "batch 512, 32 per chip"),
    ("configs/crate_alpha.py:variant=L/14", "v5p:4x4x4",
     "ImageNet-21K pre-training, batch 4096, 64 per chip; chip-hours need --train_examples "
     "(the ImageNet-21K size is not recorded offline)"),
    ("configs/convnext.py:variant=tiny,dcls=True", "v5e:8x8", "batch 4096, 64 per chip"),
    ("configs/inception_next.py:variant=tiny", "v5e:8x8", "batch 4096, 64 per chip"),
    ("configs/fasternet.py:variant=t0", "v5e:4x8", "batch 4096, 128 per chip"),
    ("configs/resnet.py:variant=resnetrs50", "v5e:4x4", "batch 4096, 256 per chip (fits with 0.4 GiB to spare)"),
    ("configs/resnet.py:variant=ecaresnet50d", "v5e:4x4", "batch 4096, 256 per chip (fits with 0.6 GiB to spare)"),
    ("configs/halonet.py:variant=halonet26t", "v5e:4x8", "batch 2048, 64 per chip"),
    ("configs/tvconv.py:variant=x1_0", "v5e:2x4", "batch 512, 64 per chip"),
    ("configs/vit.py:variant=S", "v5e:4x4", "batch 1024, 64 per chip"),
]


def table():
  """The markdown table of every row with a result, in ROWS order, then rows not run yet."""
  head, rule = aot.MD_HEADER.splitlines()
  lines = [head + " slice choice |", rule + "---|"]
  for config, topology, why, *_ in ROWS:
    path = RESULTS / f"{aot.file_name(config, topology)}.json"
    if path.exists():
      lines.append(aot.markdown_row(json.loads(path.read_text())) + f" {why} |")
    else:
      lines.append(f"| `{config}` | {topology} | | not compiled yet | | | | | | {why} |")
  return "\n".join(lines) + "\n"


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--only", default="", help="run only rows whose config contains this")
  parser.add_argument("--redo", action="store_true")
  args = parser.parse_args(argv)
  for config, topology, _, *overrides in ROWS:
    done = (RESULTS / f"{aot.file_name(config, topology)}.json").exists()
    if args.only not in config or (done and not args.redo):
      continue
    print(f"== {config} on {topology}", flush=True)
    subprocess.run([sys.executable, "-m", "effjax.aot", "--config", config, "--topology", topology,
                    "--out", str(RESULTS), *overrides], cwd=REPO, check=False)
    (HERE / "table.md").write_text(table())
  (HERE / "table.md").write_text(table())


if __name__ == "__main__":
  main()
