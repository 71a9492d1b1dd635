"""The sync engine: rules (pure), apply (uploads), download (pages of changes)."""
