"""Entry point (group iron_sdk)."""
