"""Accuracy vs images/s plot and markdown table of experiments/inference/tome.py results.

  python experiments/inference/tome_plot.py experiments/inference/tome_vit_mnist5k.json \
      experiments/inference/tome_crate_mnist5k.json --png experiments/inference/token_reduction.png
"""
import argparse
import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def table(result) -> str:
  """Markdown rows: method, r, searched kept tokens, layer MFLOPs, accuracy, images/s, speed-up over no reduction."""
  base = next((p["images_per_s"] for p in result["points"] if p["method"] == "none"), None)
  rows = ["| method | r | kept (prune / merge) | layer MFLOPs | accuracy | images/s | × none |",
          "|---|---|---|---|---|---|---|"]
  for p in result["points"]:
    red = p["reduction"]
    kept = f"{red['prune_keep']} / {red['merge_keep']}" if "searched" in p["method"] else ""
    acc = "" if p["accuracy"] is None else f"{100 * p['accuracy']:.1f}%"
    speed = f"{p['images_per_s'] / base:.2f}" if base else ""
    ips = f"{p['images_per_s']:.0f}" if p["images_per_s"] >= 100 else f"{p['images_per_s']:.3g}"
    rows.append(f"| {p['method']} | {p['r'] or ''} | {kept} | {p['mflops']:.2f} | {acc} | {ips} "
                f"| {speed} |")
  return "\n".join(rows)


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("results", nargs="+")
  ap.add_argument("--png")
  args = ap.parse_args()
  results = [json.load(open(path)) for path in args.results]
  for result, path in zip(results, args.results):
    print(f"{path} ({result['command']}; load {result.get('load')})\n{table(result)}\n")
  curves = [(r, p) for r, p in zip(results, args.results) if r["points"][0]["accuracy"] is not None]  # not speed-only
  if not args.png or not curves:
    return
  fig, axes = plt.subplots(1, len(curves), figsize=(5.5 * len(curves), 4), squeeze=False)
  for ax, (result, path) in zip(axes[0], curves):
    groups = {}
    for p in result["points"]:
      groups.setdefault(p["method"].split(":")[0], []).append(p)
    for method, pts in groups.items():
      pts = sorted(pts, key=lambda p: p["images_per_s"])
      ax.plot([p["images_per_s"] for p in pts], [100 * p["accuracy"] for p in pts], "o" if len(pts) == 1 else "o-",
              label=method)
    ax.set_xlabel("images/s")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(path.split("/")[-1].removesuffix(".json"))
    ax.legend()
  fig.tight_layout()
  fig.savefig(args.png, dpi=100)


if __name__ == "__main__":
  main()
