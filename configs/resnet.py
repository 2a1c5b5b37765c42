"""ResNet presets: `configs/resnet.py` (Fashion-MNIST), `:cifar10`, `:imagenet`, `:tiny`
(tests); and `:fashion_mnist_speed`, an airbench-style net against the clock.

Select one with `--config=configs/resnet.py:NAME`; override any field with
`--config.FIELD=VALUE`. Every field and its default is declared in `imgcls_jax/config.py`.
"""

from imgcls_jax.config import preset_config


def fashion_mnist(c):
    """ResNet-20 (16/32/64) on Fashion-MNIST, 28 px, offline from Debian's files."""
    c.dataset.name = "fashion_mnist"
    c.dataset.validation_size = 5000
    c.dataset.mean, c.dataset.std = (0.2860,), (0.3530,)
    c.model.name, c.model.width, c.model.stem = "resnet20", 16, "small"
    c.augment.train = "random_crop(2)|flip_lr"
    c.input.batch_size = 128
    c.optimizer.learning_rate = 0.1
    c.optimizer.weight_decay = 5e-4
    c.schedule.warmup_epochs = 1.0
    c.loss.label_smoothing = 0.1
    c.training.num_epochs = 20.0


def fashion_mnist_speed(c):
    """Fashion-MNIST against the clock (goal: >= 94% in 5 minutes on 2 CPU cores): the
    airbench-style net (width 32), 2.6x ResNet-20's images per second here and more accurate
    per epoch; dtype auto (bfloat16 on CPUs with AMX and AMD's with AVX-512-BF16, else
    float32), batch 256, 12 epochs of random flips over all 60k train images (no validation
    split), one evaluation at the end with flip test-time augmentation."""
    fashion_mnist(c)
    c.dataset.validation_size = 0
    c.model.name, c.model.width = "airbench", 32
    c.augment.train = "flip_lr"
    c.model.dtype = "auto"
    c.input.batch_size = 256
    c.optimizer.learning_rate = 0.2
    c.schedule.warmup_epochs = 0.2
    c.augment.eval_flip_tta = True
    c.augment.grid_images = 0
    c.training.num_epochs = 12.0
    c.training.eval_every_epochs = 12.0


def cifar10(c):
    """ResNet-18 with the small stem on CIFAR-10 (TFDS `cifar10`), 200 epochs."""
    c.dataset.name = "cifar10"
    c.dataset.mean, c.dataset.std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    c.model.name, c.model.width, c.model.stem = "resnet18", 64, "small"
    c.augment.train = "random_crop(4)|flip_lr"
    c.input.batch_size = 128
    c.optimizer.learning_rate = 0.1
    c.optimizer.weight_decay = 5e-4
    c.training.num_epochs = 200.0


def imagenet(c):
    """ResNet-50, the standard 90-epoch recipe: SGD Nesterov, lr 0.1 x batch/256, 5 warm-up
    epochs then cosine, weight decay 1e-4, label smoothing 0.1, bf16 compute; TFDS
    `imagenet2012` streamed from its array_record files (docs/data.md: adding them beside the
    TFRecords `tfds build` writes)."""
    c.dataset.name = "imagenet2012"
    c.dataset.test_split = "validation"  # The official validation set serves as test.
    c.dataset.validation_size = 10000  # Held out from train for model selection.
    c.dataset.image_size = 256  # Host resize; train crops 224 at random, eval takes the centre.
    c.dataset.streaming = True  # JPEGs stay in TFDS's array_records, decoded batch by batch.
    c.dataset.mean, c.dataset.std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    c.model.name, c.model.width, c.model.stem = "resnet50", 64, "imagenet"
    c.model.dtype = "bfloat16"
    c.augment.train = "random_resized_crop(224)|flip_lr"
    c.augment.eval = "center_crop(224)"
    c.input.batch_size = 1024
    c.input.eval_batch_size = 1000
    c.optimizer.learning_rate = 0.1
    c.optimizer.lr_base_batch_size = 256
    c.optimizer.nesterov = True
    c.optimizer.weight_decay = 1e-4
    c.schedule.warmup_epochs = 5.0
    c.loss.label_smoothing = 0.1
    c.training.num_epochs = 90.0
    c.training.log_every_steps = 500
    c.training.checkpoint_every_steps = 5000


def tiny(c):
    """A few steps of a ResNet-8 (width 4) on 2,000 Fashion-MNIST images: for tests and smoke runs."""
    fashion_mnist(c)
    c.dataset.train_size = 2000
    c.model.name, c.model.width = "resnet8", 4
    c.input.batch_size = 64
    c.input.eval_batch_size = 1000
    c.schedule.warmup_epochs = 0.0
    c.training.num_epochs = 0.0
    c.training.num_train_steps = 6
    c.training.log_every_steps = 2
    c.training.eval_every_epochs = 0.1


PRESETS = {
    "fashion_mnist": fashion_mnist,
    "fashion_mnist_speed": fashion_mnist_speed,
    "cifar10": cifar10,
    "imagenet": imagenet,
    "tiny": tiny,
}


def get_config(arg: str | None = None):
    """The locked config of preset `arg` (default: fashion_mnist)."""
    return preset_config(PRESETS, arg, "fashion_mnist", "configs/resnet.py")
