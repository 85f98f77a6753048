"""The alert rules file (YAML, `KPI_ALERT_RULES`): loading and validation.

Every problem is reported, each naming the rule and the field, e.g.
``rules[2] (low_conversion).thresholds.critical: expected a number, got 'low'``; a file
with any problem loads nothing. The format is documented in docs/alerts.md.

A rule on a metric the metric registry does not know (a typo such as
`search.clickthrough_rate`, a pattern, a level the metric is not rolled up to) is valid but
would never find data: it loads with one warning line naming the closest registered names
(`RuleSet.warnings`), shown by `kpi alerts list` / `evaluate` and logged by the evaluation
run, and is still evaluated. The registry, not the data, decides: a metric without values
yet is no typo.
"""

from __future__ import annotations

import datetime as dt
import difflib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from kpi_pipelines.kpis import registry

SEVERITIES = ("critical", "warning", "info")  # most severe first
CONDITIONS = ("greater_than", "less_than", "equals", "not_equals", "anomaly", "change_pct")
LEVELS = {
    "minute": dt.timedelta(minutes=1),
    "hour": dt.timedelta(hours=1),
    "day": dt.timedelta(days=1),
    "week": dt.timedelta(weeks=1),
}
CHANNEL_TYPES = ("slack", "webhook", "email")
NO_DATA = ("keep_state", "ok")
DIRECTIONS = ("both", "spike", "drop")
WILDCARD = "*"

_DURATION = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")
_NAME = re.compile(r"^[A-Za-z0-9_.:-]+$")


class RulesError(Exception):
    """The rules file is unreadable or invalid; `errors` lists every problem."""

    def __init__(self, path: str, errors: list[str]):
        self.path = path
        self.errors = errors
        super().__init__("\n".join(f"{path}: {error}" for error in errors))


def parse_duration(text: Any) -> dt.timedelta:
    """'30s', '15m', '4h', '1d' (and combinations such as '1h30m') as a timedelta."""
    if isinstance(text, bool) or not isinstance(text, str):
        raise ValueError(f"expected a duration such as 30s, 15m, 4h or 1d, got {text!r}")
    match = _DURATION.match(text.strip())
    if not text.strip() or not match or not any(match.groups()):
        raise ValueError(f"expected a duration such as 30s, 15m, 4h or 1d, got {text!r}")
    days, hours, minutes, seconds = (int(group or 0) for group in match.groups())
    return dt.timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)


def format_duration(delta: dt.timedelta) -> str:
    seconds = int(delta.total_seconds())
    if seconds == 0:
        return "0m"
    out = ""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size:
            out += f"{seconds // size}{unit}"
            seconds %= size
    return out


@dataclass(frozen=True)
class Channel:
    name: str
    type: str  # slack | webhook | email
    target: str  # slack channel, webhook URL, or the e-mail recipients joined by ', '
    recipients: tuple[str, ...] = ()
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class MinSamples:
    """Judge a window only when a count metric (e.g. `search.queries` for a click-through
    rule) sums to at least `count` over the same window and dimensions: a rate of 3 queries
    is no evidence."""

    metric: str
    count: float


@dataclass(frozen=True)
class Rule:
    name: str
    metric: str
    condition: str
    thresholds: Mapping[str, float]
    aggregation_level: str = "day"
    dimensions: Mapping[str, str] = field(default_factory=dict)
    window: dt.timedelta = dt.timedelta(days=1)
    offset: dt.timedelta = dt.timedelta(0)
    for_: dt.timedelta = dt.timedelta(0)
    keep_firing_for: dt.timedelta = dt.timedelta(0)
    repeat_interval: dt.timedelta = dt.timedelta(hours=4)
    channels: tuple[str, ...] = ()
    escalate_after: dt.timedelta | None = None
    escalation_channels: tuple[str, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict)
    is_active: bool = True
    description: str = ""
    asset: str | None = None
    no_data: str = "keep_state"
    direction: str = "both"  # anomaly rules: which anomalies count
    min_samples: MinSamples | None = None

    def matches(self, dimensions: Mapping[str, str]) -> bool:
        """Whether a series' dimension set belongs to this rule (same keys; '*' matches any value)."""
        if set(dimensions) != set(self.dimensions):
            return False
        return all(want == WILDCARD or str(dimensions[key]) == want for key, want in self.dimensions.items())

    def window_bounds(self, now: dt.datetime, previous: bool = False) -> tuple[dt.datetime, dt.datetime]:
        """[start, end) of the buckets the rule averages at evaluation time `now`; with
        `previous`, the window just before it (change_pct)."""
        end = now - self.offset
        if previous:
            end -= self.window
        return end - self.window, end


