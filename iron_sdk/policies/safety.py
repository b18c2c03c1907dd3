"""PII and secret policy: scan every text of a request before it leaves (every field the
request model finds: messages, tool-call arguments, names, tool descriptions, ``user``,
``metadata``...); redact it in place, block the call, or log.

Safety fails closed: if a detector raises, the call is blocked.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

from iron_sdk.errors import RuntimeUnavailableError, SafetyViolationError
from iron_sdk.events import make_event
from iron_sdk.hookspecs import hookimpl
from iron_sdk.safety.detectors import Finding, redact, resolve
from iron_sdk.safety.scanner import Scanner, scanner_for

if TYPE_CHECKING:
    from pluggy import HookCaller

    from iron_sdk.call import LlmCall
    from iron_sdk.config import SafetyConfig
    from iron_sdk.runtime import Runtime


class SafetyPolicy:
    def __init__(self) -> None:
        self.runtime: Runtime | None = None

    @hookimpl
    def iron_configure(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def _findings(self, text: str, cfg: SafetyConfig, scanner: Scanner,
                  extra_hook: HookCaller | None) -> list[Finding]:
        """Built-in, custom-pattern and plugin (``extra_hook``: ``iron_detect`` when some
        plugin implements it) findings in ``text`` that ``cfg`` counts (allow-lists
        applied, ``cfg.kinds`` honoured), sorted and non-overlapping."""
        found = scanner.scan(text)
        if extra_hook is not None:
            extras: list[Finding] = []
            for extra in extra_hook(text=text, config=cfg):
                extras.extend(extra or ())
            if extras:
                found = resolve(found + scanner.keep(text, extras))
        return found

    @hookimpl(tryfirst=True)
    def iron_llm_request(self, call: LlmCall) -> None:
        cfg = call.session.safety
        if cfg.pii == "off" and cfg.secrets in (None, "off"):
            return
        request = call.request
        scanner = scanner_for(cfg)
        assert self.runtime is not None
        extra_hook: HookCaller | None = self.runtime.pm.hook.iron_detect
        if not extra_hook.get_hookimpls():  # only pay for the hook call when someone listens
            extra_hook = None
        kinds: Counter[str] | None = None
        blocked: set[str] = set()
        try:
            found = [(text, findings) for text in request.texts
                     if (findings := self._findings(text.value, cfg, scanner, extra_hook))]
            if not found:  # most calls
                return
            kinds = Counter()
            for text, findings in found:
                # A field the integration cannot write back is blocked, never sent as is.
                writable = call.can_redact and request.can_write(text.path)
                new = self._judge(text.value, findings, cfg, kinds, blocked, writable)
                if new is not None:
                    request.replace(text.path, new)
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
            hint = call.redact_hint
            if not call.can_redact and hint:
                raise SafetyViolationError(sorted(blocked), message=(
                    f"The prompt contains {', '.join(sorted(blocked))}; the safety policy "
                    f"would redact it, but this integration cannot rewrite the prompt, so it "
                    f"was not sent. {hint}"))
            raise SafetyViolationError(sorted(blocked))

    def _judge(self, text: str, findings: list[Finding], cfg: SafetyConfig,
               kinds: Counter[str], blocked: set[str], can_redact: bool) -> str | None:
        """Count ``findings`` of one text; return it redacted, or None when nothing is to
        be redacted."""
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
