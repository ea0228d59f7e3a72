"""The Textual face of tui-trainer. The engine never imports this package."""
