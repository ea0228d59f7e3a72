"""A textbook PyTorch loop (an MLP on scikit-learn's 8x8 digits, with `train()` and `validate()`),
made steerable with `tui_trainer.loop`: the monitor, its keys, checkpoints and `attach`.

    python examples/textbook_loop.py            # the monitor in a terminal; headless lines otherwise
    python examples/textbook_loop.py 200        # 200 epochs (default 20)

What changed against the plain loop, 7 lines (marked `# tui-trainer` below): the import, `train`
takes the run, `run.epochs` and `run.batches` instead of `range` and the bare loader, `run.log` and
`run.log_epoch`, and the last line. The plain version, for comparison:

    def train(epochs=EPOCHS):
        for epoch in range(epochs):
            model.train()
            for x, y in train_loader:
                optimizer.zero_grad()
                loss = criterion(model(x), y)
                loss.backward()
                optimizer.step()
            val_loss, val_acc = validate()
            print(f"epoch {epoch + 1}: val_loss {val_loss:.4f}, val_acc {val_acc:.1%}")
            scheduler.step()

    ...

    if __name__ == "__main__":
        train()

For a resume that is exact in the middle of an epoch (`tui_trainer.loop(..., resume="auto")`),
make the training loader with `tui_trainer.seeded_loader(train_set, batch_size=32)` instead of
`DataLoader(train_set, batch_size=32, shuffle=True)`; with the plain one a resume at an epoch
boundary is exact, and one mid-epoch says that it is not.
"""

import sys

import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import tui_trainer  # tui-trainer

EPOCHS = int(sys.argv[1]) if len(sys.argv) > 1 else 20

torch.manual_seed(0)
digits = load_digits()
x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
y = torch.tensor(digits.target)
order = torch.randperm(len(y))
train_set = TensorDataset(x[order[:1500]], y[order[:1500]])
val_set = TensorDataset(x[order[1500:]], y[order[1500:]])
train_loader = DataLoader(train_set, batch_size=32, shuffle=True)
val_loader = DataLoader(val_set, batch_size=256)

model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 10))
criterion = nn.CrossEntropyLoss()
optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=10, gamma=0.5)


def train(run, epochs=EPOCHS):  # tui-trainer
    for epoch in run.epochs(epochs):  # tui-trainer
        model.train()
        for x, y in run.batches(train_loader):  # tui-trainer
            optimizer.zero_grad()
            loss = criterion(model(x), y)
            loss.backward()
            optimizer.step()
            run.log(loss=loss)  # tui-trainer
        val_loss, val_acc = validate()
        print(f"epoch {epoch + 1}: val_loss {val_loss:.4f}, val_acc {val_acc:.1%}")
        run.log_epoch(val_loss=val_loss, val_acc=val_acc)  # tui-trainer
        scheduler.step()


def validate():
    model.eval()
    total, correct, n = 0.0, 0, 0
    with torch.no_grad():
        for x, y in val_loader:
            out = model(x)
            total += criterion(out, y).item() * len(y)
            correct += (out.argmax(dim=1) == y).sum().item()
            n += len(y)
    return total / n, correct / n


if __name__ == "__main__":
    sys.exit(tui_trainer.loop(train, model=model, optimizer=optimizer, scheduler=scheduler))  # tui-trainer
