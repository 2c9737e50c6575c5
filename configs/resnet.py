"""Bottleneck ResNets as timm builds them: ECA-ResNet, ResNet-RS, and ResNets with cSE / sSE / scSE gates.

  python -m effjax.main --config configs/resnet.py:runlocal --workdir runs/ecaresnet
  python -m effjax.main --config configs/resnet.py:runlocal,gate=scse --workdir runs/scse_resnet
  python -m effjax.main --config configs/resnet.py:variant=resnetrs50,dataset=tfds:imagenet2012 --workdir runs/rs50

Arguments: variant (a timm name in effjax.models.resnet.VARIANTS: ecaresnet26t/50d/50t/101d/200d/269d/light,
resnetrs50 ... resnetrs420), gate (overrides the variant's gate: eca, se = cse, sse, scse, or "none"), dataset,
num_classes, ema (True: evaluate EMA weights), eval_pp (ResNet-RS only: "official", the default, evaluates as the
TF Model Garden does; "timm" as timm's pretrained configs of the converted checkpoints do, RS_RESOLUTIONS' crop_pct
and bicubic), runlocal (a two-stage ECA-ResNet with a deep stem on the embedded MNIST subset).

ImageNet recipe: ResNet-RS (Bello et al. 2021, "Revisiting ResNets", §4 and Appendix C): SGD momentum 0.9, lr 1.6
for batch 4096 (0.1 · 4096/256), cosine over 350 epochs after 5 warm-up epochs, weight decay 4e-5, label smoothing
0.1, EMA 0.9999 (the released checkpoints, e.g. timm's resnetrs50_ema, are EMA weights). Each ResNet-RS variant
trains and evaluates at its own resolution (RS_RESOLUTIONS, from timm's pretrained cfgs of the official TF
checkpoints: input_size, test_input_size, crop_pct), resized bilinearly and evaluated on the central 0.875 of
the shorter side as the official input pipeline does (official/vision/dataloaders/classification_input.py with
configs/image_classification.py's defaults tf_resize_method="bilinear", center_crop_fraction=0.875; timm's crop_pct
and bicubic with eval_pp="timm"), with its own head dropout and stochastic depth
(RS_REGULARIZATION, from the official configs tensorflow/models official/vision/configs/experiments/
image_classification/imagenet_resnetrs<N>_i<size>.yaml: dropout_rate, stochastic_depth_drop_rate), spread as the
official TF ResNet spreads it: every block of stage i = 0..3 at rate·(i+2)/5 (backbones/resnet.py,
get_stochastic_depth_rate; model drop_path_schedule="stage"), and the official TF RandAugment after the flip
(RS_RANDAUGMENT: 2 layers at magnitude 10 for RS-50 and 15 for the others, from the same yaml files; effjax/data/
tf_randaugment.py reproduces official/vision/ops/augment.py op by op, tests/test_tf_randaugment.py). The ECA / SE
variants use the ResNet-RS recipe at 224 px, bicubic, without RandAugment, with drop path 0.05 ramped per block as
timm does.
"""
import ml_collections

from effjax import config as cfg, train_config
from effjax.layers.squeeze_excite import GATES
from effjax.models import resnet

# variant -> (train size, test size, test crop_pct): timm resnet.py default_cfgs 'resnetrs<N>.tf_in1k'.
RS_RESOLUTIONS = {"resnetrs50": (160, 224, 0.91), "resnetrs101": (192, 288, 0.94), "resnetrs152": (256, 320, 1.0),
                  "resnetrs200": (256, 320, 1.0), "resnetrs270": (256, 352, 1.0), "resnetrs350": (288, 384, 1.0),
                  "resnetrs420": (320, 416, 1.0)}
# variant -> (head dropout_rate, stochastic_depth_drop_rate): imagenet_resnetrs<N>_i<train size>.yaml (350 and 420:
# the i320 files; timm's resnetrs350 trains at 288, between the official i256 and i320 runs, whose dropout is 0.25
# and 0.4: effjax takes the i320 values).
RS_REGULARIZATION = {"resnetrs50": (0.25, 0.0), "resnetrs101": (0.25, 0.0), "resnetrs152": (0.25, 0.0),
                     "resnetrs200": (0.25, 0.1), "resnetrs270": (0.25, 0.1), "resnetrs350": (0.4, 0.1),
                     "resnetrs420": (0.4, 0.1)}
# variant -> RandAugment magnitude (train_data.aug_type.randaug.magnitude) in the same yaml files; their other
# RandAugment fields are the defaults of official/vision/configs/common.py RandAugment: num_layers 2, cutout_const 40,
# translate_const 10, magnitude_std 0, prob_to_apply None, exclude_ops none (effjax/data/tf_randaugment.py).
RS_RANDAUGMENT = {"resnetrs50": 10,   # imagenet_resnetrs50_i160.yaml
                  "resnetrs101": 15,  # imagenet_resnetrs101_i192.yaml
                  "resnetrs152": 15,  # imagenet_resnetrs152_i256.yaml
                  "resnetrs200": 15,  # imagenet_resnetrs200_i256.yaml
                  "resnetrs270": 15,  # imagenet_resnetrs270_i256.yaml
                  "resnetrs350": 15,  # imagenet_resnetrs350_i320.yaml (and _i256.yaml)
                  "resnetrs420": 15}  # imagenet_resnetrs420_i320.yaml

