"""The event contract (docs/events.md), written once as data and compiled to SQL.

Validation runs inside DuckDB over the raw lines of a file: `from_json` parses each line
into its envelope and metadata members, kept as JSON fragments (one column per field a rule
names), then each rule is a test of its fragment. The reasons name the field and what was
expected, so a person can fix the producer.

Every limit (docs/events.md, "Limits") is one that a later stage needs: an accepted event
must never fail the staging model's casts, PostgreSQL's index entries or its JSONB parser,
or a sum over it; that would stall the whole file or materialization, not just the event.
"""

from __future__ import annotations

from dataclasses import dataclass

from kpi_pipelines.first_day import EARLIEST_FIRST_DAY

EVENT_TYPES = ("search", "generation", "review", "data_quality", "system_performance", "business")
SOURCES = ("api", "dashboard", "system", "external")

# Lines longer than this are rejected unread (the API answers 413 for such an event).
MAX_LINE_BYTES = 8 * 1024 * 1024
LONG_LINE_KEPT_CHARS = 1024  # of a longer line, in rejected_events.raw_text
# \udXXX of the surrogate range (a valid pair parses; only a line that does not is asked)
LONE_SURROGATE = r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}"
# Ids and names: PostgreSQL indexes event ids (a B-tree entry holds at most about 2,700 bytes).
MAX_ID_CHARS = 256
MAX_TEXT_CHARS = 4096  # free text (metadata.query)
# Levels of JSON nesting of an event, the event object being level 1: PostgreSQL parses JSONB
# recursively and fails the whole file past a few thousand levels ("stack depth limit exceeded").
MAX_DEPTH = 32
MAX_NUMBER = 1e15  # |x| of a number field: sums and squares over billions of events stay finite
MAX_INTEGER = 2**31 - 1  # integer fields are INTEGER columns in stg_events
# The earliest accepted event time: the earliest day KPI_FIRST_DAY may name, so an accepted
# event dated before the configured first day is stored, reported by the load, and counted
# once KPI_FIRST_DAY is moved back (kpi_pipelines/first_day.py).
EARLIEST_TIME = EARLIEST_FIRST_DAY.isoformat()
# The latest accepted event time: evaluated by each load (and each API batch), not frozen.
LATEST_TIME = "timezone('UTC', now()) + INTERVAL 1 DAY"

# ISO-8601 date and time with a zone designator (Z or an offset up to ±14:00, the widest in
# use); DuckDB's cast then rejects impossible dates such as February 30.
# PostgreSQL text and JSONB cannot hold U+0000: such a line is rejected on both backends alike.
NUL_ESCAPE = "'\\u0000'"
# A real \u0000 escape: preceded by an even number of backslashes (`\\u0000` is a backslash
# followed by the text u0000, which is fine).
NUL_ESCAPE_PATTERN = r"(?:^|[^\\])(?:\\\\)*\\u0000"
STRING_TOKEN = r'"(?:[^"\\]|\\.)*"'
# a JSON number no double holds (PostgreSQL's numeric refuses exponents past ~131,000)
HUGE_NUMBER = r"[0-9][eE][+-]?[0-9]{4}|[0-9]{310}"
TIMESTAMP_TEXT = (
    "ISO-8601 date and time with a zone (`Z`, `+05:30`, `-0800`, `+02`; offsets up to ±14:00), "
    f"from {EARLIEST_TIME} to 1 day after the load, stored in UTC"
)
ISO_TIMESTAMP = (
    r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?([Zz]|[+-]((0\d|1[0-3])(:?[0-5]\d)?|14(:?00)?))$"
)


@dataclass(frozen=True)
class Rule:
    field: str  # dotted path below the envelope, e.g. "metadata.query_id"
    kind: str  # text | string | number | integer | array | string_array | object | choice
    required: bool = True
    choices: tuple[str, ...] = ()
    minimum: float | None = None
    maximum: float | None = None
    max_length: int = MAX_ID_CHARS  # characters of a string, or of each string of a list

    @property
    def path(self) -> str:
        return "$." + self.field

    @property
    def bounds(self) -> tuple[float, float] | None:
        """(lowest, highest) accepted value of a number or integer field."""
        limit = {"number": MAX_NUMBER, "integer": MAX_INTEGER}.get(self.kind)
        if limit is None:
            return None
        return (-limit if self.minimum is None else self.minimum, limit if self.maximum is None else self.maximum)