@dataclass(frozen=True)
class RuleSet:
    rules: tuple[Rule, ...]
    channels: Mapping[str, Channel]
    dagster_channels: tuple[str, ...] = ()
    path: str = ""
    warnings: tuple[str, ...] = ()  # one line per rule whose metrics the registry does not know

    @property
    def active_rules(self) -> tuple[Rule, ...]:
        return tuple(rule for rule in self.rules if rule.is_active)

    def rule(self, name: str) -> Rule | None:
        return next((rule for rule in self.rules if rule.name == name), None)


RULE_KEYS = {
    "name", "metric", "aggregation_level", "dimensions", "condition", "thresholds", "window", "offset",
    "for", "keep_firing_for", "repeat_interval", "channels", "escalate_after", "escalation_channels",
    "labels", "is_active", "description", "asset", "no_data", "direction", "min_samples",
}
DEFAULTABLE_KEYS = {
    "aggregation_level", "window", "offset", "for", "keep_firing_for", "repeat_interval", "channels",
    "labels", "no_data", "escalate_after", "escalation_channels",
}
MIN_SAMPLES_KEYS = {"metric", "count"}
TOP_KEYS = {"channels", "rules", "defaults", "dagster_alerts"}
CHANNEL_KEYS = {"slack": {"type", "channel"}, "webhook": {"type", "url", "headers"}, "email": {"type", "to"}}


def _describe(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, (dict, list)):
        return f"a {'mapping' if isinstance(value, dict) else 'list'}"
    return repr(value)


