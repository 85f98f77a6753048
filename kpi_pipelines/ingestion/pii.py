"""Pseudonymization and masking: no raw user id, e-mail address or phone number is stored,
in any table, whatever the shape of the line it came in (docs/events.md, "Privacy").

The patterns are written once and run in DuckDB (RE2) during loads and in Python (`re`)
for single values; they use only syntax both engines read alike (`[0-9]`, not `\\d`, which
is Unicode-wide in Python and ASCII in RE2).
"""

from __future__ import annotations

import hashlib
import hmac
import re

# Letters of internationalized addresses (RFC 6531: jürgen@exämple.de): every character from
# U+00C0 up, less general and CJK punctuation. Written as the characters themselves: Python
# and RE2 share no escape for them.
_INTL = "\u00c0-\u1fff\u2070-\u2fff\u3040-\ud7ff\ue000-\U0010ffff"
_LABEL = f"[A-Za-z0-9\\-{_INTL}]+"
EMAIL_PATTERN = f"[A-Za-z0-9._%+\\-{_INTL}]+@{_LABEL}(?:\\.{_LABEL})*\\.[A-Za-z{_INTL}][A-Za-z0-9\\-{_INTL}]+"
# North-American style with separators (555-123-4567, (555)123-4567) and international
# numbers written with a leading + (+44 20 7946 0958, +44 (0)20 7946 0958). Bare digit runs
# are left alone: they are ids, prices and timestamps far more often than phone numbers.
PHONE_PATTERN = (
    r"(?:\+[0-9]{1,3}[ .\-]?)?(?:\([0-9]{3}\)[ .\-]?|[0-9]{3}[ .\-])[0-9]{3}[ .\-][0-9]{4}"
    r"|\+[0-9]{1,3}[ .\-]?(?:\(0\)[ .\-]?)?[0-9]{1,4}(?:[ .\-]?[0-9]{2,4}){2,4}"
)
EMAIL_MASK = "[email]"
PHONE_MASK = "[phone]"

_USER_ID_NAME = r"(?i:user[_-]?id)"
# A member named user_id (any case; userId, user-id) of JSON as DuckDB writes it: keys unescaped.
USER_ID_KEY = f'"{_USER_ID_NAME}"\\s*:\\s*'
# The same in a line that may be no JSON at all: also quoted with ' or bare (Python, JavaScript).
LOOSE_USER_ID_KEY = f"[\"']?\\b{_USER_ID_NAME}\\b[\"']?\\s*:\\s*"
# A member value a pattern can delimit: a string, a number or a literal, then the member's end.
# An object, a list or a broken value cannot be delimited; the text is cut there.
_SCALAR_VALUE = r"""^("(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|-?[0-9][0-9.eE+\-]*|true|false|null)\s*(?:[,}\]]|$)"""
WITHHELD_MEMBER = '"[withheld: not a string or a number; the rest of the line is not kept]"'
WITHHELD_LINE = "[withheld: the line is not valid JSON and holds \\u escapes, which can hide personal data]"

_email = re.compile(EMAIL_PATTERN)
_phone = re.compile(PHONE_PATTERN)


def pseudonymize(user_id: str, salt: str) -> str:
    """HMAC-SHA256 of the user id keyed with the salt, as hex: stable, not reversible."""
    return hmac.new(salt.encode(), user_id.encode(), hashlib.sha256).hexdigest()


def mask_text(text: str) -> str:
    """`text` with e-mail addresses, then phone numbers, masked: what `mask_sql` computes."""
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


def holds_personal_data_sql(expression: str) -> str:
    """DuckDB SQL: true when the text holds an e-mail address or a phone number."""
    return f"regexp_matches({expression}, {_sql_string(f'{EMAIL_PATTERN}|{PHONE_PATTERN}')})"


def may_hold_personal_data_sql(json_text: str) -> str:
    """DuckDB SQL: true when the JSON text may hold an e-mail address, a phone number or a
    user_id member. One scan: the texts that hold none (most) skip every other pattern."""
    return f"regexp_matches({json_text}, {_sql_string(f'{EMAIL_PATTERN}|{PHONE_PATTERN}|{USER_ID_KEY}')})"


def mask_sql(expression: str) -> str:
    """DuckDB SQL masking e-mail addresses then phone numbers in a text expression (a column:
    it is repeated)."""
    emails_masked = f"regexp_replace({expression}, {_sql_string(EMAIL_PATTERN)}, '{EMAIL_MASK}', 'g')"
    masked = f"regexp_replace({emails_masked}, {_sql_string(PHONE_PATTERN)}, '{PHONE_MASK}', 'g')"
    # One scan for either pattern first: most texts have neither, and skip both replaces.
    return f"CASE WHEN {holds_personal_data_sql(expression)} THEN {masked} ELSE {expression} END"


def holds_user_id_object_sql(json_text: str) -> str:
    """DuckDB SQL: true when a user_id member of the JSON text holds an object or a list."""
    return f"regexp_matches({json_text}, {_sql_string(USER_ID_KEY + '[{[]')})"


def pseudonymize_members_sql(text: str, salt: str, key: str = USER_ID_KEY) -> str:
    """DuckDB SQL for `text` (a column: it is repeated) with the value of every user_id member
    replaced by the pseudonym of that value, each member its own; where a member's value is
    an object, a list or broken, the text ends with a withheld marker."""
    pattern = _sql_string(key)
    members = f"list_zip(regexp_extract_all({text}, {pattern}), regexp_split_to_array({text}, {pattern})[2:])"
    scalar = _sql_string(_SCALAR_VALUE)
    value = f"regexp_extract(m[2], {scalar}, 1)"
    written = (
        f"CASE WHEN left({value}, 1) = '''' THEN {value}[2:-2] "
        f"WHEN json_valid({value}) THEN json_extract_string({value}, '$') ELSE {value} END"
    )
    member = (
        f"m[1] || CASE WHEN NOT regexp_matches(m[2], {scalar}) THEN {_sql_string(WITHHELD_MEMBER)} "
        f"WHEN {value} IN ('true', 'false', 'null') THEN m[2] "
        f"ELSE '\"' || {hmac_sql(written, salt)} || '\"' || substr(m[2], length({value}) + 1) END"
    )
    first_broken = f"list_position(list_transform({members}, lambda m: NOT regexp_matches(m[2], {scalar})), true)"
    kept = f"list_transform({members}, lambda m: {member})[1:coalesce({first_broken}, -1)]"
    return (
        f"CASE WHEN regexp_matches({text}, {pattern}) "
        f"THEN regexp_split_to_array({text}, {pattern})[1] || array_to_string({kept}, '') ELSE {text} END"
    )


def readable_line_sql(line: str, parses: str) -> str:
    """DuckDB SQL for a raw line in a form the patterns can read: as written, or, when it
    holds \\u escapes (which can spell an e-mail address or the key user_id), re-written by
    DuckDB's JSON writer with them decoded, or withheld when it does not parse."""
    return (
        f"CASE WHEN NOT contains({line}, '\\u') THEN {line} "
        f"WHEN {parses} THEN CAST(json({line}) AS VARCHAR) ELSE {_sql_string(WITHHELD_LINE)} END"
    )
