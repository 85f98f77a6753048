"""Schemathesis against the served OpenAPI document (real HTTP, uvicorn in a child
process), on DuckDB and PostgreSQL: generated requests to every operation, with a valid
key, never get a 5xx and always match the document (status codes, content types, schemas).
Bounded: a few examples per operation and a deadline per test."""

from __future__ import annotations

import schemathesis
import schemathesis.specs.openapi.checks  # noqa: F401  (registers the OpenAPI checks)
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode, SerializationContext
from schemathesis.checks import CHECKS
from schemathesis.specs.openapi.checks import negative_data_rejection

from kpi_pipelines_tests.test_api_helpers import KEY, seed_metrics, start_server  # noqa: F401  (fixture)


@schemathesis.serializer("application/x-ndjson")
def _ndjson(ctx: SerializationContext, value):  # the NDJSON body is declared as a string
    if isinstance(value, bytes):
        return value
    return str(value).encode("utf-8", "surrogatepass")


def test_api_conforms_to_its_openapi_document(warehouse, start_server):
    # schemathesis' own pytest plugin (`from_fixture`) does not run on pytest 9: generate
    # with its strategies under Hypothesis here instead, one bounded run per operation
    seed_metrics(warehouse)
    server = start_server(warehouse, KPI_API_RATE_PER_SECOND="100000", KPI_API_RATE_BURST="100000")
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    checks = CHECKS.get_all()
    assert len(checks) >= 14
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 14

    failures: list[str] = []
    statuses: dict[str, set[int]] = {}

    def bounded_run(operation):
        name = f"{operation.method.upper()} {operation.path}"

        @given(case=st.one_of(*(operation.as_strategy(generation_mode=mode) for mode in GenerationMode)))
        @settings(
            max_examples=12,
            deadline=None,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
            derandomize=True,
            database=None,
        )
        def run(case):
            excluded = [negative_data_rejection] if operation.method.upper() == "POST" else []
            response = case.call_and_validate(
                headers={"Authorization": f"Bearer {KEY}"}, timeout=60, checks=checks, excluded_checks=excluded
            )
            statuses.setdefault(name, set()).add(response.status_code)

        return name, run

    for operation in operations:
        name, run = bounded_run(operation)
        try:
            run()
        except Exception as error:  # noqa: BLE001  (collect every operation's failure, report them all)
            failures.append(f"{name}: {error}")
    assert failures == [], "\n\n".join(failures)
    assert len(statuses) == len(operations)  # every operation was called
    assert 200 in statuses["GET /api/kpi/metrics"] and 202 in statuses["POST /api/kpi/events"]
