"""Entry point (group ``iron_sdk``): the NER detector on ``iron_detect``, when enabled.

A runtime whose sessions never ask for NER never calls it: the detector joins a runtime's
``iron_detect`` hook when the first session with ``SafetyConfig(ner=True)`` starts there
(every other text of every call would otherwise pay a hook call for nothing).
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

from iron_sdk.integration import hookimpl
from iron_sdk.safety.detectors import Finding

if TYPE_CHECKING:
    from iron_sdk.config import SafetyConfig
    from iron_sdk.session import Session

log = logging.getLogger("iron_ner")
_warned = False
_lock = threading.Lock()


class NerDetectorPlugin:
    @hookimpl
    def iron_detect(self, text: str, config: SafetyConfig) -> list[Finding] | None:
        if not config.ner:
            return None
        from iron_ner.detector import NerUnavailableError, default_detector

        try:
            detector = default_detector()
        except NerUnavailableError as exc:
            global _warned
            if not _warned:  # enabled but not installed: off, said once
                _warned = True
                log.warning("SafetyConfig(ner=True) but the NER detector is unavailable: %s",
                            exc)
            return None
        return detector.find(text)


_DETECTOR = NerDetectorPlugin()


@hookimpl
def iron_session_start(session: Session) -> None:
    if not session.safety.ner:
        return
    pm = session.runtime.pm
    with _lock:
        if not pm.is_registered(_DETECTOR):
            pm.register(_DETECTOR, name="iron_ner.detector")