def _unknown(key: Any, allowed: set[str]) -> str:
    close = difflib.get_close_matches(str(key), sorted(allowed), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else f" (allowed: {', '.join(sorted(allowed))})"
    return f"unknown key{hint}"


class _Collector:
    def __init__(self) -> None:
        self.errors: list[str] = []

    def add(self, where: str, message: str) -> None:
        self.errors.append(f"{where}: {message}")


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(float(value)):
        return None
    return float(value)


def _string_map(value: Any, where: str, errors: _Collector) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        errors.add(where, f"expected a mapping, got {_describe(value)}")
        return {}
    out = {}
    for key, item in value.items():
        if isinstance(item, (dict, list)) or item is None:
            errors.add(f"{where}.{key}", f"expected a text value, got {_describe(item)}")
            continue
        out[str(key)] = item if isinstance(item, str) else (str(item).lower() if isinstance(item, bool) else str(item))
    return out


def _duration(value: Any, where: str, errors: _Collector, positive: bool = False) -> dt.timedelta | None:
    try:
        delta = parse_duration(value)
    except ValueError as error:
        errors.add(where, str(error))
        return None
    if positive and delta <= dt.timedelta(0):
        errors.add(where, f"must be longer than 0, got {value!r}")
        return None
    return delta


def _channel_list(value: Any, where: str, channels: Mapping[str, Any], errors: _Collector) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        errors.add(where, f"expected a list of channel names, got {_describe(value)}")
        return ()
    out = []
    for i, name in enumerate(value):
        if not isinstance(name, str) or name not in channels:
            declared = ", ".join(sorted(channels)) or "none"
            errors.add(f"{where}[{i}]", f"unknown channel {name!r} (declared: {declared})")
        elif name not in out:
            out.append(name)
    return tuple(out)


def _parse_channels(raw: Any, errors: _Collector) -> dict[str, Channel]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        errors.add("channels", f"expected a mapping of channel name to settings, got {_describe(raw)}")
        return {}
    out: dict[str, Channel] = {}
    for name, spec in raw.items():
        where = f"channels.{name}"
        if not isinstance(name, str) or not _NAME.match(name):
            errors.add(where, "a channel name is letters, digits, '_', '.', ':' or '-'")
            continue
        if not isinstance(spec, dict):
            errors.add(where, f"expected a mapping with 'type', got {_describe(spec)}")
            continue
        kind = spec.get("type")
        if kind not in CHANNEL_TYPES:
            errors.add(f"{where}.type", f"expected one of {', '.join(CHANNEL_TYPES)}, got {_describe(kind)}")
            continue
        for key in spec:
            if key not in CHANNEL_KEYS[kind]:
                errors.add(f"{where}.{key}", _unknown(key, CHANNEL_KEYS[kind]))
        if kind == "slack":
            target = spec.get("channel")
            if not isinstance(target, str) or not target.strip():
                errors.add(f"{where}.channel", f"expected a Slack channel such as '#kpi-alerts' or an id, got {_describe(target)}")
                continue
            out[name] = Channel(name, kind, target.strip())
        elif kind == "webhook":
            url = spec.get("url")
            if not isinstance(url, str) or not re.match(r"^https?://[^\s/]+", url):
                errors.add(f"{where}.url", f"expected an http:// or https:// URL, got {_describe(url)}")
                continue
            headers = _string_map(spec.get("headers"), f"{where}.headers", errors)
            out[name] = Channel(name, kind, url, headers=headers)
        else:
            to = spec.get("to")
            if isinstance(to, str):
                to = [to]
            if not isinstance(to, list) or not to:
                errors.add(f"{where}.to", f"expected a list of e-mail addresses, got {_describe(to)}")
                continue
            bad = [address for address in to if not isinstance(address, str) or not re.match(r"^[^@\s]+@[^@\s]+$", address)]
            if bad:
                errors.add(f"{where}.to", f"not an e-mail address: {_describe(bad[0])}")
                continue
            out[name] = Channel(name, kind, ", ".join(to), recipients=tuple(to))
    return out


def _check_threshold_order(condition: str, thresholds: Mapping[str, float], where: str, errors: _Collector) -> None:
    """Thresholds of ordered conditions must grow stricter from info to critical."""
    present = [(s, thresholds[s]) for s in reversed(SEVERITIES) if s in thresholds]  # info, warning, critical
    for (milder, mild_value), (harsher, harsh_value) in zip(present, present[1:]):
        if condition == "greater_than" and harsh_value < mild_value:
            errors.add(f"{where}.{harsher}", f"{harsh_value:g} must be at least {milder} ({mild_value:g}) for greater_than")
        elif condition == "less_than" and harsh_value > mild_value:
            errors.add(f"{where}.{harsher}", f"{harsh_value:g} must be at most {milder} ({mild_value:g}) for less_than")
        elif condition == "anomaly" and harsh_value < mild_value:
            errors.add(f"{where}.{harsher}", f"{harsh_value:g} must be at least {milder} ({mild_value:g}) (|z-score|)")
        elif condition == "change_pct" and abs(harsh_value) < abs(mild_value):
            errors.add(f"{where}.{harsher}", f"{harsh_value:g} must be at least as large a change as {milder} ({mild_value:g})")


def _parse_rule(
    index: int, raw: Any, defaults: Mapping[str, Any], channels: Mapping[str, Channel], errors: _Collector
) -> Rule | None:
    label = f"rules[{index}]"
    if not isinstance(raw, dict):
        errors.add(label, f"expected a mapping, got {_describe(raw)}")
        return None
    name = raw.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        errors.add(f"{label}.name", f"expected a rule name (letters, digits, '_', '.', ':', '-'), got {_describe(name)}")
        name = None
    where = f"{label} ({name})" if name else label
    before = len(errors.errors)
    for key in raw:
        if key not in RULE_KEYS:
            errors.add(f"{where}.{key}", _unknown(key, RULE_KEYS))
    merged = {**defaults, **raw}

    metric = merged.get("metric")
    if not isinstance(metric, str) or not metric.strip():
        errors.add(f"{where}.metric", f"expected a metric name such as business.conversion_rate, got {_describe(metric)}")

    level = merged.get("aggregation_level", "day")
    if level not in LEVELS:
        errors.add(f"{where}.aggregation_level", f"expected one of {', '.join(LEVELS)}, got {_describe(level)}")
        level = "day"

    dimensions = _string_map(merged.get("dimensions"), f"{where}.dimensions", errors)
    labels = _string_map(merged.get("labels"), f"{where}.labels", errors)

    condition = merged.get("condition")
    if condition not in CONDITIONS:
        errors.add(f"{where}.condition", f"expected one of {', '.join(CONDITIONS)}, got {_describe(condition)}")
        condition = None

    thresholds: dict[str, float] = {}
    raw_thresholds = merged.get("thresholds")
    if raw_thresholds is None and condition == "anomaly":
        raw_thresholds = {"warning": 0}
    if not isinstance(raw_thresholds, dict) or not raw_thresholds:
        errors.add(
            f"{where}.thresholds",
            f"expected a mapping of severity ({', '.join(SEVERITIES)}) to a number, got {_describe(raw_thresholds)}",
        )
    else:
        for severity, value in raw_thresholds.items():
            if severity not in SEVERITIES:
                errors.add(f"{where}.thresholds.{severity}", f"unknown severity (allowed: {', '.join(SEVERITIES)})")
                continue
            number = _number(value)
            if number is None:
                errors.add(f"{where}.thresholds.{severity}", f"expected a number, got {_describe(value)}")
                continue
            thresholds[severity] = number
        if condition == "change_pct":
            signs = {math.copysign(1, value) for value in thresholds.values() if value != 0}
            if any(value == 0 for value in thresholds.values()):
                errors.add(f"{where}.thresholds", "change_pct thresholds are non-zero percents (negative: a drop, positive: a rise)")
            elif len(signs) > 1:
                errors.add(f"{where}.thresholds", "change_pct thresholds must all be drops (negative) or all rises (positive)")
        if condition == "anomaly" and any(value < 0 for value in thresholds.values()):
            errors.add(f"{where}.thresholds", "anomaly thresholds are minimum |z-scores| (0 or more)")
        if condition:
            _check_threshold_order(condition, thresholds, f"{where}.thresholds", errors)

    window = None
    if "window" in merged:
        window = _duration(merged["window"], f"{where}.window", errors, positive=True)
        if window is not None and window < LEVELS[level]:
            errors.add(
                f"{where}.window",
                f"{merged['window']} is shorter than one {level} bucket: the window would hold no value",
            )
    window = window or LEVELS[level]
    offset = _duration(merged.get("offset", "0m"), f"{where}.offset", errors) or dt.timedelta(0)
    for_ = _duration(merged.get("for", "0m"), f"{where}.for", errors) or dt.timedelta(0)
    keep = _duration(merged.get("keep_firing_for", "0m"), f"{where}.keep_firing_for", errors) or dt.timedelta(0)
    repeat = _duration(merged.get("repeat_interval", "4h"), f"{where}.repeat_interval", errors, positive=True)

    rule_channels = _channel_list(merged.get("channels"), f"{where}.channels", channels, errors)
    if not rule_channels and "channels" not in merged:
        errors.add(f"{where}.channels", "missing: name at least one declared channel")
    escalate_after = None
    if merged.get("escalate_after") is not None:
        escalate_after = _duration(merged["escalate_after"], f"{where}.escalate_after", errors)
    escalation = _channel_list(merged.get("escalation_channels"), f"{where}.escalation_channels", channels, errors)
    if "escalate_after" in raw and not escalation:
        errors.add(f"{where}.escalation_channels", "missing: escalate_after needs escalation_channels")
    if "escalation_channels" in raw and merged.get("escalate_after") is None:
        errors.add(f"{where}.escalate_after", "missing: escalation_channels needs escalate_after")

    is_active = merged.get("is_active", True)
    if not isinstance(is_active, bool):
        errors.add(f"{where}.is_active", f"expected true or false, got {_describe(is_active)}")
    description = merged.get("description", "")
    if not isinstance(description, str):
        errors.add(f"{where}.description", f"expected text, got {_describe(description)}")
    asset = merged.get("asset")
    if asset is not None and (not isinstance(asset, str) or not asset.strip()):
        errors.add(f"{where}.asset", f"expected a Dagster asset key such as business_metrics, got {_describe(asset)}")
    no_data = merged.get("no_data", "keep_state")
    if no_data not in NO_DATA:
        errors.add(f"{where}.no_data", f"expected one of {', '.join(NO_DATA)}, got {_describe(no_data)}")
    direction = merged.get("direction", "both")
    if direction not in DIRECTIONS:
        errors.add(f"{where}.direction", f"expected one of {', '.join(DIRECTIONS)}, got {_describe(direction)}")
    elif "direction" in raw and condition not in (None, "anomaly"):
        errors.add(f"{where}.direction", "only anomaly rules take a direction (change_pct uses the thresholds' sign)")

    min_samples = _min_samples(merged.get("min_samples"), f"{where}.min_samples", errors)

    if len(errors.errors) > before or name is None or condition is None or repeat is None:
        return None
    return Rule(
        name=name,
        metric=str(metric).strip(),
        condition=condition,
        thresholds=thresholds,
        aggregation_level=level,
        dimensions=dimensions,
        window=window,
        offset=offset,
        for_=for_,
        keep_firing_for=keep,
        repeat_interval=repeat,
        channels=rule_channels,
        escalate_after=escalate_after,
        escalation_channels=escalation,
        labels=labels,
        is_active=bool(is_active),
        description=description,
        asset=asset.strip() if isinstance(asset, str) else None,
        no_data=no_data,
        direction=direction,
        min_samples=min_samples,
    )


def _min_samples(raw: Any, where: str, errors: _Collector) -> MinSamples | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        errors.add(where, f"expected a mapping {{metric: search.queries, count: 30}}, got {_describe(raw)}")
        return None
    for key in raw:
        if key not in MIN_SAMPLES_KEYS:
            errors.add(f"{where}.{key}", _unknown(key, MIN_SAMPLES_KEYS))
    metric = raw.get("metric")
    if not isinstance(metric, str) or not metric.strip():
        errors.add(f"{where}.metric", f"expected the name of a count metric such as search.queries, got {_describe(metric)}")
    count = _number(raw.get("count"))
    if count is None or count <= 0:
        errors.add(f"{where}.count", f"expected a number greater than 0, got {_describe(raw.get('count'))}")
    if not isinstance(metric, str) or not metric.strip() or count is None or count <= 0:
        return None
    return MinSamples(metric.strip(), count)


def parse_rules(document: Any, path: str = "<rules>") -> RuleSet:
    """Validate a parsed YAML document; raise `RulesError` listing every problem."""
    errors = _Collector()
    if not isinstance(document, dict):
        raise RulesError(path, [f"expected a mapping with 'channels' and 'rules', got {_describe(document)}"])
    for key in document:
        if key not in TOP_KEYS:
            errors.add(str(key), _unknown(key, TOP_KEYS))
    channels = _parse_channels(document.get("channels"), errors)

    defaults = document.get("defaults") or {}
    if not isinstance(defaults, dict):
        errors.add("defaults", f"expected a mapping, got {_describe(defaults)}")
        defaults = {}
    defaults = dict(defaults)
    for key in list(defaults):
        if key not in DEFAULTABLE_KEYS:
            errors.add(f"defaults.{key}", _unknown(key, DEFAULTABLE_KEYS))
            defaults.pop(key)
        elif key in ("window", "offset", "for", "keep_firing_for", "repeat_interval", "escalate_after"):
            if _duration(defaults[key], f"defaults.{key}", errors) is None:
                defaults.pop(key)  # reported once here, not again for every rule
        elif key in ("channels", "escalation_channels"):
            before = len(errors.errors)
            _channel_list(defaults[key], f"defaults.{key}", channels, errors)
            if len(errors.errors) > before:
                defaults.pop(key)

    dagster_channels: tuple[str, ...] = ()
    dagster_alerts = document.get("dagster_alerts")
    if dagster_alerts is not None:
        if not isinstance(dagster_alerts, dict):
            errors.add("dagster_alerts", f"expected a mapping with 'channels', got {_describe(dagster_alerts)}")
        else:
            for key in dagster_alerts:
                if key != "channels":
                    errors.add(f"dagster_alerts.{key}", _unknown(key, {"channels"}))
            dagster_channels = _channel_list(dagster_alerts.get("channels"), "dagster_alerts.channels", channels, errors)

    raw_rules = document.get("rules")
    if raw_rules is None:
        raw_rules = []
    if not isinstance(raw_rules, list):
        errors.add("rules", f"expected a list of rules, got {_describe(raw_rules)}")
        raw_rules = []
    rules: list[Rule] = []
    seen: dict[str, int] = {}
    for index, raw in enumerate(raw_rules):
        rule = _parse_rule(index, raw, defaults, channels, errors)
        name = raw.get("name") if isinstance(raw, dict) else None
        if isinstance(name, str):
            if name in seen:
                errors.add(f"rules[{index}] ({name}).name", f"duplicate: rules[{seen[name]}] has the same name")
            seen.setdefault(name, index)
        if rule is not None:
            rules.append(rule)
    if errors.errors:
        raise RulesError(path, errors.errors)
    warnings = tuple(warning for warning in map(metric_warning, rules) if warning)
    return RuleSet(tuple(rules), channels, dagster_channels, path, warnings)


def _metric_problem(metric: str, level: str) -> str | None:
    """Why the registry says `metric` at `level` has no data, or None."""
    spec = registry.BY_NAME.get(metric)
    if spec is not None:
        if level in spec.levels:
            return None
        return f"metric {metric!r} has no {level} values (it has {', '.join(spec.levels)})"
    if any(char in metric for char in "*?["):
        matches = registry.matching(metric)
        listed = f"it matches {', '.join(matches[:3])}{', …' if len(matches) > 3 else ''}" if matches else "it matches no registered metric"
        return f"metric {metric!r} is a pattern, but a rule reads one metric by its exact name ({listed})"
    close = registry.closest(metric)
    hint = f"closest: {', '.join(close)}" if close else "no registered name is close; see docs/metrics.md's index"
    return f"unknown metric {metric!r} ({hint})"


def metric_warning(rule: Rule) -> str | None:
    """One line naming the rule and every metric of it (its own, its min_samples count) that
    would find no data, or None."""
    metrics = [rule.metric] + ([rule.min_samples.metric] if rule.min_samples else [])
    problems = [problem for problem in (_metric_problem(m, rule.aggregation_level) for m in dict.fromkeys(metrics)) if problem]
    if not problems:
        return None
    return f"rule {rule.name!r}: {'; '.join(problems)}; it is evaluated but finds no data"


def load_rules(path: str | Path) -> RuleSet:
    """Read and validate the rules file at `path`."""
    path = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as error:
        raise RulesError(path, [f"cannot read the rules file: {error.strerror or error}"]) from None
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "YAML"
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise RulesError(path, [f"{where}: {problem}"]) from None
    return parse_rules(document, path)
