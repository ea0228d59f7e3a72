"""tui-trainer: a terminal training monitor for PyTorch that you can steer."""

__version__ = "0.1.0"
