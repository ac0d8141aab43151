// Claude Nexus Proxy dashboard. No library: the charts are plain SVG. Served by the app (CSP: script-src 'self').
(function () {
  "use strict";
  var SVG = "http://www.w3.org/2000/svg";

  function num(n) { return Number(n || 0).toLocaleString("en-US"); }
  // The same rules as app.pricing.format_usd.
  function usd(v) {
    if (v === null || v === undefined) { return "unpriced"; }
    var a = Math.abs(v);
    if (v === 0) { return "$0.00"; }
    if (a >= 1) { return "$" + v.toLocaleString("en-US", {minimumFractionDigits: 2, maximumFractionDigits: 2}); }
    if (a >= 0.01) { return "$" + v.toFixed(4); }
    return "$" + v.toFixed(6);
  }
  // The same rule as the server's cost_cell: nothing priced -> "unpriced"; partly priced -> "*".
  function costCell(r) {
    if (r.unpricedRequests && r.unpricedRequests >= r.requests) { return "unpriced"; }
    return usd(r.costUsd) + (r.unpricedRequests ? "*" : "");
  }
  function ms(v) { return v === null || v === undefined ? "\u2013" : Math.round(v) + " ms"; }

  function el(tag, attrs, text) {
    var node = document.createElementNS(SVG, tag);
    Object.keys(attrs || {}).forEach(function (k) { node.setAttribute(k, attrs[k]); });
    if (text !== undefined) { node.textContent = text; }
    return node;
  }

  function drawChart(svg, series, key) {
    while (svg.firstChild) { svg.removeChild(svg.firstChild); }
    var W = 600, H = 140, L = 44, R = 8, T = 10, B = 22;
    var values = series.map(function (s) { return Number(s[key] || 0); });
    var max = Math.max.apply(null, values.concat([0]));
    var top = max > 0 ? max : 1;
    var n = values.length;
    var x = function (i) { return L + (n > 1 ? i * (W - L - R) / (n - 1) : (W - L - R) / 2); };
    var y = function (v) { return T + (H - T - B) * (1 - v / top); };
    svg.appendChild(el("line", {"class": "axis", x1: L, y1: H - B, x2: W - R, y2: H - B}));
    svg.appendChild(el("text", {x: 2, y: T + 8}, key === "costUsd" ? usd(max) : num(max)));
    svg.appendChild(el("text", {x: 2, y: H - B}, key === "costUsd" ? "$0" : "0"));
    if (n) {
      svg.appendChild(el("text", {x: L, y: H - 6}, series[0].start.slice(5, 16).replace("T", " ")));
      svg.appendChild(el("text", {x: W - R, y: H - 6, "text-anchor": "end"}, series[n - 1].start.slice(5, 16).replace("T", " ")));
    }
    var pts = values.map(function (v, i) { return x(i).toFixed(1) + "," + y(v).toFixed(1); });
    if (n > 1) {
      svg.appendChild(el("polygon", {"class": "area", points: x(0).toFixed(1) + "," + (H - B) + " " + pts.join(" ") + " " + x(n - 1).toFixed(1) + "," + (H - B)}));
      svg.appendChild(el("polyline", {"class": "line", points: pts.join(" ")}));
    }
    values.forEach(function (v, i) {
      var c = el("circle", {"class": "point", cx: x(i).toFixed(1), cy: y(v).toFixed(1), r: n > 60 ? 1.6 : 2.6,
                            "data-bucket": i, "data-value": v});
      c.appendChild(el("title", {}, series[i].start.replace("T", " ").slice(0, 16) + " UTC: " + (key === "costUsd" ? usd(v) : num(v))));
      svg.appendChild(c);
    });
    svg.setAttribute("data-points", String(n));
  }

  function cell(tr, text, cls) {
    var td = document.createElement("td");
    td.textContent = text;
    if (cls) { td.className = cls; }
    tr.appendChild(td);
    return td;
  }

  function fillTop(tableId, rows, label) {
    var tbody = document.querySelector("#" + tableId + " tbody");
    if (!tbody) { return; }
    while (tbody.firstChild) { tbody.removeChild(tbody.firstChild); }
    if (!rows.length) {
      var tr0 = document.createElement("tr");
      var td0 = cell(tr0, "No requests in this range", "empty");
      td0.colSpan = 5;
      tbody.appendChild(tr0);
      return;
    }
    rows.forEach(function (r) {
      var tr = document.createElement("tr");
      cell(tr, label(r));
      cell(tr, num(r.requests), "n");
      cell(tr, num(r.errors), "n");
      cell(tr, num(r.tokens), "n");
      var c = cell(tr, costCell(r), "n");
      c.setAttribute("data-value", String(r.costUsd));
      tbody.appendChild(tr);
    });
  }

  function render(data) {
    var t = data.totals;
    var set = function (key, text, value) {
      var node = document.querySelector('[data-total="' + key + '"]');
      if (!node) { return; }
      node.textContent = text;
      if (value !== undefined) { node.setAttribute("data-value", String(value)); }
    };
    set("requests", num(t.requests));
    set("errors", num(t.errors));
    set("errorRate", (t.errorRate * 100).toFixed(1) + "%");
    set("inputTokens", num(t.inputTokens));
    set("outputTokens", num(t.outputTokens));
    set("cacheCreationInputTokens", num(t.cacheCreationInputTokens));
    set("cacheReadInputTokens", num(t.cacheReadInputTokens));
    set("costUsd", usd(t.costUsd), t.costUsd);
    set("unpricedRequests", num(t.unpricedRequests) + " unpriced", t.unpricedRequests);
    set("p50Ms", ms(t.p50Ms));
    set("p95Ms", ms(t.p95Ms));
    document.querySelectorAll("svg.chart").forEach(function (svg) {
      drawChart(svg, data.series, svg.getAttribute("data-series"));
    });
    fillTop("top-domains", data.topDomains, function (r) { return r.domain; });
    fillTop("top-models", data.topModels, function (r) {
      return (r.requested || "\u2013") + (r.used && r.used !== r.requested ? " \u2192 " + r.used : "");
    });
    var updated = document.getElementById("updated");
    if (updated) { updated.textContent = data.generatedAt; }
  }

  function live(root) {
    var every = Math.max(1000, parseInt(root.getAttribute("data-poll-ms"), 10) || 5000);
    var api = root.getAttribute("data-api");
    var timer = null, busy = false;
    function poll() {
      if (document.hidden || busy) { return; }
      busy = true;
      fetch(api, {credentials: "same-origin", headers: {"accept": "application/json"}})
        .then(function (r) {
          if (r.status === 401) { window.location.assign("/dashboard/login"); return null; }
          return r.ok ? r.json() : null;
        })
        .then(function (data) { if (data) { render(data); root.setAttribute("data-polls", String(1 + (parseInt(root.getAttribute("data-polls"), 10) || 0))); } })
        .catch(function () { /* the next tick tries again */ })
        .then(function () { busy = false; });
    }
    function start() { if (timer === null) { timer = window.setInterval(poll, every); } }
    function stop() { if (timer !== null) { window.clearInterval(timer); timer = null; } }
    // A hidden tab does not poll at all; coming back refreshes at once.
    document.addEventListener("visibilitychange", function () {
      if (document.hidden) { stop(); } else { poll(); start(); }
    });
    if (!document.hidden) { start(); }
  }

  function rowLinks() {
    document.querySelectorAll("tr[data-href]").forEach(function (tr) {
      tr.addEventListener("click", function (ev) {
        if (ev.target.closest("a")) { return; }
        window.location.assign(tr.getAttribute("data-href"));
      });
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    var root = document.getElementById("charts");
    if (root) {
      render(JSON.parse(root.getAttribute("data-overview")));
      live(root);
    }
    rowLinks();
  });
})();
