"""The dashboards in headless Chromium (the Debian `chromium` package, driven by
Playwright's Python package; no browser is downloaded), on DuckDB and PostgreSQL: the pages
load without console errors, ask for the key and keep it in sessionStorage, draw their
charts, and a new date range changes what the charts show; and events posted to `kpi serve`
reach the dashboard after the landing sensor's run."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import pytest
import sqlalchemy as sa
from dagster import RunRequest, build_sensor_context, instance_for_test

from kpi_pipelines.ingestion.resources import EventIngestionResource
from kpi_pipelines.ingestion.sensors import landing_sensor
from kpi_pipelines_tests.conftest import SALT, definitions_for, event
from kpi_pipelines_tests.test_api_helpers import (  # noqa: F401  (fixture)
    KEY,
    landing_dir,
    seed_alerts,
    seed_metrics,
    start_server,
)

CHROMIUM = Path(os.environ.get("KPI_TEST_CHROMIUM", "/usr/bin/chromium"))
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        message = f"{CHROMIUM} is missing: apt-get install -y chromium chromium-driver"
        if os.environ.get("CI") or os.environ.get("KPI_REQUIRE_BROWSER"):
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield browser
        browser.close()


class Page:
    """A page with its console errors, failed requests and uncaught exceptions recorded."""

    def __init__(self, browser, base_url: str):
        self.context = browser.new_context(base_url=base_url)
        self.page = self.context.new_page()
        self.page.set_default_timeout(30_000)
        self.errors: list[str] = []
        self.page.on("console", lambda message: message.type == "error" and self.errors.append(message.text))
        self.page.on("pageerror", lambda error: self.errors.append(f"uncaught: {error}"))
        self.page.on("requestfailed", lambda request: self.errors.append(f"request failed: {request.url}"))
        self.outside: list[str] = []
        self.page.on("request", lambda request: not request.url.startswith(base_url) and not request.url.startswith("data:")
                     and self.outside.append(request.url))

    def open(self, path: str) -> None:
        self.page.goto(path)

    def sign_in(self, key: str = KEY) -> None:
        self.page.fill("#api-key", key)
        self.page.click("#key-form button[type=submit]")

    def wait_ready(self, date_range: str | None = None) -> None:
        selector = "body[data-state=ready]" + (f'[data-range="{date_range}"]' if date_range else "")
        self.page.wait_for_selector(selector)

    def charts(self) -> dict[str, dict]:
        """Per panel (its title): points drawn, paths and their `d`."""
        return self.page.evaluate(
            """() => Array.from(document.querySelectorAll('.panel .chart')).map(chart => ({
                title: chart.parentElement.querySelector('h2').textContent,
                points: Number((chart.querySelector('svg') || {getAttribute: () => 0}).getAttribute('data-points')),
                paths: Array.from(chart.querySelectorAll('path.line')).map(p => p.getAttribute('d')),
                circles: chart.querySelectorAll('circle').length,
            }))"""
        )

    def close(self) -> None:
        self.context.close()


def _seeded_server(warehouse, start_server):
    seed_metrics(warehouse)
    seed_alerts(warehouse)
    return start_server(warehouse)


def test_executive_dashboard_draws_and_follows_the_date_range(browser, warehouse, start_server):
    server = _seeded_server(warehouse, start_server)
    page = Page(browser, server.url)
    try:
        page.open("/dashboards/executive?start=2026-01-01&end=2026-01-30")
        page.page.wait_for_selector("#key-form:not(.hidden)")  # asks for the key first
        page.sign_in()
        page.wait_ready("2026-01-01/2026-01-30")
        assert page.page.evaluate("sessionStorage.getItem('kpiApiKey')") == KEY
        charts = {chart["title"]: chart for chart in page.charts()}
        assert len(charts) == 7
        for title, chart in charts.items():
            assert chart["paths"] and all(len(d) > 20 and d.startswith("M") for d in chart["paths"]), title
        conversion = charts["Conversion rate"]
        assert conversion["points"] == 30 and conversion["circles"] == 30
        assert len(charts["Retention (day 1, day 7)"]["paths"]) == 2
        tile = page.page.text_content('.tile[data-metric="business.conversion_rate"] .value')
        assert tile.endswith("%")

        # a shorter range: other points, other lines
        page.page.fill("#start", "2026-02-10")
        page.page.fill("#end", "2026-02-20")
        page.page.click("#apply")
        page.wait_ready("2026-02-10/2026-02-20")
        after = {chart["title"]: chart for chart in page.charts()}
        assert after["Conversion rate"]["points"] == 11
        for title in charts:
            assert after[title]["paths"] != charts[title]["paths"], title

        # a range without data says so
        page.page.fill("#start", "2025-06-01")
        page.page.fill("#end", "2025-06-30")
        page.page.click("#apply")
        page.wait_ready("2025-06-01/2025-06-30")
        assert all(chart["points"] == 0 and not chart["paths"] for chart in page.charts())
        assert "no data" in page.page.text_content(".panel .chart")

        # the key stays for the other page of the same tab
        page.page.click("nav a[href='/dashboards/operations']")
        page.wait_ready()
        assert page.errors == [] and page.outside == []
    finally:
        page.close()


def test_operations_dashboard_shows_quality_latency_errors_and_alerts(browser, warehouse, start_server):
    server = _seeded_server(warehouse, start_server)
    page = Page(browser, server.url)
    try:
        page.open("/dashboards/operations?start=2026-01-15&end=2026-02-13")
        page.sign_in()
        page.wait_ready("2026-01-15/2026-02-13")
        charts = {chart["title"]: chart for chart in page.charts()}
        assert len(charts) == 7
        assert charts["API latency"]["points"] == 90 and len(charts["API latency"]["paths"]) == 3
        assert len(charts["Retrieval quality (judged queries)"]["paths"]) == 5
        for title, chart in charts.items():
            assert chart["paths"], title
        rows = page.page.eval_on_selector_all("table.alerts tbody tr", "rows => rows.map(r => r.cells[1].textContent)")
        assert rows == ["rule_active", "rule_suppressed"]
        before = charts["Error rates (API 5xx, generation)"]["paths"]
        page.page.click("button.preset[data-days='7']")
        page.wait_ready("2026-02-07/2026-02-13")
        after = {chart["title"]: chart for chart in page.charts()}
        assert after["API latency"]["points"] == 21
        assert after["Error rates (API 5xx, generation)"]["paths"] != before
        assert page.errors == [] and page.outside == []
    finally:
        page.close()


def test_a_refused_key_asks_again(browser, duckdb_warehouse, start_server):
    server = start_server(duckdb_warehouse)
    page = Page(browser, server.url)
    try:
        page.open("/dashboards/executive")
        page.sign_in("not-a-key")
        page.page.wait_for_selector("#key-form:not(.hidden)")
        page.page.wait_for_function("document.querySelector('#status').textContent.includes('refused')")
        assert page.page.evaluate("sessionStorage.getItem('kpiApiKey')") is None
        assert [error for error in page.errors if "401" not in error] == []  # only the refused requests
    finally:
        page.close()


def test_events_posted_to_kpi_serve_reach_the_kpis_and_the_dashboard_after_the_sensor_tick(
    browser, duckdb_warehouse, start_server, tmp_path
):
    """The issue's "done when": `kpi serve` takes events from a client; the landing sensor's
    next tick starts the ingest job (raw_events, the KPI assets, the rollups); the API and
    the executive dashboard in Chromium show the new KPI values."""
    today = dt.datetime.now(dt.timezone.utc).date().isoformat()
    at = lambda second: f"{today}T00:00:{second:02d}Z"  # noqa: E731
    # four queries, one of them clicked: click-through rate 1/4, by hand
    events = [event(f"q{n}", timestamp=at(n), session_id=f"s-{n}") for n in range(4)]
    events.append(event("c0", timestamp=at(10), session_id="s-0", action="click", query_id="q-q0", product_id="P1", position=1))
    server = start_server(duckdb_warehouse)
    with server.client() as client:
        posted = client.post("/api/kpi/events", json=events)
        assert posted.status_code == 202 and posted.json() == {"accepted": 5, "duplicates": 0, "rejected": []}

    landing = landing_dir(server)
    ingestion = EventIngestionResource(pii_salt=SALT, landing_dir=str(landing))
    request = landing_sensor(build_sensor_context(resources={"ingestion": ingestion}))
    assert isinstance(request, RunRequest) and request.partition_key == today
    job = definitions_for(duckdb_warehouse, str(landing)).resolve_job_def("ingest_job")
    with instance_for_test() as instance:
        result = job.execute_in_process(instance=instance, partition_key=request.partition_key, run_config=request.run_config)
        assert result.success
    assert not list(landing.glob("*.ndjson"))  # loaded, then deleted
    duckdb_warehouse.dispose()  # the API's snapshot reads the file

    with server.client() as client:
        series = client.get("/api/kpi/search/success-rate", params={"start": today, "end": today}).json()["series"]
        ctr = next(s for s in series if s["metric_name"] == "search.click_through_rate" and s["dimensions"] == {})
        assert ctr["points"] == [{"timestamp": f"{today}T00:00:00Z", "value": 0.25}]
        hourly = client.get(
            "/api/kpi/metrics",
            params={"name": "search.queries", "start": today, "end": today, "aggregation_level": "hour", "dimensions": "{}"},
        ).json()["metrics"]
        assert [(row["timestamp"], row["metric_value"]) for row in hourly] == [(f"{today}T00:00:00Z", 4.0)]

    page = Page(browser, server.url)
    try:
        page.open(f"/dashboards/executive?start={today}&end={today}")
        page.sign_in()
        page.wait_ready(f"{today}/{today}")
        assert page.page.text_content('.tile[data-metric="search.click_through_rate"] .value') == "25.0%"
        charts = {chart["title"]: chart for chart in page.charts()}
        assert charts["Search success, click-through, no results"]["points"] >= 1
        assert page.errors == [] and page.outside == []
    finally:
        page.close()


def test_missing_lines_invalid_dates_and_overall_alerts_read_as_words(browser, warehouse, start_server):
    """Issue 12, item 14: a retention panel without day-7 values says why; an alert without
    dimensions reads "overall", not `{}`; `?start=2026-13-01` names the invalid month."""
    seed_metrics(warehouse)
    seed_alerts(warehouse)
    with warehouse.begin() as connection:
        connection.execute(sa.text("DELETE FROM kpi_metrics WHERE metric_name = 'business.retention.day_7'"))
        connection.execute(sa.text(
            "UPDATE alert_instances SET dimensions = :dims WHERE rule_name = 'rule_suppressed'"), {"dims": '{"model": "gpt-x"}'})
    server = start_server(warehouse)
    page = Page(browser, server.url)
    api_requests: list[str] = []
    page.page.on("request", lambda request: "/api/" in request.url and api_requests.append(request.url))
    try:
        page.open("/dashboards/executive?start=2026-13-01&end=2026-01-30")
        page.page.wait_for_selector("body[data-state=error]")
        status = page.page.text_content("#status")
        assert "start=2026-13-01" in status and "month 13 does not exist" in status, status
        assert "after the end date" not in status and api_requests == []  # nothing asked of the warehouse

        page.page.fill("#start", "2026-01-01")
        page.page.click("#apply")
        page.sign_in()
        page.wait_ready("2026-01-01/2026-01-30")
        retention = page.page.locator("section.panel", has_text="Retention (day 1, day 7)")
        assert retention.locator("path.line").count() == 1  # day 1 only
        note = retention.locator(".note").text_content()
        assert "No data in this range yet for business.retention.day_7." in note and "8 days of traffic" in note
        conversion_note = page.page.locator("section.panel", has_text="Conversion rate").locator(".note").text_content()
        assert conversion_note == ""  # nothing missing, nothing said

        page.page.click("nav a[href='/dashboards/operations']")
        page.wait_ready()
        dimensions = page.page.eval_on_selector_all(
            "table.alerts tbody tr", "rows => rows.map(r => [r.cells[1].textContent, r.cells[3].textContent])"
        )
        assert sorted(dimensions) == [["rule_active", "overall"], ["rule_suppressed", "model=gpt-x"]]
        assert page.errors == [] and page.outside == []
    finally:
        page.close()
