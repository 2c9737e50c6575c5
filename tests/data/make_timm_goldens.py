"""Writes the timm golden files tests/data/<name>_timm.npz. Never run by the test suite.

Needs an environment of its own (not the project's venv), e.g.
  python3 -m venv /tmp/timmenv && /tmp/timmenv/bin/pip install torch==2.14.1 torchvision==0.29.1 timm==1.0.31
  /tmp/timmenv/bin/python tests/data/make_timm_goldens.py [case ...]

Each case builds tiny timm models (fixed seed, timm's own init), then overwrites every 1-D parameter and buffer
so that a mis-mapped one shows: biases and BatchNorm running means ≈ 0.1·N(0,1), norm scales, layer scales and
other 1-D weights ≈ 1 + 0.1·N(0,1), BatchNorm running variances ≈ 1 + 0.1·|N(0,1)|. It runs them in eval mode
in float32 (and float64 for the logits) and saves, under the layout of shared/reference/README.md:
  param/<model>/<state-dict name>   every parameter and buffer
  input/<model>                     the NCHW input images
  output/<model>/logits[_f64]       logits (float32, and float64 on the same params and inputs)
  output/<model>/<module>           NCHW outputs of a few named modules (forward hooks)
  meta                              JSON: versions, seed, timm model names and constructor kwargs, and the
                                    parameter counts of timm's standard variants ("param_counts").
"""
import json
import os
import platform
import sys

import numpy as np
import timm
import torch
import torchvision

SEED = 0
OUT = os.path.dirname(os.path.abspath(__file__))

# case -> (models: {key: (timm name, kwargs, image size, hooked modules)}, standard variants to count)
CASES = {
    "convnext": ({
        "linear_mlp": ("convnext_tiny", dict(depths=(1, 1, 2, 1), dims=(8, 16, 24, 32), num_classes=5), 64,
                       ("stem", "stages.0", "stages.2", "stages.3")),
        "conv_mlp": ("convnext_atto", dict(depths=(1, 2, 1, 1), dims=(8, 16, 16, 24), num_classes=3), 32,
                     ("stages.3",)),
    }, ("convnext_atto", "convnext_femto", "convnext_pico", "convnext_nano", "convnext_tiny", "convnext_small",
        "convnext_base", "convnext_large")),
    "resnet": ({
        "ecaresnet26t": ("ecaresnet26t", dict(layers=(1, 1, 1, 1), channels=(8, 16, 24, 32), stem_width=8,
                                              num_classes=5), 32, ("maxpool", "layer1", "layer3", "layer4")),
        "ecaresnetlight": ("ecaresnetlight", dict(layers=(1, 2, 1, 1), channels=(8, 8, 16, 16), num_classes=3),
                           36, ("layer2", "layer4")),
        "resnetrs50": ("resnetrs50", dict(layers=(1, 2, 1, 1), channels=(8, 16, 16, 24), stem_width=8,
                                          num_classes=4), 32, ("maxpool", "layer2", "layer4")),
    }, ("ecaresnet26t", "ecaresnet50d", "ecaresnet50t", "ecaresnetlight", "ecaresnet101d", "ecaresnet200d",
        "ecaresnet269d", "resnetrs50", "resnetrs101", "resnetrs152", "resnetrs200", "resnetrs270", "resnetrs350",
        "resnetrs420")),
    "inception_next": ({
        "tiny": ("inception_next_tiny", dict(depths=(1, 1, 2, 1), dims=(16, 16, 24, 32), num_classes=5), 64,
                 ("stem", "stages.0", "stages.2", "stages.3")),
        "atto": ("inception_next_atto", dict(depths=(1, 1, 1, 1), dims=(8, 8, 16, 16), num_classes=3), 32,
                 ("stages.3",)),
    }, ("inception_next_atto", "inception_next_tiny", "inception_next_small", "inception_next_base")),
    "fasternet": ({
        "t0": ("fasternet_t0", dict(embed_dim=8, depths=(1, 2, 1, 1), feature_dim=32, num_classes=5), 64,
               ("patch_embed", "stages.0", "stages.2", "stages.3")),
        "t2": ("fasternet_t2", dict(embed_dim=8, depths=(1, 1, 1, 1), feature_dim=16, num_classes=3,
                                    layer_scale_init_value=0.5), 32, ("stages.3",)),
    }, ("fasternet_t0", "fasternet_t1", "fasternet_t2", "fasternet_s", "fasternet_m", "fasternet_l")),
    "halonet": ({  # ByobNet `blocks` as JSON: per stage [block types, channels, stride, bottle ratio, extra kwargs]
        "halonet26t": ("halonet26t", dict(
            blocks=[[["bottle"], 16, 1, 0.25, {}], [["bottle"], 32, 2, 0.25, {}],
                    [["bottle", "self_attn"], 64, 2, 0.25, {}], [["self_attn", "self_attn"], 128, 2, 0.25, {}]],
            stem_chs=16, self_attn_kwargs=dict(block_size=2, halo_size=2, num_heads=2), num_classes=5), 64,
            ("stem", "stages.0", "stages.1", "stages.2", "stages.3")),
        "halonet50ts": ("halonet50ts", dict(
            blocks=[[["bottle"], 16, 1, 0.25, {}],
                    [["bottle", "self_attn"], 32, 2, 0.25,
                     dict(self_attn_layer="halo", self_attn_kwargs=dict(block_size=2, halo_size=1, num_heads=4))],
                    [["bottle", "self_attn"], 32, 2, 0.25, {}], [["bottle", "self_attn"], 64, 2, 0.25, {}]],
            stem_chs=16, self_attn_kwargs=dict(block_size=2, halo_size=1, num_heads=2), num_classes=4), 64,
            ("stages.1", "stages.3")),
        "sehalonet33ts": ("sehalonet33ts", dict(
            blocks=[[["bottle"], 16, 1, 0.25, {}], [["bottle", "self_attn"], 32, 2, 0.25, {}],
                    [["bottle", "self_attn"], 48, 2, 0.25, {}], [["self_attn"], 96, 2, 0.333, {}]],
            stem_chs=16, num_features=40, self_attn_kwargs=dict(block_size=2, halo_size=3, num_heads=2),
            num_classes=3), 64, ("stem", "stages.2", "stages.3", "final_conv")),
        "halonet_h1": ("halonet_h1", dict(  # odd block size: the stride-2 attention average-pools its output
            blocks=[[["self_attn"], 16, 1, 1.0, {}], [["self_attn"], 16, 2, 1.0, {}],
                    [["self_attn", "self_attn"], 32, 2, 1.0, {}], [["self_attn"], 32, 2, 1.0, {}]],
            self_attn_kwargs=dict(block_size=3, halo_size=1, num_heads=2), num_classes=5), 48,
            ("stem", "stages.0", "stages.1", "stages.3")),
        "eca_halonext26ts": ("eca_halonext26ts", dict(
            blocks=[[["bottle"], 32, 1, 0.25, dict(gs=4)], [["bottle"], 32, 2, 0.25, dict(gs=4)],
                    [["bottle", "self_attn"], 64, 2, 0.25, dict(gs=4)], [["self_attn"], 64, 2, 0.25, dict(gs=4)]],
            stem_chs=16, self_attn_kwargs=dict(block_size=2, halo_size=2, dim_head=8, num_heads=2), num_classes=3),
            64, ("stages.0", "stages.3")),
    }, ("halonet_h1", "halonet26t", "sehalonet33ts", "halonet50ts", "eca_halonext26ts")),
}


