"""PII and secret detection/redaction (see :mod:`iron_sdk.safety.detectors`)."""

from iron_sdk.safety.detectors import KINDS, Finding, placeholder, redact, scan

__all__ = ["KINDS", "Finding", "placeholder", "redact", "scan"]
