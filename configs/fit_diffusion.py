"""FIT pixel diffusion (FIT paper §4.2 style: class-conditional, ε-prediction, latent self-conditioning).

  python -m effjax.main --config configs/fit_diffusion.py:runlocal --workdir runs/fit_diffusion
  python -m effjax.main --config configs/fit_diffusion.py:res=64 --workdir runs/fit_in64

Arguments: res (64/128/256: ImageNet images resized (bicubic, shorter side) and centre-cropped to res×res),
dataset, runlocal (a small FIT denoiser on the embedded MNIST subset, 28×28 in 2×2 patches and 4 groups
of 7×7 patches; a few minutes on a CPU). Training follows pix2seq's diffusion defaults (cosine
schedule, LAMB at 1e-4 with 5k warmup steps, clip 1.0, EMA 0.9999, self-conditioning rate 0.5, DDPM
sampling). Model sizes per resolution are in the paper's style (groups = sub-images, latents per
group, (local)global layer specs); they are not the paper's exact checkpoints.
"""
import ml_collections

from effjax import config as cfg, train_config

RESOLUTIONS = {  # patch, group_size (patches per window side), layers, latents/group, width, latent_width
    64: (4, 4, "(2)2(2)2(2)2(2)2(2)2(2)", 32, 512, 768),
    128: (4, 8, "(2)2(2)2(2)2(2)2(2)2(2)", 32, 512, 768),
    256: (8, 8, "(2)2(2)2(2)2(2)2(2)2(2)", 32, 512, 1024),
}


def get_config(arg=None):
  arg = cfg.parse_arg(arg, res=64, dataset="tfds:imagenet2012", num_classes=1000, runlocal=False)
  if arg.res not in RESOLUTIONS:
    raise cfg.ConfigError(f"unknown resolution {arg.res}; expected one of {sorted(RESOLUTIONS)}")
  patch, group, layers, latents, width, latent_width = RESOLUTIONS[arg.res]
  c = train_config.base_config()
  c.model_name = "fit_denoiser"
  c.model = ml_collections.ConfigDict(dict(
      layers=layers, latents_per_group=latents, width=width, latent_width=latent_width, num_heads=8,
      latent_num_heads=16, mlp_ratio=4, patch_size=patch, group_size=group, grouping="window",
      self_cond="latent", x_self_attention=True, xattn_with_mlp=True, xattn_enc_ln=True, drop_path_rate=0.0,
      remat="none"))
  c.task_name = "diffusion"
  c.task = ml_collections.ConfigDict(dict(
      schedule="cosine", pred_type="eps", b_scale=1.0, self_cond_rate=0.5, num_classes=arg.num_classes,
      cond_dropout=0.0))
  c.evaluators = ("samples",)
  c.evaluator.samples = ml_collections.ConfigDict(dict(num_samples=64, steps=100, methods=("ddpm",), guidance=0.0,
                                                     cache_interval=1))
  c.data.source = f"{arg.dataset}"
  c.data.train_split, c.data.eval_split = "train", "validation"
  # Images to res×res as in the ImageNet diffusion literature (ADM): shorter side to res (bicubic), central crop.
  crop = f"center_crop(size={arg.res},resize_small={arg.res},method=bicubic)"
  c.data.pp_train, c.data.pp_eval = (crop, "flip"), (crop,)
  c.data.eval_examples = 1024
  c.batch_size = 512
  c.total_steps = 150_000
  c.optimizer.name = "lamb"
  c.optimizer.lr = 1e-4
  c.optimizer.weight_decay = 0.0
  c.optimizer.warmup_steps = 5000
  c.optimizer.schedule = "warmup_constant"
  c.optimizer.grad_clip_norm = 1.0
  c.ema_decay = 0.9999
  c.log_every_steps = 100
  c.eval_every_steps = 10_000
  c.checkpoint_every_steps = 5000

  if arg.runlocal:  # embedded MNIST subset, 28x28x1 -> 14x14 patches of 2x2 -> 4 groups of 7x7 patches
    c.model.update(dict(layers="(1)2(1)", latents_per_group=8, width=64, latent_width=128, num_heads=2,
                        latent_num_heads=4, mlp_ratio=2, patch_size=2, group_size=7))
    c.task.num_classes = 10
    c.data.source = "mnist5k"
    c.data.train_split, c.data.eval_split = "train", "test"
    c.data.pp_train = c.data.pp_eval = ()
    c.data.eval_examples = 256
    c.evaluator.samples = ml_collections.ConfigDict(dict(num_samples=16, steps=20, methods=("ddim", "ddpm"),
                                                         guidance=0.0, cache_interval=1))
    c.batch_size = 64
    c.eval_batch_size = 128
    c.total_steps = 600
    c.optimizer.name = "adamw"
    c.optimizer.lr = 2e-3
    c.optimizer.warmup_steps = 50
    c.optimizer.schedule = "warmup_cosine"
    c.ema_decay = 0.0
    c.log_every_steps = 20
    c.eval_every_steps = -1
    c.checkpoint_every_steps = 300
  return c
