"""Model factories a preset can name as arch = "examples.models:small_cnn"."""

import torch
from torch import nn


def small_cnn(num_classes: int = 10, width: int = 32) -> nn.Module:
    """Three conv blocks and a linear head: a model that trains from scratch in seconds."""

    def block(cin: int, cout: int) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
                             nn.MaxPool2d(2))

    return nn.Sequential(
        block(3, width), block(width, width * 2), block(width * 2, width * 4),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.1), nn.Linear(width * 4, num_classes),
    )


def tiny_unet(in_channels: int = 1, num_classes: int = 2, width: int = 16) -> nn.Module:
    """A small U-Net for per-pixel classes: two downsamplings, two upsamplings, skip connections.

    Input (N, in_channels, H, W) with H and W divisible by 4 (32x32 here); output (N, num_classes,
    H, W) logits, one score per class per pixel (the shape CrossEntropyLoss, a Dice loss and the
    dice/iou metrics take, with (N, H, W) integer masks)."""
    return _TinyUNet(in_channels, num_classes, width)


class _TinyUNet(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, width: int):
        super().__init__()

        def double(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
            )

        w = width
        self.enc1 = double(in_channels, w)        # H
        self.enc2 = double(w, 2 * w)              # H/2
        self.bottom = double(2 * w, 4 * w)        # H/4
        self.pool = nn.MaxPool2d(2)
        self.up2 = nn.ConvTranspose2d(4 * w, 2 * w, 2, stride=2)
        self.dec2 = double(4 * w, 2 * w)          # up2 + skip from enc2
        self.up1 = nn.ConvTranspose2d(2 * w, w, 2, stride=2)
        self.dec1 = double(2 * w, w)              # up1 + skip from enc1
        self.head = nn.Conv2d(w, num_classes, 1)

    def forward(self, x):
        e1 = self.enc1(x)
        e2 = self.enc2(self.pool(e1))
        b = self.bottom(self.pool(e2))
        d2 = self.dec2(torch.cat([self.up2(b), e2], dim=1))
        d1 = self.dec1(torch.cat([self.up1(d2), e1], dim=1))
        return self.head(d1)


def mlp(in_features: int = 10, hidden: tuple[int, ...] | list[int] = (64, 64), out_features: int = 1,
        dropout: float = 0.0) -> nn.Module:
    """The textbook multi-layer perceptron: Linear -> ReLU (-> Dropout) for each hidden width, then a
    Linear to `out_features` (raw outputs: regression values or class logits).

    Takes (N, in_features) inputs: tabular features, or images flattened by data.flatten = true
    (28x28 grey digits: in_features = 784, out_features = 10)."""
    layers: list[nn.Module] = []
    width = in_features
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        width = h
    layers.append(nn.Linear(width, out_features))
    return nn.Sequential(*layers)


def two_input_net(num_classes: int = 4, in_channels: int = 1, num_features: int = 4, width: int = 16,
                  hidden: int = 32) -> nn.Module:
    """A model with two inputs: forward(image, features). A small CNN encodes the image, an MLP the
    features; the two codes are concatenated and a linear head gives (N, num_classes) logits.

    The default step calls model(x) with one input, so a preset with this model names a step that
    unpacks its batches: [step] fn = "examples.steps:two_inputs_step"."""
    return _TwoInputNet(num_classes, in_channels, num_features, width, hidden)


class _TwoInputNet(nn.Module):
    def __init__(self, num_classes: int, in_channels: int, num_features: int, width: int, hidden: int):
        super().__init__()
        self.image = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
        )
        self.features = nn.Sequential(nn.Linear(num_features, hidden), nn.ReLU())
        self.head = nn.Sequential(nn.Linear(4 * width + hidden, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))

    def forward(self, image, features):
        return self.head(torch.cat([self.image(image), self.features(features)], dim=1))