ENVELOPE = [
    Rule("id", "text"),
    Rule("type", "choice", choices=EVENT_TYPES),
    Rule("timestamp", "text"),
    Rule("session_id", "text"),
    Rule("user_id", "string", required=False),
    Rule("source", "choice", choices=SOURCES),
    Rule("metadata", "object"),
    Rule("metadata.experiment", "object", required=False),
]

EXPERIMENT = [Rule("metadata.experiment.id", "text"), Rule("metadata.experiment.variant", "text")]

# (event type, action or None for every action) -> rules for its metadata
METADATA: dict[tuple[str, str | None], list[Rule]] = {
    ("search", None): [Rule("metadata.action", "choice", choices=("query", "click", "feedback"))],
    ("search", "query"): [
        Rule("metadata.query_id", "text"),
        Rule("metadata.query", "string", max_length=MAX_TEXT_CHARS),
        Rule("metadata.result_ids", "string_array"),
        Rule("metadata.response_time_ms", "number", minimum=0),
        Rule("metadata.refinement_of", "text", required=False),
    ],
    ("search", "click"): [
        Rule("metadata.query_id", "text"),
        Rule("metadata.product_id", "text"),
        Rule("metadata.position", "integer", minimum=1),
    ],
    ("search", "feedback"): [
        Rule("metadata.query_id", "text"),
        Rule("metadata.satisfaction", "integer", minimum=1, maximum=5),
    ],
    ("generation", None): [
        Rule("metadata.generation_id", "text"),
        Rule("metadata.product_id", "text"),
        Rule("metadata.model", "text"),
        Rule("metadata.latency_ms", "number", minimum=0),
        Rule("metadata.status", "choice", choices=("success", "error")),
    ],
    ("review", None): [
        Rule("metadata.generation_id", "text"),
        Rule("metadata.product_id", "text"),
        Rule("metadata.decision", "choice", choices=("approved", "rejected", "edited")),
        Rule("metadata.review_time_ms", "number", minimum=0),
    ],
    ("business", None): [Rule("metadata.action", "choice", choices=("order",))],
    ("business", "order"): [
        Rule("metadata.order_id", "text"),
        Rule("metadata.revenue", "number", minimum=0),
        Rule("metadata.currency", "text"),
        Rule("metadata.product_ids", "string_array"),
    ],
    ("system_performance", None): [
        Rule("metadata.service", "text"),
        Rule("metadata.endpoint", "text"),
        Rule("metadata.latency_ms", "number", minimum=0),
        Rule("metadata.status_code", "integer", minimum=100, maximum=599),
    ],
    ("data_quality", None): [
        Rule("metadata.table", "text"),
        Rule("metadata.check", "text"),
        Rule("metadata.value", "number"),
    ],
}


