"""The event contract (docs/events.md), written once as data and compiled to SQL.

Validation runs inside DuckDB over the raw lines of a file: `from_json` parses each line
into its envelope and metadata members, kept as JSON fragments (one column per field a rule
names), then each rule is a test of its fragment. The reasons name the field and what was
expected, so a person can fix the producer.
"""

from __future__ import annotations

from dataclasses import dataclass

EVENT_TYPES = ("search", "generation", "review", "data_quality", "system_performance", "business")
SOURCES = ("api", "dashboard", "system", "external")
NUMBER_TYPES = "('BIGINT', 'UBIGINT', 'DOUBLE')"
INTEGER_TYPES = "('BIGINT', 'UBIGINT')"

# ISO-8601 date and time with a zone designator (Z or an offset); DuckDB's cast then
# rejects impossible dates such as February 30.
# PostgreSQL text and JSONB cannot hold U+0000: such a line is rejected on both backends alike.
NUL_ESCAPE = "'\\u0000'"
TIMESTAMP_TEXT = "ISO-8601 date and time with a zone (`Z`, `+05:30`, `-0800`, `+02`), stored in UTC"
ISO_TIMESTAMP = r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?([Zz]|[+-]\d{2}(:?\d{2})?)$"


@dataclass(frozen=True)
class Rule:
    field: str  # dotted path below the envelope, e.g. "metadata.query_id"
    kind: str  # text | string | number | integer | array | string_array | object | choice
    required: bool = True
    choices: tuple[str, ...] = ()
    minimum: float | None = None
    maximum: float | None = None

    @property
    def path(self) -> str:
        return "$." + self.field


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
        Rule("metadata.query", "string"),
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
        if rule.minimum is not None:
            bounds += f" AND {number} >= {rule.minimum}"
            bound_text = f" >= {rule.minimum:g}"
        if rule.maximum is not None:
            bounds += f" AND {number} <= {rule.maximum}"
            bound_text = f" between {rule.minimum:g} and {rule.maximum:g}"
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
        present = f"{f} IS NOT NULL AND coalesce({condition}, false)"
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
            f"root = 'OBJECT' AND NOT contains(line, {NUL_ESCAPE}) AND event_time IS NOT NULL "
            f"AND {self._all(ENVELOPE)} AND {experiment} "
            f"AND CASE {self.fragment('type')} {type_branches} ELSE false END"
        )

    def _reason(self, rule: Rule, applies: str) -> str:
        f = self.fragment(rule.field)
        condition, expected = self._check(rule)
        shown = (
            f"CASE left({f}, 1) WHEN '\"' THEN left({f}, 62) WHEN '{{' THEN 'an object' WHEN '[' THEN 'a list' "
            f"ELSE left({f}, 40) END"
        )
        missing = f"WHEN {f} IS NULL THEN {_sql_string(rule.field + ': required')}" if rule.required else (
            f"WHEN {f} IS NULL THEN NULL"
        )
        return (
            f"CASE WHEN NOT coalesce({applies}, false) THEN NULL {missing} "
            f"WHEN NOT coalesce({condition}, false) THEN "
            f"{_sql_string(rule.field + ': expected ' + expected + ', got ')} || {shown} END"
        )

    def reason(self) -> str:
        """Why a line is rejected: every rule it breaks, joined with '; '."""
        parts = [self._reason(rule, self._applies(t, a)) for rule, t, a in _gated_rules()]
        ts = self.fragment("timestamp")
        parts.append(
            f"CASE WHEN {self._check(Rule('timestamp', 'text'))[0]} AND event_time IS NULL THEN "
            f"'timestamp: expected ISO-8601 with a time zone (e.g. 2026-01-31T23:59:00+02:00), got ' || left({ts}, 62) END"
        )
        return (
            "CASE WHEN line IS NULL OR trim(line) = '' THEN 'empty line' "
            "WHEN root IS NULL THEN 'invalid JSON: the line does not parse' "
            "WHEN root <> 'OBJECT' THEN 'not a JSON object: each line must be one event object' "
            f"WHEN contains(line, {NUL_ESCAPE}) THEN 'a string holds the NUL character U+0000, which cannot be stored' "
            "ELSE concat_ws('; ', " + ",\n".join(parts) + ") END"
        )

    def event_time(self) -> str:
        ts = self.value("timestamp")
        return (
            f"CASE WHEN regexp_full_match(trim({ts}), {_sql_string(ISO_TIMESTAMP)}) "
            f"THEN timezone('UTC', TRY_CAST(trim({ts}) AS TIMESTAMPTZ)) END"
        )


def describe_contract() -> str:
    """The rules as a Markdown table (docs/events.md is generated from it)."""
    lines = ["| type | action | field | expected | required |", "| --- | --- | --- | --- | --- |"]
    sql = ValidationSQL()
    for rule, event_type, action in _gated_rules():
        shown_type = "any" if event_type in (None, "*experiment") else event_type
        expected = TIMESTAMP_TEXT if rule.field == "timestamp" else sql._check(rule)[1]
        lines.append(
            f"| {shown_type} | {action or 'any'} | `{rule.field}` | {expected} | "
            f"{'yes' if rule.required else 'no'} |"
        )
    return "\n".join(lines)
