"""The few SQL spellings that differ between DuckDB and PostgreSQL. Everything else in the
KPI queries is written once and runs on both (`->>`, `::`, `percentile_cont ... WITHIN
GROUP`, `FILTER`, window functions)."""

from __future__ import annotations

from dataclasses import dataclass


def as_double(expression: str) -> str:
    """`expression` as a double on both backends (so integer counts divide as reals)."""
    return f"CAST({expression} AS DOUBLE PRECISION)"


@dataclass(frozen=True)
class Dialect:
    name: str  # "duckdb" or "postgresql"

    def unnest_text_array(self, json_array: str, alias: str, value: str = "value", ordinality: str = "ordinality") -> str:
        """A FROM item giving each element of a JSON array of strings with its 1-based position."""
        if self.name == "duckdb":
            function = f"unnest(CAST({json_array} AS VARCHAR[]))"
        else:
            function = f"jsonb_array_elements_text({json_array})"
        return f"{function} WITH ORDINALITY AS {alias}({value}, {ordinality})"

    def json_array_length(self, json_array: str) -> str:
        return f"{'json' if self.name == 'duckdb' else 'jsonb'}_array_length({json_array})"
