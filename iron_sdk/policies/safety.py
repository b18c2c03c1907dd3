"""PII and secret policy: scan every prompt text before it leaves; redact, block or log.

Safety fails closed: if a detector raises, the call is blocked.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

from iron_sdk.errors import RuntimeUnavailableError, SafetyViolationError
from iron_sdk.events import make_event
from iron_sdk.hookspecs import hookimpl
from iron_sdk.safety.detectors import Finding, redact, resolve
from iron_sdk.safety.scanner import scanner_for, using_config

if TYPE_CHECKING:
    from iron_sdk.call import LlmCall
    from iron_sdk.config import SafetyConfig
    from iron_sdk.runtime import Runtime


class SafetyPolicy:
    def __init__(self) -> None:
        self.runtime: Runtime | None = None

    @hookimpl
    def iron_configure(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def _findings(self, text: str, cfg: SafetyConfig) -> list[Finding]:
        """Built-in, custom-pattern and plugin findings in ``text`` that ``cfg`` counts
        (allow-lists applied, ``cfg.kinds`` honoured), sorted and non-overlapping."""
        scanner = scanner_for(cfg)
        found = scanner.scan(text)
        assert self.runtime is not None
        extra_hook = self.runtime.pm.hook.iron_detect
        if extra_hook.get_hookimpls():  # only pay for the hook call when someone listens
            extras: list[Finding] = []
            with using_config(cfg):  # plugins read it with iron_sdk.safety.current_config()
                for extra in extra_hook(text=text):
                    extras.extend(extra or ())
            if extras:
                found = resolve(found + scanner.keep(text, extras))
        return found

    @hookimpl(tryfirst=True)
    def iron_llm_request(self, call: LlmCall) -> None:
        cfg = call.session.safety
        if cfg.pii == "off" and cfg.secrets in (None, "off"):
            return
        kinds: Counter[str] = Counter()
        blocked: set[str] = set()
        # An integration that cannot rewrite the prompt (a LangChain callback) sets
        # metadata can_redact=False: what would be redacted is blocked instead.
        can_redact = call.metadata.get("can_redact", True)
        try:
            for i, message in enumerate(call.messages):
                new_content = self._scan_content(message.get("content"), cfg, kinds, blocked,
                                                 can_redact)
                if new_content is not None:
                    call.messages[i] = {**message, "content": new_content}
                    call.redacted = True
        except Exception as exc:
            raise RuntimeUnavailableError(
                "The PII/secret scan failed, so the call was blocked (safety fails closed)."
            ) from exc
        if not kinds:
            return
        call.findings = sorted(kinds)
        action = "block" if blocked else ("redact" if call.redacted else "log")
        assert self.runtime is not None
        self.runtime.emit(make_event(
            "pii_detected", call_id=call.call_id, session_id=call.session.session_id,
            agent_id=call.agent_id, model=call.model, kinds=dict(kinds), action=action))
        if blocked:
            hint = call.metadata.get("redact_hint")
            if not can_redact and hint:
                raise SafetyViolationError(sorted(blocked), message=(
                    f"The prompt contains {', '.join(sorted(blocked))}; the safety policy "
                    f"would redact it, but this integration cannot rewrite the prompt, so it "
                    f"was not sent. {hint}"))
            raise SafetyViolationError(sorted(blocked))

    def _scan_content(self, content: Any, cfg: SafetyConfig, kinds: Counter[str],
                      blocked: set[str], can_redact: bool) -> Any:
        """Scan one message content (string or parts); return the redacted content or None."""
        if isinstance(content, str):
            return self._scan_text(content, cfg, kinds, blocked, can_redact)
        if isinstance(content, list):
            changed, parts = False, []
            for part in content:
                text = part.get("text") if isinstance(part, dict) else None
                new = (self._scan_text(text, cfg, kinds, blocked, can_redact)
                       if isinstance(text, str) else None)
                if new is not None:
                    part, changed = {**part, "text": new}, True
                parts.append(part)
            return parts if changed else None
        return None

    def _scan_text(self, text: str, cfg: SafetyConfig, kinds: Counter[str],
                   blocked: set[str], can_redact: bool) -> str | None:
        findings = self._findings(text, cfg)
        to_redact = []
        for f in findings:
            action = cfg.action_for(f.kind)
            if action == "off":
                continue
            kinds[f.kind] += 1
            if action == "block" or (action == "redact" and not can_redact):
                blocked.add(f.kind)
            elif action == "redact":
                to_redact.append(f)
        return redact(text, to_redact) if to_redact else None

