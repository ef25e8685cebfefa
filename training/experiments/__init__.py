"""One-off measurements behind a setting (for example the near-duplicate threshold)."""
