/* quantlens report: draws the plots from the JSON data block.
   Names come from untrusted model files: they reach the DOM only through textContent, and
   plotly's pseudo-HTML hover text only after esc(). */
(function () {
  "use strict";
  var DATA = JSON.parse(document.getElementById("ql-data").textContent);
  var CONFIG = { displaylogo: false, responsive: true };
  var MODE_COLORS = {
    a8_w8: "#8fb0dc", a8_w4: "#c6d6ec", a16_w8: "#e377c2", a16_w16: "#d62728",
    a8_w8_a16: "#ff9f40", fp16: "#2ca02c", bf16: "#17becf", fp32: "#8c564b"
  };

  function esc(s) {
    return String(s).replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
  }
  function hover(lines) {
    return lines.filter(function (l) { return l; }).map(esc).join("<br>");
  }
  function db(v) { return v === null || v === undefined ? "—" : v.toFixed(1) + " dB"; }
  function range(n) { var r = []; for (var i = 0; i < n; i++) { r.push(i); } return r; }

  function panel(id, title, rows) {
    var el = document.getElementById(id);
    if (!el) { return; }
    el.textContent = "";
    var h = document.createElement("h3");
    h.textContent = title;
    el.appendChild(h);
    var table = document.createElement("table");
    rows.forEach(function (row) {
      var tr = table.insertRow();
      var th = document.createElement("th");
      th.textContent = row[0];
      tr.appendChild(th);
      tr.insertCell().textContent = row[1];
    });
    el.appendChild(table);
    el.hidden = false;
  }

  function showLayer(i) {
    var L = DATA.layers;
    panel("layer-panel", "layer " + L.id[i], L.details[i]);
    var select = document.getElementById("layer-select");
    if (select && DATA.plots && (DATA.plots[i].f || DATA.plots[i].e)) {
      select.value = String(i);
      layerPlots(i);
    }
  }

  function noisePlot() {
    var L = DATA.layers, x = range(L.id.length);
    var text = x.map(function (i) {
      return hover([L.id[i] + " (" + L.op[i] + ")",
        "accumulated " + db(L.acc[i]) + ", isolated " + db(L.iso[i]) + ", gradient " + db(L.grad[i]),
        L.flags[i].length ? "flags: " + L.flags[i].join(", ") : "",
        L.action[i] ? "suggested: " + L.action[i] : ""]);
    });
    var series = [["acc", "accumulated"], ["iso", "isolated"], ["grad", "gradient estimate"]];
    var traces = [];
    series.forEach(function (s) {
      var y = L[s[0]];
      if (y.some(function (v) { return v !== null; })) {
        traces.push({ x: x, y: y, name: s[1], mode: "lines+markers", type: "scatter",
          marker: { size: 5 }, hovertext: text, hoverinfo: "text", customdata: x });
      }
    });
    var flagged = x.filter(function (i) { return L.flags[i].length > 0; });
    var lowest = function (i) {
      var v = [L.acc[i], L.iso[i], L.grad[i]].filter(function (a) { return a !== null; });
      return v.length ? Math.min.apply(null, v) : null;
    };
    if (flagged.length) {
      traces.push({ x: flagged, y: flagged.map(lowest), name: "flagged", mode: "markers",
        type: "scatter", customdata: flagged, hoverinfo: "text",
        hovertext: flagged.map(function (i) { return text[i]; }),
        marker: { size: 13, color: "rgba(0,0,0,0)", line: { color: "#d62728", width: 2 } } });
    }
    var layout = { margin: { t: 20, r: 10 }, hovermode: "closest",
      xaxis: { title: { text: "layer (graph order)" } },
      yaxis: { title: { text: "SNR vs float (dB)" } }, legend: { orientation: "h" } };
    var el = document.getElementById("noise-plot");
    Plotly.newPlot(el, traces, layout, CONFIG);
    el.on("plotly_click", function (ev) { showLayer(ev.points[0].customdata); });
  }

  function layerPlots(i) {
    var P = DATA.plots[i], name = DATA.layers.id[i];
    if (P.f) {
      var lo = Math.min.apply(null, P.f), hi = Math.max.apply(null, P.f);
      Plotly.react("scatter-plot", [
        { x: P.f, y: P.q, mode: "markers", type: "scatter", name: "values",
          marker: { size: 4, opacity: 0.6 }, hoverinfo: "x+y" },
        { x: [lo, hi], y: [lo, hi], mode: "lines", type: "scatter", name: "no error",
          line: { dash: "dot", color: "#999" }, hoverinfo: "skip" }
      ], { margin: { t: 30, r: 10 }, title: { text: esc(name), font: { size: 13 } },
        xaxis: { title: { text: "float" } }, yaxis: { title: { text: "quantized" } },
        showlegend: false }, CONFIG);
    }
    if (P.e) {
      var centers = P.e.slice(1).map(function (e, k) { return (e + P.e[k]) / 2; });
      Plotly.react("hist-plot", [
        { x: centers, y: P.fc, type: "bar", name: "float", opacity: 0.6 },
        { x: centers, y: P.qc, type: "bar", name: "quantized", opacity: 0.6 }
      ], { margin: { t: 30, r: 10 }, barmode: "overlay", title: { text: "value histogram", font: { size: 13 } },
        xaxis: { title: { text: "value" } }, yaxis: { title: { text: "count" }, type: "log" },
        legend: { orientation: "h" } }, CONFIG);
    }
  }

  function scatterSection() {
    var select = document.getElementById("layer-select");
    select.addEventListener("change", function () { layerPlots(Number(select.value)); });
    layerPlots(Number(select.value));
  }

  function searchPlot() {
    var S = DATA.search;
    var pick = function (idx) {
      return { x: idx.map(function (i) { return S.cost[i]; }), y: idx.map(function (i) { return S.y[i]; }),
        hovertext: idx.map(function (i) { return esc(S.label[i]); }), hoverinfo: "text+x+y" };
    };
    var all = range(S.cost.length);
    var verified = all.filter(function (i) { return S.verified[i]; });
    var predicted = all.filter(function (i) { return !S.verified[i]; });
    var traces = [];
    var add = function (idx, extra) {
      if (idx.length) { traces.push(Object.assign(pick(idx), { type: "scatter" }, extra)); }
    };
    add(predicted, { name: "predicted", mode: "markers", marker: { symbol: "circle-open", color: "#999" } });
    add(verified, { name: "evaluated", mode: "markers", marker: { color: "#8fb0dc" } });
    add(S.pareto, { name: "Pareto front", mode: "lines+markers", line: { shape: "hv", color: "#2255aa" } });
    add(S.baseline, { name: "all-int8", mode: "markers", marker: { symbol: "square", size: 12, color: "#555" } });
    add(S.all16, { name: "all-16-bit", mode: "markers", marker: { symbol: "diamond", size: 12, color: "#d62728" } });
    add(S.chosen, { name: "chosen", mode: "markers", marker: { symbol: "star", size: 16, color: "#ff9f40" } });
    var shapes = S.float === null ? [] : [{ type: "line", xref: "paper", x0: 0, x1: 1, y0: S.float, y1: S.float,
      line: { dash: "dash", color: "#2ca02c" } }];
    Plotly.newPlot("search-plot", traces, { margin: { t: 20, r: 10 }, hovermode: "closest", shapes: shapes,
      xaxis: { title: { text: "cost relative to all-int8" } }, yaxis: { title: { text: esc(S.y_label) } },
      legend: { orientation: "h" } }, CONFIG);
  }

  function graphPlot() {
    var G = DATA.graph, n = G.name.length, ex = [], ey = [];
    G.edges.forEach(function (e) {
      ex.push(G.x[e[0]], G.x[e[1]], null);
      ey.push(G.y[e[0]], G.y[e[1]], null);
    });
    var traces = [{ x: ex, y: ey, mode: "lines", type: "scatter", name: "data flow",
      line: { color: "#ccc", width: 1 }, hoverinfo: "skip", showlegend: false }];
    var grouped = range(n).filter(function (i) { return G.group[i]; });
    var units = Array.from(new Set(grouped.map(function (i) { return G.group[i]; })));
    if (grouped.length) {
      traces.push({ x: grouped.map(function (i) { return G.x[i]; }), y: grouped.map(function (i) { return G.y[i]; }),
        mode: "markers", type: "scatter", name: "precision groups", hoverinfo: "text",
        hovertext: grouped.map(function (i) { return esc("group " + G.group[i]); }),
        marker: { size: 22, opacity: 0.25, color: grouped.map(function (i) { return units.indexOf(G.group[i]); }),
          colorscale: "Rainbow" } });
    }
    var modes = Array.from(new Set(G.mode));
    modes.forEach(function (mode) {
      var idx = range(n).filter(function (i) { return G.mode[i] === mode; });
      traces.push({ x: idx.map(function (i) { return G.x[i]; }), y: idx.map(function (i) { return G.y[i]; }),
        customdata: idx, mode: "markers", type: "scatter", name: esc(mode), hoverinfo: "text",
        hovertext: idx.map(function (i) {
          return hover([G.name[i] + " (" + G.op[i] + ")", "mode " + G.mode[i], G.group[i] ? "group " + G.group[i] : ""]);
        }),
        marker: { size: 9, color: MODE_COLORS[mode] || "#444", line: { color: "#333", width: 0.5 } } });
    });
    var el = document.getElementById("graph-plot");
    Plotly.newPlot(el, traces, { margin: { t: 20, r: 10 }, hovermode: "closest", dragmode: "pan",
      xaxis: { title: { text: "depth" }, zeroline: false }, yaxis: { visible: false },
      legend: { orientation: "h" } }, Object.assign({ scrollZoom: true }, CONFIG));
    el.on("plotly_click", function (ev) {
      var i = ev.points[0].customdata;
      if (i === undefined) { return; }
      var rows = [["op", G.op[i]], ["mode", G.mode[i]]];
      if (G.group[i]) { rows.push(["precision group", G.group[i]]); }
      var layer = G.layer[i];
      if (layer !== null && DATA.layers) {
        rows.push(["analysed as layer", DATA.layers.id[layer]]);
        rows = rows.concat(DATA.layers.details[layer]);
      }
      panel("node-panel", "node " + G.name[i], rows);
    });
  }

  if (DATA.layers) { noisePlot(); }
  if (DATA.plots) { scatterSection(); }
  if (DATA.search) { searchPlot(); }
  if (DATA.graph) { graphPlot(); }
})();
