"""TOTP codes (RFC 6238: 30-second steps, 6 digits, pyotp's defaults) and the step each one is
for. A code is good once (RFC 6238 §5.2): the step of the last code used is folded into the
user (``totp_last_step``) through the log, and a code of that step or an earlier one is
refused, on every node and after a restart alike."""

from __future__ import annotations

import hmac

import pyotp

DRIFT_STEPS = 1  # a code of the step before or after the current one is accepted (clock drift)


def step_of(secret: str, code: object, now: float) -> int | None:
    """The time step whose code ``code`` is, within ``DRIFT_STEPS`` of the step of ``now``
    (Unix seconds); None when it is none of them (or not a string of digits)."""
    if not isinstance(code, str) or not (code.isascii() and code.isdigit()):
        return None
    totp = pyotp.TOTP(secret)
    current = totp.timecode(now)
    for step in range(current - DRIFT_STEPS, current + DRIFT_STEPS + 1):
        if hmac.compare_digest(totp.generate_otp(step), code):
            return step
    return None
