"""Pseudonymization and masking: no raw user id, e-mail address or phone number is stored.

The same patterns run in DuckDB (RE2) during bulk loads and in Python where a single value
is handled; both syntaxes accept them.
"""

from __future__ import annotations

import hashlib
import hmac
import re

DEVELOPMENT_SALT = "kpi-pipelines-development-salt"

EMAIL_PATTERN = r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,}"
# North-American style with separators (555-123-4567, (555) 123 4567) and international
# numbers written with a leading + (+44 20 7946 0958). Bare digit runs are left alone:
# they are ids, prices and timestamps far more often than phone numbers.
PHONE_PATTERN = (
    r"(?:\+\d{1,3}[ .\-]?)?\(?\d{3}\)?[ .\-]\d{3}[ .\-]\d{4}"
    r"|\+\d{1,3}[ .\-]?\d{1,4}(?:[ .\-]?\d{2,4}){2,4}"
)
EMAIL_MASK = "[email]"
PHONE_MASK = "[phone]"
# The user_id member of a JSON text, even when the rest of the line does not parse.
USER_ID_MEMBER = r'"user_id"\s*:\s*("(?:[^"\\]|\\.)*"|[^,}\s\]]+)'

_email = re.compile(EMAIL_PATTERN)
_phone = re.compile(PHONE_PATTERN)


def pseudonymize(user_id: str, salt: str) -> str:
    """HMAC-SHA256 of the user id keyed with the salt, as hex: stable, not reversible."""
    return hmac.new(salt.encode(), user_id.encode(), hashlib.sha256).hexdigest()


def mask_text(text: str) -> str:
    return _phone.sub(PHONE_MASK, _email.sub(EMAIL_MASK, text))


def _sql_string(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def hmac_sql(expression: str, salt: str) -> str:
    """DuckDB SQL computing `pseudonymize(expression, salt)` (RFC 2104 with SHA-256)."""
    key = salt.encode()
    if len(key) > 64:
        key = hashlib.sha256(key).digest()
    key = key.ljust(64, b"\0")
    inner = bytes(b ^ 0x36 for b in key).hex()
    outer = bytes(b ^ 0x5C for b in key).hex()
    return f"sha256(unhex('{outer}') || unhex(sha256(unhex('{inner}') || encode({expression}))))"


def mask_sql(expression: str) -> str:
    """DuckDB SQL masking e-mail addresses then phone numbers in a text expression."""
    emails_masked = f"regexp_replace({expression}, {_sql_string(EMAIL_PATTERN)}, '{EMAIL_MASK}', 'g')"
    masked = f"regexp_replace({emails_masked}, {_sql_string(PHONE_PATTERN)}, '{PHONE_MASK}', 'g')"
    # One scan for either pattern first: most texts have neither, and skip both replaces.
    either = _sql_string(f"{EMAIL_PATTERN}|{PHONE_PATTERN}")
    return f"CASE WHEN regexp_matches({expression}, {either}) THEN {masked} ELSE {expression} END"


def redact_line_sql(expression: str, salt: str) -> str:
    """DuckDB SQL for a raw line as stored among rejects: its user_id replaced by the
    pseudonym of the value written there, e-mail addresses and phone numbers masked."""
    member = _sql_string(USER_ID_MEMBER)
    written = f"trim(regexp_extract({expression}, {member}, 1), '\"')"
    replaced = (
        f"CASE WHEN regexp_matches({expression}, {member}) THEN regexp_replace({expression}, {member}, "
        f"'\"user_id\": \"' || {hmac_sql(written, salt)} || '\"', 'g') ELSE {expression} END"
    )
    return mask_sql(replaced)
