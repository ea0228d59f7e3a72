"""`tui_trainer.fit` with everything your own: a Dataset class, a model class and a loss.

    python examples/fit_custom.py              # the monitor (in a terminal), 20 epochs on sklearn's digits
    python examples/fit_custom.py --no-ui      # the headless lines (also what you get without a terminal)
    python examples/fit_custom.py --epochs 200 # longer: time to try the keys

Keys in the monitor: space freezes/unfreezes the layer under the cursor, l lowers the LR, s saves,
p pauses, q stops after a save. The run is written to runs/digits-custom-<time>/, and
`tui-trainer attach` / `tui-trainer ls` work on it as on any run.
"""

from __future__ import annotations

import sys

import torch
from torch import nn
from torch.utils.data import Dataset


class Digits(Dataset):
    """sklearn's 8x8 digits as (image 1x8x8 in [0, 1], label); `part` "train" or "val" (a fixed split)."""

    def __init__(self, part: str = "train"):
        from sklearn.datasets import load_digits

        digits = load_digits()
        images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
        labels = torch.tensor(digits.target)
        cut = int(len(labels) * 0.8)
        self.images, self.labels = (images[:cut], labels[:cut]) if part == "train" else (images[cut:], labels[cut:])
        self.classes = [str(d) for d in range(10)]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.images[i], int(self.labels[i])


class SmallCNN(nn.Module):
    def __init__(self, classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1),
                                      nn.ReLU(), nn.AdaptiveAvgPool2d(2))
        self.head = nn.Linear(32 * 2 * 2, classes)

    def forward(self, x):
        return self.head(self.features(x).flatten(1))


class SmoothedCrossEntropy(nn.Module):
    """Cross-entropy against targets smoothed by `eps` (written out, as your own loss would be)."""

    def __init__(self, eps: float = 0.1):
        super().__init__()
        self.eps = eps

    def forward(self, logits, target):
        logp = logits.log_softmax(dim=1)
        smooth = torch.full_like(logp, self.eps / (logits.shape[1] - 1))
        smooth.scatter_(1, target.unsqueeze(1), 1.0 - self.eps)
        return -(smooth * logp).sum(dim=1).mean()


def main(argv: list[str]) -> int:
    import argparse

    import tui_trainer

    parser = argparse.ArgumentParser(description="tui_trainer.fit with your own Dataset, model and loss")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--no-ui", action="store_true", help="headless lines instead of the monitor")
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    model = SmallCNN()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.epochs)
    result = tui_trainer.fit(
        model, Digits("train"), Digits("val"),
        optimizer=optimizer, loss=SmoothedCrossEntropy(0.1), scheduler=scheduler,
        metrics=["accuracy", "f1"],
        name="digits-custom", epochs=args.epochs, batch_size=32, log_every=5, device="cpu",
        ui=False if args.no_ui else None,
    )
    print(f"{result.status}: best {result.monitor} {result.best} -> {result.best_path}")
    return result.exit_code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