def get_config(arg=None):
  arg = cfg.parse_arg(arg, variant="ecaresnet50d", gate="", dataset="tfds:imagenet2012", num_classes=1000,
                      ema=True, eval_pp="official", runlocal=False)
  if arg.variant not in resnet.VARIANTS:
    raise cfg.ConfigError(f"unknown ResNet variant {arg.variant!r}; expected one of {sorted(resnet.VARIANTS)}")
  if arg.gate and arg.gate != "none" and arg.gate not in GATES:
    raise cfg.ConfigError(f"unknown gate {arg.gate!r}; expected one of {sorted(GATES)} or 'none'")
  if arg.eval_pp not in ("official", "timm"):
    raise cfg.ConfigError(f"unknown eval_pp {arg.eval_pp!r}; expected 'official' or 'timm'")
  c = train_config.base_config()
  c.model_name = "resnet"
  head_dropout, drop_path = RS_REGULARIZATION.get(arg.variant, (0.0, 0.05))
  model = dict(num_classes=arg.num_classes, variant=arg.variant, drop_path_rate=drop_path, head_dropout=head_dropout,
               drop_path_schedule="stage" if arg.variant in RS_REGULARIZATION else "block")
  if arg.runlocal:  # a two-stage ECA-ResNet with a deep stem
    model = dict(num_classes=10, layers=(1, 1), widths=(16, 32), stem_width=16, stem_type="deep",
                 replace_stem_pool=False, avg_down=True, gate="eca", drop_path_rate=0.0)
  if arg.gate:
    model["gate"] = "" if arg.gate == "none" else arg.gate
  c.model = ml_collections.ConfigDict(model)
  c.task_name = "classification"
  c.task = ml_collections.ConfigDict(dict(label_smoothing=0.1))
  c.evaluators = ("classification",)
  c.data.source = arg.dataset
  c.data.train_split, c.data.eval_split = "train", "validation"
  # Inception crop + flip at the training size; shorter side test/crop_pct (timm: floor) + central test crop. ResNet-RS:
  # bilinear and crop 0.875 (the official TF pipeline); the timm models (ECA / SE): bicubic, as timm trains them.
  train_size, test_size, crop_pct = RS_RESOLUTIONS.get(arg.variant, (224, 224, 0.875))
  official_rs = arg.variant in RS_RESOLUTIONS
  train_method = "bilinear" if official_rs else "bicubic"
  eval_method, crop_pct = ("bilinear", 0.875) if official_rs and arg.eval_pp == "official" else ("bicubic", crop_pct)
  randaug = (f"tf_randaugment(num_layers=2,magnitude={RS_RANDAUGMENT[arg.variant]})",) if official_rs else ()
  c.data.pp_train = (f"inception_crop(size={train_size},method={train_method})", "flip", *randaug,
                     train_config.IMAGENET_NORM)
  c.data.pp_eval = (f"center_crop(size={test_size},resize_small={int(test_size / crop_pct)},method={eval_method})",
                    train_config.IMAGENET_NORM)
  c.batch_size = 4096                # ResNet-RS Appendix C: batch 4096
  c.total_epochs = 350.0             # ResNet-RS: 350 epochs
  c.ema_decay = 0.9999 if arg.ema else 0.0  # ResNet-RS: EMA 0.9999
  c.optimizer.name = "sgd"           # ResNet-RS: momentum 0.9
  c.optimizer.lr = 1.6               # ResNet-RS: 0.1 · batch/256 = 1.6 at 4096, cosine
  c.optimizer.weight_decay = 4e-5    # ResNet-RS: 4e-5
  c.optimizer.warmup_epochs = 5.0
  c.log_every_steps = 100
  c.eval_every_steps = 5000
  c.checkpoint_every_steps = 2000

  if arg.runlocal:
    c.ema_decay = 0.0
    c.task.label_smoothing = 0.0
    c.data.source = "mnist5k"
    c.data.train_split, c.data.eval_split = "train", "test"
    c.data.pp_train = ("random_crop(pad=2)", "normalize(mean=0.1307,std=0.3081)")
    c.data.pp_eval = ("normalize(mean=0.1307,std=0.3081)",)
    c.batch_size = 128
    c.eval_batch_size = 200
    c.total_epochs = -1.0
    c.total_steps = 1000
    c.optimizer.name = "adamw"
    c.optimizer.lr = 2e-3
    c.optimizer.weight_decay = 1e-4
    c.optimizer.warmup_epochs = 0.0
    c.optimizer.warmup_steps = 100
    c.log_every_steps = 50
    c.eval_every_steps = 500
    c.checkpoint_every_steps = 500
  return c
