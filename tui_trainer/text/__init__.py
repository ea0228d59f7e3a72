"""Plain-text helpers both faces use: durations, sizes, one wording for every event line
(`format`), and the braille line plot (`plot`). Below `run` and `ui`; never imports textual."""
