// CrispML console: draws the charts from the page's JSON and keeps the traffic chart live.
// Loaded from this service only (the page's Content-Security-Policy allows nothing else).
(function () {
  "use strict";
  var config = { displaylogo: false, responsive: true, modeBarButtonsToRemove: ["lasso2d", "select2d"] };
  var base = {
    margin: { l: 56, r: 56, t: 44, b: 64 },
    font: { family: "system-ui, -apple-system, 'Segoe UI', sans-serif", size: 12, color: "#1f2933" },
    paper_bgcolor: "#ffffff",
    plot_bgcolor: "#ffffff",
    legend: { orientation: "h", x: 0, y: -0.3, yanchor: "top" },
    xaxis: { gridcolor: "#e4e7eb", zeroline: false },
    yaxis: { gridcolor: "#e4e7eb", zeroline: false, rangemode: "tozero" },
  };

  function layout(title, extra) {
    var out = JSON.parse(JSON.stringify(base));
    out.title = { text: title, x: 0, xanchor: "left", font: { size: 14 } };
    Object.keys(extra || {}).forEach(function (key) { out[key] = extra[key]; });
    return out;
  }

  var data = {};
  var source = document.getElementById("chart-data");
  if (source) {
    try { data = JSON.parse(source.textContent); } catch (e) { data = {}; }
  }
  document.querySelectorAll(".chart[data-series]").forEach(function (div) {
    var traces = data[div.dataset.series] || [];
    var axis = { title: { text: "day (frame)" }, dtick: 1, gridcolor: "#e4e7eb" };
    Plotly.newPlot(div, traces, layout(div.dataset.title, { xaxis: axis }), config);
  });

  document.querySelectorAll(".bar[data-share]").forEach(function (bar) {
    var share = Math.max(0, Math.min(1, parseFloat(bar.dataset.share) || 0));
    bar.style.width = (share * 60).toFixed(1) + "px";
  });

  var live = document.getElementById("chart-traffic");
  if (!live) { return; }
  function draw(series) {
    var traces = [
      { type: "scatter", mode: "lines", name: "requests per second", x: series.t, y: series.rps,
        line: { color: "#1c64f2" } },
      { type: "scatter", mode: "lines", name: "p50 latency (ms)", x: series.t, y: series.p50_ms,
        yaxis: "y2", line: { color: "#0e9f6e", dash: "dot" } },
      { type: "scatter", mode: "lines", name: "p95 latency (ms)", x: series.t, y: series.p95_ms,
        yaxis: "y2", line: { color: "#e02424" } },
    ];
    var extra = {
      xaxis: { type: "date", gridcolor: "#e4e7eb" },
      yaxis: { title: { text: "req/s" }, rangemode: "tozero", gridcolor: "#e4e7eb" },
      yaxis2: { title: { text: "ms" }, overlaying: "y", side: "right", rangemode: "tozero", showgrid: false },
    };
    if (series.t.length < 2) {
      extra.annotations = [{
        text: "Collecting samples: the chart fills in while the console is open.",
        xref: "paper", yref: "paper", x: 0.5, y: 0.5, showarrow: false,
        font: { color: "#616e7c", size: 13 },
      }];
      extra.xaxis.visible = false;
    }
    Plotly.react(live, traces, layout(live.dataset.title, extra), config);
    live.dataset.points = String(series.t.length);
  }
  function poll() {
    fetch("/console/api/traffic", { credentials: "same-origin", cache: "no-store" })
      .then(function (answer) { return answer.ok ? answer.json() : null; })
      .then(function (body) {
        if (!body) { return; }
        draw(body.series);
        var total = document.getElementById("traffic-requests");
        if (total) { total.textContent = body.summary.requests.toLocaleString("en"); }
      })
      .catch(function () { /* the next poll tries again */ });
  }
  draw(data.traffic || { t: [], rps: [], p50_ms: [], p95_ms: [] });
  poll();
  window.setInterval(poll, 5000);
})();
