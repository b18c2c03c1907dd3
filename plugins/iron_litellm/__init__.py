"""iron-sdk plugin package (being written)."""
