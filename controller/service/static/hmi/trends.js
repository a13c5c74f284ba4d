"use strict";
// A trend of the last ten minutes: the samples the live feed brings, on a vendored uPlot chart.
// The chart redraws at most once a second whatever the feed's rate.
function clockTime(seconds) {
  return new Date(seconds * 1000).toLocaleTimeString([], { hour12: false });
}

class Trend {
  constructor(container, title, series, unit) {
    this.container = container;
    this.windowS = 600;
    this.names = series;
    this.data = [[], ...series.map(() => [])];
    this.dirty = false;
    const palette = ["#1f6fd1", "#d1495b", "#2a9d3b", "#8a5cd1", "#c98a00", "#00838f"];
    const dashes = [[], [6, 3], [2, 2], [8, 2, 2, 2], [4, 4], [1, 3]];
    // The panel PC's screen sets a smaller chart (data-height) so that the page does not scroll.
    this.height = Number(container.dataset.height) || 150;
    this.plot = new uPlot({
      title, width: Math.max(240, container.clientWidth - 8), height: this.height,
      legend: { live: false }, // the names (and dashes) only: the values are on the panels
      scales: { x: { time: true } },
      // One line of 24-hour time under the chart (uPlot's default adds a date line).
      axes: [{ size: 26, values: (u, ticks) => ticks.map(clockTime) }, { label: unit, size: 56 }],
      // Each series is told apart by its dash too: colour is never the only signal.
      series: [{}, ...series.map((name, i) => ({
        label: name, stroke: palette[i % palette.length], dash: dashes[i % dashes.length], width: 2,
      }))],
    }, this.data, container);
    setInterval(() => this.draw(), 1000);
    new ResizeObserver(() => this.plot.setSize({
      width: Math.max(240, container.clientWidth - 8), height: this.height,
    })).observe(container);
  }

  push(t, values) {
    this.data[0].push(t);
    values.forEach((v, i) => this.data[i + 1].push(v === undefined ? null : v));
    const oldest = t - this.windowS;
    let drop = 0;
    while (drop < this.data[0].length && this.data[0][drop] < oldest) drop += 1;
    if (drop) this.data = this.data.map((column) => column.slice(drop));
    this.dirty = true;
  }

  // Older samples (a run's recorded minutes, for a page opened mid-run) ahead of the feed's.
  prepend(times, columns) {
    const first = this.data[0].length ? this.data[0][0] : Infinity;
    const older = times.filter((t) => t < first).length;
    this.data = this.data.map((column, i) => [...(i === 0 ? times : columns[i - 1]).slice(0, older), ...column]);
    this.dirty = true;
  }

  draw() {
    if (!this.dirty) return;
    this.dirty = false;
    this.plot.setData(this.data);
    this.container.dataset.points = String(this.data[0].length);
  }
}
