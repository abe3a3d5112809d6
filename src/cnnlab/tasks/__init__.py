"""One module per command: a typed config dataclass and the function that runs it."""
