"""A PyTorch ResNet in torchvision's module layout (conv1, bn1, layerN.M.convK, downsample, fc),
also with the small (3x3) stem: the reference our converted Flax model must match
(tests/test_convert.py) and the PyTorch side of the benchmarks; and the twin of our
airbench-style net, for the benchmarks."""

import torch
from torch import nn


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes, planes, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return torch.relu(y + (x if self.downsample is None else self.downsample(x)))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.downsample = None
        if stride != 1 or inplanes != planes * 4:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes * 4, 1, stride, bias=False), nn.BatchNorm2d(planes * 4)
            )

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        y = torch.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return torch.relu(y + (x if self.downsample is None else self.downsample(x)))


class ResNet(nn.Module):
    def __init__(self, block, stage_sizes, num_classes, width=64, stem="imagenet", channels=3):
        super().__init__()
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(channels, width, 7, 2, 3, bias=False)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
        else:
            self.conv1 = nn.Conv2d(channels, width, 3, 1, 1, bias=False)
            self.maxpool = nn.Identity()
        self.bn1 = nn.BatchNorm2d(width)
        inplanes = width
        for i, blocks in enumerate(stage_sizes):
            layers = []
            for j in range(blocks):
                stride = 2 if i > 0 and j == 0 else 1
                layers.append(block(inplanes, width * 2**i, stride))
                inplanes = width * 2**i * block.expansion
            setattr(self, f"layer{i + 1}", nn.Sequential(*layers))
        self.num_stages = len(stage_sizes)
        self.fc = nn.Linear(inplanes, num_classes)

    def forward(self, x):
        x = self.maxpool(torch.relu(self.bn1(self.conv1(x))))
        for i in range(self.num_stages):
            x = getattr(self, f"layer{i + 1}")(x)
        return self.fc(x.mean(dim=(2, 3)))


class Airbench(nn.Module):
    """Our `models/airbench.py` net: (conv, 2x2 max-pool, BN, ReLU, conv, BN, ReLU) x 3 at
    widths w, 2w, 4w, global max-pool, linear head."""

    def __init__(self, num_classes, width=32, channels=1):
        super().__init__()
        layers = []
        for i in range(3):
            filters = width * 2**i
            layers += [
                nn.Conv2d(channels, filters, 3, padding=1, bias=False), nn.MaxPool2d(2),
                nn.BatchNorm2d(filters), nn.ReLU(inplace=True),
                nn.Conv2d(filters, filters, 3, padding=1, bias=False),
                nn.BatchNorm2d(filters), nn.ReLU(inplace=True),
            ]  # fmt: skip
            channels = filters
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(channels, num_classes)

    def forward(self, x):
        return self.head(torch.amax(self.features(x), dim=(2, 3)))


def randomize(model, seed=0):
    """Random weights and non-trivial BatchNorm statistics, so that every tensor matters."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if tensor.is_floating_point():
                values = torch.randn(tensor.shape, generator=generator)
                if name.endswith("running_var"):
                    values = values.abs() + 0.5
                elif name.endswith(("conv1.weight", "conv2.weight", "conv3.weight", "0.weight")):
                    values = values * (2.0 / tensor[0].numel()) ** 0.5
                tensor.copy_(values)
    return model.eval()


def build(arch: str, num_classes: int, width: int = 64, stem: str = "imagenet", channels: int = 3):
    """The PyTorch twin of our registered ResNet `arch` (e.g. "resnet50", "resnet20"), or of
    "airbench" (whose stem is its own)."""
    from imgcls_jax.models.resnet import RESNET_ARCHS, BottleneckBlock

    if arch == "airbench":
        return Airbench(num_classes, width, channels)
    spec = RESNET_ARCHS[arch]
    block = Bottleneck if spec["block_cls"] is BottleneckBlock else BasicBlock
    return ResNet(block, spec["stage_sizes"], num_classes, width, stem, channels)
