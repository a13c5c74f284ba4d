// The run report's plots: the data block (JSON) drawn with the inlined uPlot, 680 px wide
// when printed (A4 portrait between 12 mm margins), the page's width on screen.
(function () {
  "use strict";
  var PRINT_WIDTH = 680;
  var HEIGHT = 220;
  var COLOURS = ["#1565c0", "#c62828", "#2e7d32", "#ef6c00", "#6a1b9a", "#00838f", "#5d4037"];
  var data = JSON.parse(document.getElementById("report-data").textContent);
  var charts = [];

  function width(el) {
    if (window.matchMedia && window.matchMedia("print").matches) { return PRINT_WIDTH; }
    return Math.max(320, Math.min(el.clientWidth || PRINT_WIDTH, 1100));
  }

  data.plots.forEach(function (plot) {
    var el = document.getElementById("plot-" + plot.key);
    if (!el) { return; }
    var byPass = plot.x === "pass";
    var series = [{ label: byPass ? "pass" : "time" }].concat(plot.series.map(function (s, i) {
      return {
        label: s.label,
        stroke: COLOURS[i % COLOURS.length],
        width: 1.5,
        dash: s.dash ? [6, 4] : undefined,
        spanGaps: false,
        points: { show: byPass && !s.dash }
      };
    }));
    var opts = {
      width: width(el),
      height: HEIGHT,
      scales: { x: { time: !byPass } },
      series: series,
      axes: [
        byPass ? { label: "pass", incrs: [1, 2, 5, 10, 20, 50, 100, 200, 500] } : {},
        { label: plot.unit }
      ]
    };
    var columns = [data.x[plot.x]].concat(plot.series.map(function (s) { return s.values; }));
    charts.push({ el: el, chart: new uPlot(opts, columns, el) });
  });

  function resize(forPrint) {
    charts.forEach(function (c) {
      c.chart.setSize({ width: forPrint ? PRINT_WIDTH : width(c.el), height: HEIGHT });
    });
  }
  window.addEventListener("beforeprint", function () { resize(true); });
  window.addEventListener("afterprint", function () { resize(false); });
  window.addEventListener("resize", function () { resize(false); });
}());
