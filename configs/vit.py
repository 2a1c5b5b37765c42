"""Vision Transformer presets: `:fashion_mnist` (a DeiT-style ViT-Ti/4 on 28 px images) and
`:imagenet` (big_vision's plain ViT-S/16 baseline, 90 epochs).

Select one with `--config=configs/vit.py:NAME`; override any field with
`--config.FIELD=VALUE`. Every field and its default is declared in `imgcls_jax/config.py`.
"""

from imgcls_jax.config import preset_config


def fashion_mnist(c):
    """ViT-Ti with 4 px patches (7x7 tokens and a class token) on Fashion-MNIST, with DeiT's
    recipe (Touvron et al. 2021): AdamW (lr 5e-4 x batch / 512, weight decay 0.05), 5
    warm-up epochs then cosine, RandAugment(2, 9), mixup 0.8 / CutMix 1.0, label smoothing
    0.1, stochastic depth 0.1 and an EMA of the weights; 100 epochs, batch 256, bfloat16
    where it is fast (dtype auto). A GPU job: about 1.6 GFLOP per training image."""
    c.dataset.name = "fashion_mnist"
    c.dataset.validation_size = 5000
    c.dataset.mean, c.dataset.std = (0.2860,), (0.3530,)
    c.model.name, c.model.patch_size, c.model.pool = "vit_ti", 4, "cls"
    c.model.drop_path_rate = 0.1
    c.model.dtype = "auto"
    c.augment.train = "randaugment(2, 9)|flip_lr"
    c.augment.mixup_alpha, c.augment.cutmix_alpha = 0.8, 1.0
    c.input.batch_size = 256
    c.optimizer.name = "adamw"
    c.optimizer.learning_rate = 5e-4
    c.optimizer.lr_base_batch_size = 512
    c.optimizer.weight_decay = 0.05
    c.optimizer.grad_clip_norm = 1.0
    c.schedule.warmup_epochs = 5.0
    c.loss.label_smoothing = 0.1
    c.training.num_epochs = 100.0
    c.training.ema_decay = 0.9998
    c.training.early_stopping_metric = "val_ema/accuracy"


def imagenet(c):
    """ViT-S/16 on ImageNet-1k after big_vision's "better plain ViT baselines" (Beyer et al.
    2022: 76.5% top-1 after 90 epochs): global average pooling, fixed 2-D sin-cos position
    embeddings, no dropout or stochastic depth, batch 1024, AdamW (lr 1e-3, weight decay
    1e-4, b2 0.999), 10,000 warm-up steps (8 epochs) then cosine, gradient clipping at 1,
    inception crop + flip, RandAugment(2, 10), mixup 0.2; bfloat16; TFDS `imagenet2012`
    streamed from its array_record files. Not run here."""
    c.dataset.name = "imagenet2012"
    c.dataset.test_split = "validation"  # The official validation set serves as test.
    c.dataset.validation_size = 10000  # Held out from train ("minival"), as big_vision does.
    c.dataset.image_size = 256
    c.dataset.streaming = True
    c.dataset.mean, c.dataset.std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
    c.model.name, c.model.patch_size = "vit_s", 16
    c.model.pool, c.model.posemb = "gap", "sincos2d"
    c.model.dtype = "bfloat16"
    c.augment.train = "random_resized_crop(224, (0.05, 1.0))|flip_lr|randaugment(2, 10)"
    c.augment.eval = "center_crop(224)"
    c.augment.mixup_alpha = 0.2
    c.input.batch_size = 1024
    c.input.eval_batch_size = 1000
    c.optimizer.name = "adamw"
    c.optimizer.learning_rate = 1e-3
    c.optimizer.weight_decay = 1e-4
    c.optimizer.grad_clip_norm = 1.0
    c.schedule.warmup_epochs = 8.0
    c.loss.label_smoothing = 0.0
    c.training.num_epochs = 90.0
    c.training.log_every_steps = 500
    c.training.checkpoint_every_steps = 5000


PRESETS = {"fashion_mnist": fashion_mnist, "imagenet": imagenet}


def get_config(arg: str | None = None):
    """The locked config of preset `arg` (default: fashion_mnist)."""
    return preset_config(PRESETS, arg, "fashion_mnist", "configs/vit.py")
