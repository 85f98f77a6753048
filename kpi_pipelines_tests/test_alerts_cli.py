"""`kpi alerts list` and `unsilence` say when something is wrong: a rules file that does not
parse, a rule that does not exist."""

from __future__ import annotations

import pytest

from kpi_pipelines import cli


@pytest.fixture
def env(monkeypatch, tmp_path):
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        "channels: {kpi-alerts: {type: slack, channel: '#k'}}\n"
        "rules:\n  - {name: low_ctr, metric: search.click_through_rate, condition: less_than,\n"
        "            thresholds: {warning: 0.5}, channels: [kpi-alerts]}\n"
    )
    monkeypatch.setenv("KPI_WAREHOUSE_URL", f"duckdb:///{tmp_path / 'w.duckdb'}")
    monkeypatch.setenv("KPI_ALERT_RULES", str(rules))
    return rules


@pytest.mark.parametrize(
    "text,problem",
    [
        ("rules: [\n", "line 2, column 1: expected the node content"),  # broken YAML
        ("channels: {}\nrules:\n  - {name: x, metric: m, condition: above, thresholds: {warning: 1}, channels: []}\n",
         "rules[0] (x).condition: expected one of"),
    ],
)
def test_list_with_invalid_rules_lists_what_is_stored_and_fails(env, capsys, text, problem):
    env.write_text(text)
    assert cli.main(["alerts", "list"]) == 1
    captured = capsys.readouterr()
    assert "open alerts: 0" in captured.out
    assert f"kpi: error: {env}" in captured.err and problem in captured.err


def test_list_with_valid_rules_succeeds(env, capsys):
    assert cli.main(["alerts", "list"]) == 0
    assert capsys.readouterr().err == ""


def test_unsilence_of_an_unknown_rule_fails_like_silence(env, capsys):
    assert cli.main(["alerts", "unsilence", "no_such_rule"]) == 1
    assert "kpi: error: no rule named 'no_such_rule'" in capsys.readouterr().err
    assert cli.main(["alerts", "unsilence", "low_ctr"]) == 0  # a known rule without a silence: nothing to end
    assert "ended 0 silence(s) of low_ctr" in capsys.readouterr().out
    assert cli.main(["alerts", "silence", "low_ctr", "--for", "1h", "--reason", "maintenance"]) == 0
    assert cli.main(["alerts", "unsilence", "low_ctr"]) == 0
    assert "ended 1 silence(s) of low_ctr" in capsys.readouterr().out