def _sql_string(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _json_string(text: str) -> str:
    """SQL literal of a JSON string fragment, as `from_json` renders a member."""
    return _sql_string('"' + text + '"')


def _number_text(x: float) -> str:
    """A bound as people write it: 2147483647, 1e15."""
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e12 else f"{x:g}".replace("e+", "e")


def _length_text(rule: Rule) -> str:
    if rule.kind in ("text", "string"):
        return f", at most {rule.max_length} characters"
    if rule.kind == "string_array":
        return f", each at most {rule.max_length} characters"
    return ""


def _nesting(levels: int) -> str:
    """RE2 pattern of balanced brackets nested at most `levels` deep."""
    pattern = ""
    for _ in range(levels):
        pattern = f"(?:[\\[{{]{pattern}[\\]}}])*"
    return pattern


def _struct(members: list[str]) -> str:
    """A `from_json` structure keeping each member as a JSON fragment."""
    return _sql_string("{" + ", ".join(f'"{name}": "JSON"' for name in members) + "}")


def _gated_rules() -> list[tuple[Rule, str | None, str | None]]:
    """Every rule with the event type and action it applies to (None: any)."""
    out: list[tuple[Rule, str | None, str | None]] = [(rule, None, None) for rule in ENVELOPE]
    out += [(rule, "*experiment", None) for rule in EXPERIMENT]
    for (event_type, action), rules in METADATA.items():
        out += [(rule, event_type, action) for rule in rules]
    return out


class ValidationSQL:
    """SQL over a parsed line. `e`, the envelope, and `m`, the metadata, are structs whose
    members are JSON fragments (NULL when absent); `fragment_columns()` turns every field a
    rule names into a text column ("f.<field>"), so each check is a cheap test of a short
    string and the statement stays small (DuckDB binds and optimizes it on every call, a
    fixed cost the collector pays per batch). `valid()` is evaluated for every line;
    `reason()` only for the lines it rejects."""

    def __init__(self) -> None:
        self.fields = list(dict.fromkeys(rule.field for rule, _, _ in _gated_rules()))
        envelope = [field for field in self.fields if "." not in field]
        metadata = [field.split(".")[1] for field in self.fields if field.count(".") == 1]
        self.envelope_struct = _struct(envelope)
        self.metadata_struct = _struct(metadata)

    def fragment_columns(self) -> str:
        """The projection of every field's fragment from `e` and `m`, as text."""
        columns = []
        for field in self.fields:
            parts = field.split(".")
            if len(parts) == 1:
                source = f'e."{parts[0]}"'
            elif len(parts) == 2:
                source = f'm."{parts[1]}"'
            else:
                source = f'json_extract(m."{parts[1]}", {_sql_string("$." + ".".join(parts[2:]))})'
            columns.append(f"CAST({source} AS VARCHAR) AS {self.fragment(field)}")
        return ", ".join(columns)

    @staticmethod
    def fragment(field: str) -> str:
        return f'"f.{field}"'

    def value(self, field: str) -> str:
        """The text of a string member (JSON unescaped)."""
        f = self.fragment(field)
        return f"CASE WHEN left({f}, 1) = '\"' THEN json_extract_string({f}, '$') END"

    def _check(self, rule: Rule) -> tuple[str, str]:
        """(SQL condition that holds when the present fragment is valid, expectation text)."""
        f = self.fragment(rule.field)
        number = f"TRY_CAST({f} AS DOUBLE)"
        bounds = ""
        bound_text = ""
        if rule.bounds is not None:
            low, high = rule.bounds
            # NaN sorts above every number in DuckDB: the upper bound rejects it (and Infinity)
            bounds = f" AND {number} BETWEEN {low!r} AND {high!r}"
            bound_text = f" between {_number_text(low)} and {_number_text(high)}"
        if rule.kind == "text":
            # blank: only spaces between the quotes (as DuckDB's trim), tested on the fragment
            return f"left({f}, 1) = '\"' AND NOT regexp_full_match({f}, '\" *\"')", "a non-empty string"
        if rule.kind == "string":
            return f"left({f}, 1) = '\"'", "a string"
        if rule.kind == "number":
            return f"{number} IS NOT NULL{bounds}", "a number" + bound_text
        if rule.kind == "integer":
            return f"regexp_full_match({f}, '-?[0-9]+'){bounds}", "an integer" + bound_text
        if rule.kind == "object":
            return f"left({f}, 1) = '{{'", "an object"
        if rule.kind == "choice":
            choices = ", ".join(_json_string(c) for c in rule.choices)
            return f"{f} IN ({choices})", "one of " + ", ".join(rule.choices)
        if rule.kind == "string_array":
            elements = f"json_type({f}, '$[*]')"
            return (
                f"left({f}, 1) = '[' AND coalesce(list_bool_and(list_transform({elements}, lambda x: x = 'VARCHAR')), true)",
                "a list of strings",
            )
        raise ValueError(f"unknown rule kind {rule.kind}")

    def _length(self, rule: Rule) -> tuple[str, str] | None:
        """(SQL condition that holds when each string of the well-typed fragment has at most
        max_length characters, SQL of the longest one's length). The exact count only when
        the fragment's bytes could exceed the limit (a character is at least one byte): a CASE,
        as DuckDB evaluates both sides of an AND or OR outside a filter."""
        f = self.fragment(rule.field)
        short = f"strlen({f}) <= {rule.max_length + 2}"
        if rule.kind in ("text", "string"):
            longest = f"length(json_extract_string({f}, '$'))"
        elif rule.kind == "string_array":
            longest = f"coalesce(list_max(list_transform(json_extract_string({f}, '$[*]'), lambda x: length(x))), 0)"
        else:
            return None
        return f"CASE WHEN {short} THEN true ELSE {longest} <= {rule.max_length} END", longest

    def _applies(self, event_type: str | None, action: str | None) -> str:
        if event_type is None:
            return "true"
        if event_type == "*experiment":
            return f"left({self.fragment('metadata.experiment')}, 1) = '{{'"
        condition = f"{self.fragment('type')} = {_json_string(event_type)}"
        if action is not None:
            condition += f" AND {self.fragment('metadata.action')} = {_json_string(action)}"
        return condition

    def _holds(self, rule: Rule) -> str:
        f = self.fragment(rule.field)
        condition, _ = self._check(rule)
        length = self._length(rule)
        present = f"{f} IS NOT NULL AND coalesce({condition}, false)"
        if length is not None:
            present += f" AND coalesce({length[0]}, false)"
        return present if rule.required else f"({f} IS NULL OR ({present}))"

    def _all(self, rules: list[Rule]) -> str:
        return "(" + " AND ".join(self._holds(rule) for rule in rules) + ")" if rules else "true"

    def valid(self) -> str:
        """True when the line is an event object satisfying every rule and its timestamp parses.
        Nested CASEs on type and action: each line evaluates only its own type's rules."""
        by_type: dict[str, str] = {}
        for event_type in dict.fromkeys(t for t, _ in METADATA):
            actions = [(a, rules) for (t, a), rules in METADATA.items() if t == event_type and a is not None]
            per_action = "true"
            if actions:
                branches = " ".join(f"WHEN {_json_string(a)} THEN {self._all(rules)}" for a, rules in actions)
                per_action = f"CASE {self.fragment('metadata.action')} {branches} ELSE false END"
            by_type[event_type] = f"{self._all(METADATA.get((event_type, None), []))} AND {per_action}"
        type_branches = " ".join(f"WHEN {_json_string(t)} THEN {check}" for t, check in by_type.items())
        experiment = f"(NOT coalesce({self._applies('*experiment', None)}, false) OR {self._all(EXPERIMENT)})"
        return (
            f"root = 'OBJECT' AND NOT {self.nul_escape()} AND event_time IS NOT NULL AND {self.in_time_range()} "
            f"AND {self._all(ENVELOPE)} AND {experiment} "
            f"AND CASE {self.fragment('type')} {type_branches} ELSE false END "
            f"AND CASE WHEN {self._plain_metadata()} THEN true ELSE NOT {self.too_deep()} AND NOT {self.not_finite()} END"
        )

    def _accounted(self, rules: list[Rule]) -> str:
        """Bytes of the compact metadata text taken by these rules' members when present:
        `"key":value` and a separator each."""
        terms = [
            f"coalesce(strlen({self.fragment(rule.field)}) + {len(rule.field.split('.')[1]) + 4}, 0)"
            for rule in rules
            if rule.field.count(".") == 1
        ]
        return " + ".join(terms) or "0"

    def _plain_metadata(self) -> str:
        """True when the metadata's compact text is exactly the members its type's rules
        check, and the experiment exactly its id and variant: in a valid line those are
        strings and finite numbers, so the nesting and NaN tests (a few string scans each)
        are skipped for the usual event."""
        per_type = []
        for event_type in dict.fromkeys(t for t, _ in METADATA):
            common = METADATA.get((event_type, None), [])
            actions = [(a, rules) for (t, a), rules in METADATA.items() if t == event_type and a is not None]
            total = self._accounted(common)
            if actions:
                branches = " ".join(f"WHEN {_json_string(a)} THEN {self._accounted(common + rules)}" for a, rules in actions)
                total = f"CASE {self.fragment('metadata.action')} {branches} ELSE 0 END"
            per_type.append(f"WHEN {_json_string(event_type)} THEN {total}")
        experiment, identity, variant = (self.fragment(f"metadata.experiment{part}") for part in ("", ".id", ".variant"))
        return (
            f"strlen({self.fragment('metadata')}) = 1 + CASE {self.fragment('type')} {' '.join(per_type)} ELSE 0 END "
            f"+ coalesce(strlen({experiment}) + 14, 0) "
            f"AND coalesce(strlen({experiment}) = 18 + strlen({identity}) + strlen({variant}), true)"
        )

    @staticmethod
    def nul_escape() -> str:
        """True when a string of the line holds a \\u0000 escape (the regex only for lines
        that hold the text at all)."""
        return f"CASE WHEN contains(line, {NUL_ESCAPE}) THEN regexp_matches(line, {_sql_string(NUL_ESCAPE_PATTERN)}) ELSE false END"

    @staticmethod
    def in_time_range() -> str:
        return f"event_time BETWEEN TIMESTAMP '{EARLIEST_TIME}' AND {LATEST_TIME}"

    def too_deep(self) -> str:
        """True when the metadata nests deeper than MAX_DEPTH - 1 levels (the event object is
        the first). Exact only for metadata with that many opening brackets: strings are
        removed, the brackets kept and matched against a pattern of bounded nesting."""
        m = self.fragment("metadata")
        levels = MAX_DEPTH - 1
        openers = f"strlen({m}) - strlen(replace(replace({m}, '{{', ''), '[', ''))"
        brackets = f"regexp_replace(regexp_replace({m}, {_sql_string(STRING_TOKEN)}, '', 'g'), '[^{{}}\\[\\]]', '', 'g')"
        return f"CASE WHEN {openers} > {levels} THEN NOT regexp_full_match({brackets}, {_sql_string(_nesting(levels))}) ELSE false END"

    def not_finite(self) -> str:
        """True when the metadata holds NaN, an infinity (any case, as DuckDB's JSON reader
        takes them) or a number beyond a double (a 4-digit exponent, 310 digits):
        PostgreSQL's JSONB refuses them, failing the whole file. Exact (outside strings)
        only for metadata holding such text at all; called only for metadata with members
        the contract does not check (`_plain_metadata`)."""
        m = self.fragment("metadata")
        stripped = f"lower(regexp_replace({m}, {_sql_string(STRING_TOKEN)}, '', 'g'))"
        huge = _sql_string(HUGE_NUMBER)
        return (
            f"CASE WHEN {m} ILIKE '%nan%' OR {m} ILIKE '%inf%' OR regexp_matches({m}, {huge}) "
            f"THEN contains({stripped}, 'nan') OR contains({stripped}, 'inf') OR regexp_matches({stripped}, {huge}) "
            f"ELSE false END"
        )

    def _reason(self, rule: Rule, applies: str) -> str:
        f = self.fragment(rule.field)
        condition, expected = self._check(rule)
        length = self._length(rule)
        each = " each" if rule.kind == "string_array" else ""
        too_long = (
            f"WHEN NOT coalesce({length[0]}, false) THEN "
            f"{_sql_string(f'{rule.field}: expected at most {rule.max_length} characters{each}, got ')} || {length[1]} "
            if length is not None
            else ""
        )
        # A user id is never quoted.
        shown = (
            f"CASE WHEN left({f}, 1) = '{{' THEN 'an object' WHEN left({f}, 1) = '[' THEN 'a list' "
            + (
                f"WHEN left({f}, 1) IN ('t', 'f') THEN 'a boolean' ELSE 'a number' END"
                if rule.field == "user_id"
                else f"ELSE {self._quoted(f)} END"
            )
        )
        missing = f"WHEN {f} IS NULL THEN {_sql_string(rule.field + ': required')}" if rule.required else (
            f"WHEN {f} IS NULL THEN NULL"
        )
        return (
            f"CASE WHEN NOT coalesce({applies}, false) THEN NULL {missing} "
            f"WHEN NOT coalesce({condition}, false) THEN "
            f"{_sql_string(rule.field + ': expected ' + expected + ', got ')} || {shown} {too_long}END"
        )

    @staticmethod
    def _quoted(fragment: str) -> str:
        """A value for a reason, quoted whole or not at all: a cut one could end inside an
        e-mail address, which the loader's masking of the reason would then miss."""
        return f"CASE WHEN length({fragment}) <= 62 THEN {fragment} ELSE 'a value of ' || length({fragment}) || ' characters' END"

    def reason(self) -> str:
        """Why a line is rejected: every rule it breaks, joined with '; '."""
        parts = [self._reason(rule, self._applies(t, a)) for rule, t, a in _gated_rules()]
        ts = self.fragment("timestamp")
        parts.append(
            f"CASE WHEN {self._check(Rule('timestamp', 'text'))[0]} AND event_time IS NULL THEN "
            "'timestamp: expected ISO-8601 with a time zone (Z or an offset up to ±14:00, "
            f"e.g. 2026-01-31T23:59:00+02:00), got ' || {self._quoted(ts)} "
            f"WHEN NOT {self.in_time_range()} THEN 'timestamp: expected from {EARLIEST_TIME}T00:00:00Z to 1 day after "
            f"the load (' || strftime({LATEST_TIME}, '%Y-%m-%dT%H:%M:%SZ') || '), got ' || {self._quoted(ts)} END"
        )
        parts.append(f"CASE WHEN {self.too_deep()} THEN 'metadata: nested deeper than {MAX_DEPTH} levels' END")
        parts.append(
            f"CASE WHEN {self.not_finite()} THEN 'metadata: expected numbers a double holds, got NaN, Infinity or beyond ±1.8e308' END"
        )
        # line_bytes and nul_byte: the loader's stage (the line itself is cut or cleaned there)
        return (
            f"CASE WHEN line_bytes > {MAX_LINE_BYTES} THEN 'line longer than {MAX_LINE_BYTES} bytes "
            f"(' || line_bytes || '): not read, its first {LONG_LINE_KEPT_CHARS} characters kept' "
            "WHEN line IS NULL OR trim(line) = '' THEN 'empty line' "
            "WHEN nul_byte THEN 'the line holds a NUL byte, which is not text (shown as U+FFFD)' "
            f"WHEN root IS NULL AND regexp_matches(line, {_sql_string(LONE_SURROGATE)}) THEN "
            "'invalid JSON: a \\u escape of a lone surrogate (U+D800 to U+DFFF) is not text' "
            "WHEN root IS NULL THEN 'invalid JSON: the line does not parse' "
            "WHEN root <> 'OBJECT' THEN 'not a JSON object: each line must be one event object' "
            f"WHEN {self.nul_escape()} THEN 'a string holds the NUL character U+0000, which cannot be stored' "
            "ELSE concat_ws('; ', " + ",\n".join(parts) + ") END"
        )

    def event_time(self) -> str:
        ts = self.value("timestamp")
        return (
            f"CASE WHEN regexp_full_match(trim({ts}), {_sql_string(ISO_TIMESTAMP)}) "
            f"THEN timezone('UTC', TRY_CAST(upper(trim({ts})) AS TIMESTAMPTZ)) END"
        )


def describe_contract() -> str:
    """The rules as a Markdown table (docs/events.md is generated from it)."""
    lines = ["| type | action | field | expected | required |", "| --- | --- | --- | --- | --- |"]
    sql = ValidationSQL()
    for rule, event_type, action in _gated_rules():
        shown_type = "any" if event_type in (None, "*experiment") else event_type
        expected = TIMESTAMP_TEXT if rule.field == "timestamp" else sql._check(rule)[1] + _length_text(rule)
        lines.append(
            f"| {shown_type} | {action or 'any'} | `{rule.field}` | {expected} | "
            f"{'yes' if rule.required else 'no'} |"
        )
    return "\n".join(lines)