def timm_kwargs(kwargs):
  """kwargs for timm.create_model: a JSON `blocks` list (see the halonet case) becomes ByobNet block configs."""
  if "blocks" not in kwargs:
    return kwargs
  from timm.models.byobnet import ByoBlockCfg
  blocks = tuple(tuple(ByoBlockCfg(type=t, d=1, c=c, s=s, br=br, **{"gs": 0, **extra}) for t in types)
                 for types, c, s, br, extra in kwargs["blocks"])
  return {**kwargs, "blocks": blocks}


def perturb(model, gen):
  """Every 1-D parameter / buffer away from its init (see the module docstring); returns the state dict."""
  with torch.no_grad():
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
      if not t.is_floating_point():
        continue
      noise = torch.randn(t.shape, generator=gen, dtype=t.dtype)
      leaf = name.rsplit(".", 1)[-1]
      if leaf in ("bias", "running_mean"):
        t.copy_(0.1 * noise)
      elif leaf == "running_var":
        t.copy_(1 + 0.1 * noise.abs())
      elif t.ndim == 1 or (t.numel() == max(t.shape) and leaf != "weight"):  # vectors such as [1, C, 1, 1]
        t.copy_(1 + 0.1 * noise)
  return model.state_dict()


def run_model(key, timm_name, kwargs, size, hooks, arrays, gen):
  torch.manual_seed(SEED)
  model = timm.create_model(timm_name, pretrained=False, drop_rate=0.0, drop_path_rate=0.0,
                            **timm_kwargs(kwargs)).eval()
  sd = perturb(model, gen)
  x = torch.randn((2, 3, size, size), generator=gen)
  captured = {}
  modules = dict(model.named_modules())
  for h in hooks:
    modules[h].register_forward_hook(lambda m, i, o, h=h: captured.__setitem__(h, o.detach().numpy().copy()))
  with torch.no_grad():
    logits = model(x)
    logits64 = model.double()(x.double())
  for name, v in sd.items():
    if v.is_floating_point():
      arrays[f"param/{key}/{name}"] = v.float().numpy() if v.dtype == torch.float64 else v.numpy()
  arrays[f"input/{key}"] = x.numpy()
  arrays[f"output/{key}/logits"] = logits.numpy()
  arrays[f"output/{key}/logits_f64"] = logits64.numpy()
  for h, v in captured.items():
    arrays[f"output/{key}/{h}"] = v


