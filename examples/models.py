"""Model factories a preset can name as arch = "examples.models:small_cnn"."""

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
