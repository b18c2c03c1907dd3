"""Entry point (group ``iron_sdk``): the NER detector on ``iron_detect``, when enabled."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from iron_sdk.integration import hookimpl
from iron_sdk.safety.detectors import Finding

if TYPE_CHECKING:
    from iron_sdk.config import SafetyConfig

log = logging.getLogger("iron_ner")
_warned = False


@hookimpl
def iron_detect(text: str, config: SafetyConfig) -> list[Finding] | None:
    if not config.ner:
        return None
    from iron_ner.detector import NerUnavailableError, default_detector

    try:
        detector = default_detector()
    except NerUnavailableError as exc:
        global _warned
        if not _warned:  # enabled but not installed: off, said once
            _warned = True
            log.warning("SafetyConfig(ner=True) but the NER detector is unavailable: %s", exc)
        return None
    return detector.find(text)
