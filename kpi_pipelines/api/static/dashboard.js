// KPI dashboards: fetch the KPI API with the key kept in this tab's sessionStorage and draw
// each panel as an SVG line chart. No library, no network but this server (CSP 'self').
(function () {
  "use strict";

  var KEY_STORAGE = "kpiApiKey";
  var SVG = "http://www.w3.org/2000/svg";
  var W = 560, H = 230, M = { top: 12, right: 16, bottom: 28, left: 56 };
  var DAY = 86400000;
  var generation = 0; // a newer load makes older answers stale

  function $(selector, root) { return (root || document).querySelector(selector); }
  function $all(selector, root) { return Array.prototype.slice.call((root || document).querySelectorAll(selector)); }

  function isoDay(date) { return date.toISOString().slice(0, 10); }
  function todayUtc() { var now = new Date(); return new Date(Date.UTC(now.getUTCFullYear(), now.getUTCMonth(), now.getUTCDate())); }
  function parseDay(text) { return new Date(text + "T00:00:00Z"); }

  // Why `text` is not a calendar date YYYY-MM-DD (naming the part that is wrong), or "".
  function dateProblem(text) {
    var m = /^(\d{4})-(\d{2})-(\d{2})$/.exec(text || "");
    if (!m) return "not a date (YYYY-MM-DD)";
    var month = Number(m[2]), day = Number(m[3]);
    if (month < 1 || month > 12) return "month " + m[2] + " does not exist (01 to 12)";
    var last = new Date(Date.UTC(Number(m[1]), month, 0)).getUTCDate();
    if (day < 1 || day > last) return "day " + m[3] + " does not exist in " + m[1] + "-" + m[2] + " (01 to " + last + ")";
    return "";
  }

  // An alert's dimension set (JSON text, `{}` for the overall value) as people read it.
  function dimensionsText(value) {
    var dims = value;
    if (typeof value === "string") { try { dims = JSON.parse(value); } catch (e) { return value; } }
    if (!dims || typeof dims !== "object") return String(value);
    var keys = Object.keys(dims).sort();
    return keys.length ? keys.map(function (k) { return k + "=" + dims[k]; }).join(", ") : "overall";
  }

  function setStatus(text, isError) {
    var status = $("#status");
    status.textContent = text || "";
    status.className = isError ? "error" : "";
  }

  function apiKey() { try { return window.sessionStorage.getItem(KEY_STORAGE) || ""; } catch (e) { return ""; } }

  function showKeyForm(message) {
    $("#content").classList.add("hidden");
    $("#key-form").classList.remove("hidden");
    setStatus(message || "Enter an API key to see the KPIs.", Boolean(message));
    $("#api-key").focus();
  }

  function format(value, kind) {
    if (value === null || value === undefined || !isFinite(value)) return "–";
    switch (kind) {
      case "percent": return (value * 100).toFixed(Math.abs(value) < 0.1 ? 2 : 1) + "%";
      case "ratio": return value.toFixed(3);
      case "ms": return value >= 1000 ? (value / 1000).toFixed(2) + " s" : Math.round(value) + " ms";
      case "money": return value.toLocaleString("en-US", { maximumFractionDigits: value < 100 ? 2 : 0 });
      default: return Math.abs(value) >= 100 ? Math.round(value).toLocaleString("en-US") : value.toFixed(2);
    }
  }

  function request(path, params) {
    var query = new URLSearchParams(params);
    return fetch(path + "?" + query.toString(), {
      headers: { "X-API-Key": apiKey(), "Accept": "application/json" },
      cache: "no-store",
      credentials: "omit"
    }).then(function (response) {
      if (response.status === 401) { var e = new Error("unauthorized"); e.status = 401; throw e; }
      if (!response.ok) {
        return response.json().catch(function () { return {}; }).then(function (body) {
          var detail = typeof body.detail === "string" ? body.detail : (body.message || response.statusText);
          var retry = response.headers.get("Retry-After");
          var e = new Error("HTTP " + response.status + ": " + detail + (retry ? " (retry in " + retry + " s)" : ""));
          e.status = response.status;
          throw e;
        });
      }
      var snapshot = response.headers.get("X-KPI-Snapshot");
      return response.json().then(function (body) { body._snapshot = snapshot; body._snapshotTime = response.headers.get("X-KPI-Snapshot-Time"); return body; });
    });
  }

  // ---------------------------------------------------------------- chart

  function el(name, attrs, parent) {
    var node = document.createElementNS(SVG, name);
    Object.keys(attrs || {}).forEach(function (key) { node.setAttribute(key, attrs[key]); });
    if (parent) parent.appendChild(node);
    return node;
  }

  function niceTicks(min, max, count) {
    if (min === max) { var pad = Math.abs(min) * 0.1 || 1; min -= pad; max += pad; }
    var step = Math.pow(10, Math.floor(Math.log10((max - min) / count)));
    var err = (max - min) / count / step;
    step *= err >= 7.5 ? 10 : err >= 3.5 ? 5 : err >= 1.5 ? 2 : 1;
    var lo = Math.floor(min / step) * step, hi = Math.ceil(max / step) * step, ticks = [];
    for (var v = lo; v <= hi + step / 2; v += step) ticks.push(Number(v.toPrecision(12)));
    return { lo: lo, hi: hi, ticks: ticks };
  }

  function drawChart(container, series, range, kind) {
    container.textContent = "";
    var svg = el("svg", { viewBox: "0 0 " + W + " " + H, role: "img", "data-series": series.length });
    container.appendChild(svg);
    var points = 0;
    series.forEach(function (s) { points += s.points.length; });
    svg.setAttribute("data-points", points);
    var x0 = range.start.getTime(), x1 = range.end.getTime();
    if (x1 === x0) x1 = x0 + DAY;
    var values = [];
    series.forEach(function (s) { s.points.forEach(function (p) { if (p.value !== null) values.push(p.value); }); });
    if (!values.length) {
      el("text", { x: W / 2, y: H / 2, "text-anchor": "middle", "class": "empty" }, svg).textContent = "no data in this range";
      svg.setAttribute("aria-label", "no data");
      return;
    }
    var min = Math.min.apply(null, values), max = Math.max.apply(null, values);
    if (min > 0 && min < max * 0.5) min = 0;
    var y = niceTicks(min, max, 4);
    var px = function (t) { return M.left + (t - x0) / (x1 - x0) * (W - M.left - M.right); };
    var py = function (v) { return H - M.bottom - (v - y.lo) / (y.hi - y.lo) * (H - M.top - M.bottom); };
    var axis = el("g", { "class": "axis" }, svg);
    y.ticks.forEach(function (v) {
      el("line", { x1: M.left, x2: W - M.right, y1: py(v), y2: py(v), "class": "grid-line" }, axis);
      el("text", { x: M.left - 6, y: py(v) + 4, "text-anchor": "end" }, axis).textContent = format(v, kind);
    });
    var days = Math.max(1, Math.round((x1 - x0) / DAY));
    var every = Math.max(1, Math.ceil(days / 6));
    for (var d = 0; d <= days; d += every) {
      var t = x0 + d * DAY;
      el("text", { x: px(t), y: H - 8, "text-anchor": "middle" }, axis).textContent = isoDay(new Date(t)).slice(5);
    }
    series.forEach(function (s, i) {
      var cls = "c" + (i % 8);
      var pts = s.points.filter(function (p) { return p.value !== null; }).map(function (p) {
        return [px(Date.parse(p.timestamp)), py(p.value), p];
      });
      if (!pts.length) return;
      var d = pts.map(function (p, j) { return (j ? "L" : "M") + p[0].toFixed(1) + " " + p[1].toFixed(1); }).join("");
      el("path", { d: d, "class": "line " + cls, "data-metric": s.label }, svg);
      pts.forEach(function (p) {
        var dot = el("circle", { cx: p[0].toFixed(1), cy: p[1].toFixed(1), r: pts.length > 60 ? 1.5 : 3, "class": cls }, svg);
        el("title", {}, dot).textContent = s.label + " " + p[2].timestamp.slice(0, 10) + ": " + format(p[2].value, kind);
      });
    });
    svg.setAttribute("aria-label", series.map(function (s) { return s.label; }).join(", "));
  }

  function legend(container, series) {
    var box = document.createElement("div");
    box.className = "legend";
    series.forEach(function (s, i) {
      var item = document.createElement("span");
      item.className = "c" + (i % 8);
      item.textContent = s.label;
      box.appendChild(item);
    });
    container.appendChild(box);
  }

  // ---------------------------------------------------------------- panels

  function overallSeries(body, names) {
    var byName = {};
    if (body.series) {
      body.series.forEach(function (s) { byName[s.metric_name] = s; });
    } else {
      body.metrics.forEach(function (row) {
        var s = byName[row.metric_name] || (byName[row.metric_name] = { metric_name: row.metric_name, points: [] });
        s.points.push({ timestamp: row.timestamp, value: row.metric_value });
      });
    }
    return names.filter(function (name) { return byName[name]; }).map(function (name) {
      return { label: name, points: byName[name].points };
    });
  }

  function loadPanel(panel, range, gen) {
    var names = (panel.getAttribute("data-metrics") || panel.getAttribute("data-names")).split(",");
    var endpoint = panel.getAttribute("data-endpoint");
    var params = [["start", isoDay(range.start)], ["end", isoDay(range.end)], ["dimensions", "{}"]];
    var path = "/api/kpi/" + (endpoint || "metrics");
    if (!endpoint) names.forEach(function (n) { params.push(["name", n]); });
    var chart = $(".chart", panel), note = $(".note", panel);
    return request(path, params).then(function (body) {
      if (gen !== generation) return null;
      var series = overallSeries(body, names);
      drawChart(chart, series, range, panel.getAttribute("data-format"));
      legend(chart, series);
      var notes = [];
      var drawn = series.map(function (s) { return s.label; });
      var missing = names.filter(function (name) { return drawn.indexOf(name) < 0; });
      if (drawn.length && missing.length) {
        // a line that is absent says why, rather than leaving the reader to guess (day-7 retention)
        notes.push("No data in this range yet for " + missing.join(", ") + "." +
          (panel.getAttribute("data-missing-note") ? " " + panel.getAttribute("data-missing-note") : ""));
      }
      if (body._snapshot === "stale") notes.push("warehouse busy: values as of " + body._snapshotTime);
      note.textContent = notes.join(" ");
      return series;
    }, function (error) {
      if (error.status === 401) throw error;
      if (gen === generation) { chart.textContent = ""; note.textContent = error.message; }
      return null;
    });
  }

  function loadTiles(range, gen) {
    var tiles = $all(".tile[data-metric]");
    if (!tiles.length) return Promise.resolve();
    var params = [["start", isoDay(range.start)], ["end", isoDay(range.end)], ["dimensions", "{}"]];
    tiles.forEach(function (tile) { params.push(["name", tile.getAttribute("data-metric")]); });
    return request("/api/kpi/metrics", params).then(function (body) {
      if (gen !== generation) return;
      tiles.forEach(function (tile) {
        var name = tile.getAttribute("data-metric"), kind = tile.getAttribute("data-format");
        var rows = body.metrics.filter(function (r) { return r.metric_name === name && r.metric_value !== null; });
        var value = $(".value", tile), sub = $(".sub", tile);
        if (!rows.length) { value.textContent = "–"; sub.textContent = "no data"; return; }
        var sum = rows.reduce(function (a, r) { return a + r.metric_value; }, 0);
        if (tile.getAttribute("data-sum") === "true") {
          value.textContent = format(sum, kind);
          sub.textContent = "total over " + rows.length + " days";
        } else {
          value.textContent = format(rows[rows.length - 1].metric_value, kind);
          sub.textContent = "last day " + rows[rows.length - 1].timestamp.slice(0, 10) + " · mean " + format(sum / rows.length, kind);
        }
      });
    });
  }

  function loadAlerts(gen) {
    var box = $("#alerts");
    if (!box) return Promise.resolve();
    return request("/api/kpi/alerts", []).then(function (body) {
      if (gen !== generation) return;
      box.textContent = "";
      if (!body.alerts.length) { box.textContent = "No active alerts."; return; }
      var table = document.createElement("table");
      table.className = "alerts";
      var columns = [["severity", "Severity"], ["rule_name", "Rule"], ["metric_name", "Metric"], ["dimensions", "Dimensions"],
        ["current_value", "Value"], ["threshold_value", "Threshold"], ["status", "Status"], ["triggered_at", "Since"]];
      var head = table.createTHead().insertRow();
      columns.forEach(function (c) { var th = document.createElement("th"); th.textContent = c[1]; head.appendChild(th); });
      var tbody = table.createTBody();
      body.alerts.forEach(function (alert) {
        var row = tbody.insertRow();
        columns.forEach(function (c) {
          var cell = row.insertCell(), value = alert[c[0]];
          if (c[0] === "dimensions") value = dimensionsText(value);
          cell.textContent = value === null || value === undefined ? "" : (typeof value === "number" ? format(value) : String(value));
          if (c[0] === "severity" && value) cell.className = String(value);
        });
      });
      box.appendChild(table);
    }, function (error) {
      if (error.status === 401) throw error;
      if (gen === generation) box.textContent = error.message;
    });
  }

  function currentRange() {
    var start = $("#start").value, end = $("#end").value;
    return { start: parseDay(start), end: parseDay(end) };
  }

  function load() {
    if (!apiKey()) { showKeyForm(); return Promise.resolve(); }
    var bad = ["start", "end"].filter(function (id) { return dateProblem($("#" + id).value); });
    if (bad.length) {
      setStatus("Enter a " + bad.join(" and an ") + " date (YYYY-MM-DD).", true);
      document.body.setAttribute("data-state", "error");
      return Promise.resolve();
    }
    var range = currentRange();
    if (!(range.start <= range.end)) { setStatus("The start date is after the end date.", true); return Promise.resolve(); }
    $("#key-form").classList.add("hidden");
    $("#content").classList.remove("hidden");
    var gen = ++generation;
    setStatus("Loading " + isoDay(range.start) + " to " + isoDay(range.end) + "…");
    document.body.setAttribute("data-state", "loading");
    var work = $all(".panel[data-metrics], .panel[data-names]").map(function (panel) { return loadPanel(panel, range, gen); });
    work.push(loadTiles(range, gen));
    work.push(loadAlerts(gen));
    return Promise.all(work).then(function () {
      if (gen !== generation) return;
      setStatus("UTC days " + isoDay(range.start) + " to " + isoDay(range.end) + ".");
      document.body.setAttribute("data-state", "ready");
      document.body.setAttribute("data-range", isoDay(range.start) + "/" + isoDay(range.end));
    }, function (error) {
      if (gen !== generation) return;
      if (error.status === 401) {
        try { window.sessionStorage.removeItem(KEY_STORAGE); } catch (e) { /* storage disabled */ }
        showKeyForm("The API key was refused; enter a valid key.");
      } else {
        setStatus(error.message, true);
      }
      document.body.setAttribute("data-state", "error");
    });
  }

  function setDays(days) {
    var end = $("#end").value ? parseDay($("#end").value) : todayUtc();
    $("#start").value = isoDay(new Date(end.getTime() - (days - 1) * DAY));
    $("#end").value = isoDay(end);
  }

  document.addEventListener("DOMContentLoaded", function () {
    var params = new URLSearchParams(window.location.search);
    // a date input drops a value that is not a date silently: name the bad parameter instead
    var invalid = ["start", "end"].filter(function (name) { return params.get(name) && dateProblem(params.get(name)); });
    invalid.forEach(function (name) { params.delete(name); });
    $("#end").value = params.get("end") || isoDay(todayUtc());
    if (params.get("start")) $("#start").value = params.get("start"); else setDays(30);
    $("#range").addEventListener("submit", function (event) { event.preventDefault(); load(); });
    $all("button.preset").forEach(function (button) {
      button.addEventListener("click", function () { setDays(Number(button.getAttribute("data-days"))); load(); });
    });
    $("#forget-key").addEventListener("click", function () {
      try { window.sessionStorage.removeItem(KEY_STORAGE); } catch (e) { /* storage disabled */ }
      showKeyForm();
    });
    $("#key-form").addEventListener("submit", function (event) {
      event.preventDefault();
      try { window.sessionStorage.setItem(KEY_STORAGE, $("#api-key").value.trim()); } catch (e) { /* storage disabled */ }
      $("#api-key").value = "";
      load();
    });
    if (invalid.length) {
      var search = new URLSearchParams(window.location.search);
      setStatus("The address's " + invalid.map(function (name) {
        return name + "=" + search.get(name) + " is " + (/^not/.test(dateProblem(search.get(name))) ? "" : "not a date: ") +
          dateProblem(search.get(name));
      }).join("; ") + ". Choose the dates below.", true);
      document.body.setAttribute("data-state", "error");
      return;
    }
    load();
  });
})();
