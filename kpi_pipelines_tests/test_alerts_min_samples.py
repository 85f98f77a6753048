"""`min_samples` and the packaged rules' `offset: 1d`: a rate judged on too few samples, or on
today's unfinished day, never alerts (on a real warehouse, both backends)."""

from __future__ import annotations

import datetime as dt
import textwrap

import pytest

from kpi_pipelines.alerts.config import DEFAULT_RULES_PATH
from kpi_pipelines.alerts.engine import observe_rules
from kpi_pipelines.alerts.rules import RulesError, load_rules
from kpi_pipelines.kpis.store import Metric, replace_daily_metrics

D = dt.date(2026, 3, 10)
AT = dt.datetime(2026, 3, 11, 13, 49)  # 13:49 on day D+1: D is the last complete day


def put(warehouse, day: dt.date, values: dict[str, float], dims: dict | None = None, asset: str = "search_experience_metrics") -> None:
    """Replace the asset's rows of `day` by these values."""
    metrics = [Metric(name, value, day, dims or {}) for name, value in values.items()]
    replace_daily_metrics(warehouse, asset, day, day + dt.timedelta(days=1), metrics)


def rules(tmp_path, body: str):
    path = tmp_path / "rules.yaml"
    path.write_text("channels:\n  log: {type: slack, channel: '#x'}\nrules:\n" + textwrap.indent(textwrap.dedent(body), "  "))
    return load_rules(path)


def observed(warehouse, ruleset, at=AT):
    return {s.rule.name: s.observation for s in observe_rules(warehouse, ruleset.rules, at, "kpi_metrics")}


LOW_CTR = """
- name: low_ctr
  metric: search.click_through_rate
  condition: less_than
  thresholds: {warning: 0.5}
  window: 2d
  offset: 1d
  min_samples: {metric: search.queries, count: 30}
  channels: [log]
"""


def test_a_rate_is_judged_only_with_enough_samples_summed_over_the_window(warehouse, tmp_path):
    ruleset = rules(tmp_path, LOW_CTR)
    # window [D-1, D+1) shifted back a day: days D-1 and D; 12 + 17 = 29 queries < 30
    put(warehouse, D - dt.timedelta(days=1), {"search.click_through_rate": 0.2, "search.queries": 12})
    put(warehouse, D, {"search.click_through_rate": 0.3, "search.queries": 17})
    put(warehouse, D + dt.timedelta(days=1), {"search.click_through_rate": 0.1, "search.queries": 500})  # today: outside
    low = observed(warehouse, ruleset)["low_ctr"]
    assert low.no_data
    assert (low.details["samples"], low.details["min_samples"], low.details["samples_metric"]) == (29, 30, "search.queries")

    put(warehouse, D, {"search.click_through_rate": 0.3, "search.queries": 18})  # 12 + 18 = 30: judged
    low = observed(warehouse, ruleset)["low_ctr"]
    assert (low.holds, low.severity) == (True, "warning")
    assert low.value == pytest.approx((0.2 + 0.3) / 2)


def test_min_samples_reads_the_same_dimensions_and_change_pct_needs_both_windows(warehouse, tmp_path):
    ruleset = rules(tmp_path, """
    - name: endpoint_errors
      metric: system.error_rate
      dimensions: {endpoint: "*"}
      condition: greater_than
      thresholds: {warning: 0.1}
      offset: 1d
      min_samples: {metric: system.requests, count: 50}
      channels: [log]
    - name: aov_drop
      metric: business.average_order_value
      condition: change_pct
      thresholds: {warning: -40}
      offset: 1d
      min_samples: {metric: business.orders, count: 20}
      channels: [log]
    """)
    system = [Metric(name, value, D, {"endpoint": endpoint}) for endpoint, requests in (("/a", 10), ("/b", 80))
              for name, value in (("system.error_rate", 0.5), ("system.requests", requests))]
    replace_daily_metrics(warehouse, "system_performance_metrics", D, D + dt.timedelta(days=1), system)
    put(warehouse, D - dt.timedelta(days=1), {"business.average_order_value": 100.0, "business.orders": 5}, asset="business_metrics")
    put(warehouse, D, {"business.average_order_value": 10.0, "business.orders": 300}, asset="business_metrics")
    series = {(s.rule.name, tuple(sorted(s.dimensions.items()))): s.observation
              for s in observe_rules(warehouse, ruleset.rules, AT, "kpi_metrics")}
    assert series[("endpoint_errors", (("endpoint", "/a"),))].no_data  # 10 requests
    assert series[("endpoint_errors", (("endpoint", "/b"),))].holds is True  # 80 requests
    drop = series[("aov_drop", ())]
    assert drop.no_data and drop.details["samples"] == 5  # the earlier window had 5 orders

    put(warehouse, D - dt.timedelta(days=1), {"business.average_order_value": 100.0, "business.orders": 25}, asset="business_metrics")
    series = {s.rule.name: s.observation for s in observe_rules(warehouse, ruleset.rules, AT, "kpi_metrics")}
    assert series["aov_drop"].holds is True and series["aov_drop"].value == pytest.approx(-90.0)


@pytest.mark.parametrize(
    "body,message",
    [
        ("min_samples: 30", "rules[0] (r).min_samples: expected a mapping"),
        ("min_samples: {metric: search.queries}", "rules[0] (r).min_samples.count: expected a number greater than 0"),
        ("min_samples: {metric: search.queries, count: 0}", "rules[0] (r).min_samples.count: expected a number greater than 0"),
        ("min_samples: {count: 3}", "rules[0] (r).min_samples.metric: expected the name of a count metric"),
        ("min_samples: {metric: search.queries, count: 3, minimum: 2}", "rules[0] (r).min_samples.minimum: unknown key"),
    ],
)
def test_bad_min_samples_are_named(tmp_path, body, message):
    with pytest.raises(RulesError) as caught:
        rules(tmp_path, f"""
        - name: r
          metric: search.click_through_rate
          condition: less_than
          thresholds: {{warning: 0.5}}
          {body}
          channels: [log]
        """)
    assert any(error.startswith(message) for error in caught.value.errors), caught.value.errors


def test_packaged_daily_rules_judge_the_last_complete_day_with_enough_samples(warehouse):
    """At 13:49 a click-through of 0.333 from 3 queries fires nothing, whether it is today's
    unfinished day (outside the window) or a complete day with too few queries."""
    packaged = load_rules(DEFAULT_RULES_PATH)
    assert all(rule.offset == dt.timedelta(days=1) for rule in packaged.rules if rule.aggregation_level == "day")
    put(warehouse, AT.date(), {"search.click_through_rate": 1 / 3, "search.queries": 3})
    assert "low_click_through" not in observed(warehouse, packaged)  # today is not judged at all
    put(warehouse, D, {"search.click_through_rate": 1 / 3, "search.queries": 3})
    low = observed(warehouse, packaged)["low_click_through"]
    assert low.no_data and low.details["samples"] == 3
    put(warehouse, D, {"search.click_through_rate": 0.62, "search.queries": 400})
    low = observed(warehouse, packaged)["low_click_through"]
    assert (low.holds, low.value) == (False, pytest.approx(0.62))
    put(warehouse, D, {"search.click_through_rate": 0.35, "search.queries": 400})
    assert observed(warehouse, packaged)["low_click_through"].severity == "critical"
