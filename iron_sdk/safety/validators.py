"""Check-digit validators shared by the built-in detectors and custom patterns.

A validator takes the matched text (or a custom pattern's group named ``value``) and says
whether it is a real value. Custom patterns name one in ``SafetyConfig.patterns``
(``validator: luhn``).
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["VALIDATORS", "iban_ok", "luhn_ok"]

# Luhn doubles every second digit from the right; this maps a digit to its doubled digit sum.
_LUHN_DOUBLE = str.maketrans("0123456789", "0246813579")
_SEPARATORS = str.maketrans("", "", " -.")
_IBAN_DIGITS = str.maketrans({chr(c): str(c - 55) for c in range(ord("A"), ord("Z") + 1)})


def luhn_ok(value: str) -> bool:
    """Luhn (mod 10) check of the ASCII digits in ``value`` (other characters ignored)."""
    digits = value if value.isdigit() and value.isascii() else "".join(
        c for c in value if "0" <= c <= "9")
    if len(digits) < 2:
        return False
    # sum(map(ord)) - 48 per digit is the digit sum without a Python-level loop.
    doubled = digits[-2::-2].translate(_LUHN_DOUBLE)
    total = sum(map(ord, digits[-1::-2])) + sum(map(ord, doubled)) - 48 * len(digits)
    return total % 10 == 0


def iban_ok(value: str) -> bool:
    """ISO 13616 mod-97 check of an IBAN (any case, separators ignored)."""
    compact = value.translate(_SEPARATORS).upper()
    if len(compact) < 5 or not compact.isascii() or not compact.isalnum():
        return False
    rearranged = (compact[4:] + compact[:4]).translate(_IBAN_DIGITS)
    return int(rearranged) % 97 == 1


VALIDATORS: dict[str, Callable[[str], bool]] = {"luhn": luhn_ok, "iban": iban_ok}
