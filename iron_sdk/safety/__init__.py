"""PII and secret detection/redaction.

- :mod:`iron_sdk.safety.detectors`: the built-in detectors (``scan``, ``redact``);
- :mod:`iron_sdk.safety.normalize`: undoing disguises (NFKC, zero-width, Unicode digits,
  encoded ``@``) with a map back to the original offsets;
- :mod:`iron_sdk.safety.scanner`: the detector set of one ``SafetyConfig`` (custom patterns,
  allow-lists) and the config in force for ``iron_detect`` plugins;
- :mod:`iron_sdk.safety.stream`: redaction of streamed text and tool-call arguments;
- :mod:`iron_sdk.safety.validators`: check digits (Luhn, IBAN).
"""

from iron_sdk.safety.detectors import KINDS, Finding, placeholder, redact, scan
from iron_sdk.safety.scanner import Scanner, scanner_for
from iron_sdk.safety.stream import StreamRedactor, ToolArgumentsRedactor

__all__ = ["KINDS", "Finding", "Scanner", "StreamRedactor", "ToolArgumentsRedactor",
           "placeholder", "redact", "scan", "scanner_for"]