def count(timm_name):
  model = timm.create_model(timm_name, pretrained=False)
  return sum(p.numel() for p in model.parameters())


# layer cases: key -> (timm.layers class name, kwargs, train mode); input [2, 8, 5, 6]
LAYERS = {
    "evonorm": {
        "b0": ("EvoNorm2dB0", {}, False), "b0_train": ("EvoNorm2dB0", {}, True),
        "b0_noact": ("EvoNorm2dB0", dict(apply_act=False), False),
        "s0": ("EvoNorm2dS0", dict(groups=2), False), "s0_group_size": ("EvoNorm2dS0", dict(group_size=2), False),
    },
}


def make_layers(case):
  """Each layer: param/<key>/..., input/<key>, output/<key>/y (and running_var after a training call)."""
  import timm.layers
  gen = torch.Generator().manual_seed(SEED)
  arrays = {}
  for key, (cls, kwargs, train) in LAYERS[case].items():
    layer = getattr(timm.layers, cls)(8, **kwargs).train(train)
    sd = {k: v.clone().numpy() for k, v in perturb(layer, gen).items()}
    x = torch.randn((2, 8, 5, 6), generator=gen) * 2 + 0.5
    with torch.no_grad():
      y = layer(x)
    arrays.update({f"param/{key}/{k}": v for k, v in sd.items()})
    arrays[f"input/{key}"] = x.numpy()
    arrays[f"output/{key}/y"] = y.numpy()
    if train:
      arrays[f"output/{key}/running_var"] = layer.running_var.numpy()
  meta = dict(generator="tests/data/make_timm_goldens.py", seed=SEED,
              versions=dict(torch=torch.__version__, timm=timm.__version__, numpy=np.__version__),
              layers={k: dict(timm_class=c, kwargs=kw, train=t) for k, (c, kw, t) in LAYERS[case].items()},
              init_note="as the model cases; params are the values before the call (a training call updates "
                        "running_var, saved as output/<key>/running_var)",
              layout="inputs and outputs NCHW [2, 8, 5, 6]")
  path = os.path.join(OUT, f"{case}_timm.npz")
  np.savez_compressed(path, meta=json.dumps(meta), **arrays)
  print(f"{path}: {os.path.getsize(path) / 1e3:.0f} kB, {len(arrays)} arrays")


def make(case):
  models, standard = CASES[case]
  gen = torch.Generator().manual_seed(SEED)
  arrays = {}
  for key, (timm_name, kwargs, size, hooks) in models.items():
    run_model(key, timm_name, kwargs, size, hooks, arrays, gen)
  meta = dict(
      generator="tests/data/make_timm_goldens.py", seed=SEED, dtype="float32 (logits_f64: float64)",
      versions=dict(python=platform.python_version(), torch=torch.__version__, torchvision=torchvision.__version__,
                    timm=timm.__version__, numpy=np.__version__),
      models={key: dict(timm_name=n, kwargs=kw, image_size=s, hooks=list(h)) for key, (n, kw, s, h) in models.items()},
      param_counts={name: count(name) for name in standard},
      init_note="timm init under torch.manual_seed(seed); then biases / running means 0.1·N(0,1), running vars "
                "1+0.1·|N(0,1)|, every other 1-D parameter (norm scales, layer scales) 1+0.1·N(0,1)",
      layout="images and hooked outputs NCHW; params under their timm state-dict names")
  path = os.path.join(OUT, f"{case}_timm.npz")
  np.savez_compressed(path, meta=json.dumps(meta), **arrays)
  print(f"{path}: {os.path.getsize(path) / 1e3:.0f} kB, {len(arrays)} arrays")


if __name__ == "__main__":
  torch.set_num_threads(2)
  for case in sys.argv[1:] or [*CASES, *LAYERS]:
    make(case) if case in CASES else make_layers(case)
