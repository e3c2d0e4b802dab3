// Trend view: one line per layer over steps (uPlot), with non-finite steps and the selected step marked.

import uPlot from './vendor/uplot/uPlot.esm.js';
import {layerColour, NONFINITE_CSS} from './colormap.js';
import {el} from './dom.js';
import {formatPowerOfTen, formatStep, formatValue, lastIndexAtOrBefore, smooth} from './format.js';
import {column, recorded} from './model.js';
import {palette} from './theme.js';

const HEIGHT_PX = 250;
// Hovering one chart shows the read-out at the same step in every run's chart.
const SYNC_KEY = 'gradient-health-steps';
// A press that moves less than this is a click (select a step), not a zoom drag.
const CLICK_SLOP_PX = 3;
// A second click within this time makes a double-click.
const DOUBLE_CLICK_MS = 250;
const NONFINITE_BAND_CSS = 'rgba(228, 26, 28, 0.16)';
const MARKER_SIZE_PX = 7;

// Value-axis labels this far apart at least (CSS pixels): decades are thinned out to fit.
const VALUE_TICK_SPACING_PX = 26;

function ticksAsSteps(u, splits) {
  return splits.map((v) => (v === null ? null : Number.isInteger(v) ? formatStep(v) : ''));
}

function ticksAsValues(u, splits) {
  return splits.map((v) => {
    if (v === null) return null;
    const exponent = Math.log10(v);
    return v > 0 && Math.abs(exponent - Math.round(exponent)) < 1e-9 ? formatPowerOfTen(Math.round(exponent)) : formatValue(v);
  });
}

/** Returns decade splits of a log axis, every k-th decade when they would crowd. */
function decadeSplits(u, axisIndex, min, max) {
  const lo = Math.ceil(Math.log10(min) - 1e-9);
  const hi = Math.floor(Math.log10(max) + 1e-9);
  const height = u.bbox.height / (window.devicePixelRatio || 1);
  const fit = Math.max(2, Math.floor(height / VALUE_TICK_SPACING_PX));
  const stride = Math.max(1, Math.ceil((hi - lo + 1) / fit));
  const splits = [];
  for (let e = hi; e >= lo; e -= stride) splits.unshift(10 ** e);
  return splits;
}

/** Draws a red band and a top marker at every step where some layer is NaN or infinite. */
function drawNonFiniteMarks(u, series) {
  if (series.nonFinite.length === 0) return;
  const ctx = u.ctx;
  const {left, top, width, height} = u.bbox;
  const ratio = window.devicePixelRatio || 1;
  const band = Math.max(2 * ratio, 1);
  const marker = MARKER_SIZE_PX * ratio;
  ctx.save();
  ctx.beginPath();
  ctx.rect(left, top, width, height);
  ctx.clip();
  for (const index of series.nonFinite) {
    const x = Math.round(u.valToPos(series.steps[index], 'x', true));
    if (x < left - band || x > left + width + band) continue;
    ctx.fillStyle = NONFINITE_BAND_CSS;
    ctx.fillRect(x - band, top, 2 * band, height);
    ctx.fillStyle = NONFINITE_CSS;
    ctx.beginPath();
    ctx.moveTo(x - marker, top);
    ctx.lineTo(x + marker, top);
    ctx.lineTo(x, top + marker * 1.4);
    ctx.closePath();
    ctx.fill();
  }
  ctx.restore();
}

function drawSelectedStep(u, step) {
  if (step === null || step === undefined) return;
  const x = Math.round(u.valToPos(step, 'x', true));
  const {left, top, width, height} = u.bbox;
  if (x < left || x > left + width) return;
  const ctx = u.ctx;
  const ratio = window.devicePixelRatio || 1;
  ctx.save();
  ctx.strokeStyle = palette().marker;
  ctx.lineWidth = ratio;
  ctx.setLineDash([4 * ratio, 3 * ratio]);
  ctx.beginPath();
  ctx.moveTo(x + 0.5, top);
  ctx.lineTo(x + 0.5, top + height);
  ctx.stroke();
  ctx.restore();
}

/**
 * One run's trend chart.
 *
 * `handlers`: onZoom([min, max]), onResetZoom(), onSelectStep(step), onToggleLayer(name, shown).
 */
export class TrendChart {
  constructor(container, handlers) {
    this.container = container;
    this.handlers = handlers;
    this.plot = null;
    this.options = null;
    this._programmatic = false;
    this._dragged = false;
    this.element = el('div', {class: 'trend-plot'});
    this.note = el('div', {class: 'chart-note'});
    container.append(this.element, this.note);
    this._resize = new ResizeObserver(() => this._fitWidth());
    this._resize.observe(this.container);
  }

  /**
   * Draws `series` with the shared scales.
   *
   * @param {object} options {series, logY, smoothing, yRange, xRange, selectedStep, hiddenLayers}
   */
  update(options) {
    this.options = options;
    const {series, logY, smoothing, yRange, hiddenLayers} = options;
    const lines = series.layers.map((name, j) => smooth(column(series, j), smoothing, logY));
    const data = [Array.from(series.steps), ...lines];
    const colours = palette();
    const opts = {
      width: this._width(),
      height: HEIGHT_PX,
      padding: [10, 12, 0, 0],
      legend: {live: true},
      cursor: {
        sync: {key: SYNC_KEY, setSeries: false},
        drag: {x: true, y: false, setScale: true},
        points: {size: 6},
        bind: {
          // Double-click resets every chart to the shared range, not this run's own.
          dblclick: () => (event) => {
            if (event.button === 0) this.handlers.onResetZoom();
            return null;
          },
        },
      },
      scales: {
        x: {time: false},
        y: logY ? {distr: 3, log: 10, range: () => yRange} : {range: () => yRange},
      },
      axes: [
        {stroke: colours.muted, grid: {stroke: colours.grid}, ticks: {stroke: colours.tick, size: 4}, values: ticksAsSteps, space: 70},
        {
          stroke: colours.muted,
          grid: {stroke: colours.grid},
          ticks: {stroke: colours.tick, size: 4},
          values: ticksAsValues,
          size: 58,
          // Our splits are already thinned: keep every label (uPlot's log filter drops most).
          ...(logY ? {splits: decadeSplits, filter: (u, splits) => splits} : {}),
        },
      ],
      series: [
        // Away from the plot, the read-out shows the selected step.
        {label: 'Step', value: (u, v, si, idx) => this._readout(idx, (i) => formatStep(series.steps[i]))},
        ...series.layers.map((name, j) => ({
          label: name,
          stroke: layerColour(j),
          width: 1.6,
          show: !hiddenLayers.has(name),
          spanGaps: false,
          points: {show: series.steps.length <= 60, size: 4},
          // The read-out shows the raw value (NaN and Inf included), even when the line is smoothed.
          value: (u, v, si, idx) => this._readout(idx, (i) => (recorded(series, j, i) ? formatValue(series.values[j * series.steps.length + i]) : 'not recorded')),
        })),
      ],
      hooks: {
        draw: [(u) => drawNonFiniteMarks(u, series), (u) => drawSelectedStep(u, this.options.selectedStep)],
        // A drag shows its selection box (setSelect) just before uPlot zooms to it.
        setSelect: [(u) => {
          if (u.select.width > 0) this._dragged = true;
        }],
        setScale: [(u, key) => this._scaleChanged(u, key)],
        setSeries: [(u, index, change) => this._seriesChanged(u, index, change)],
      },
    };
    if (this.plot) this.plot.destroy();
    this.element.replaceChildren();
    this.plot = new uPlot(opts, data, this.element);
    this._bindClick();
    this.setXRange(options.xRange);
    this._writeNote(series);
  }

  /** Redraws the lines with another smoothing, keeping the chart (and its zoom) as it is. */
  setSmoothing(weight) {
    if (!this.plot || weight === this.options.smoothing) return;
    this.options.smoothing = weight;
    const {series, logY} = this.options;
    this.plot.setData([Array.from(series.steps), ...series.layers.map((name, j) => smooth(column(series, j), weight, logY))], false);
  }

  /** Shows steps `range` = [min, max] without telling the handlers (they asked for it). */
  setXRange(range) {
    if (!this.plot || !range) return;
    this.options.xRange = range;
    this._programmatic = true;
    try {
      this.plot.setScale('x', {min: range[0], max: range[1]});
    } finally {
      this._programmatic = false;
    }
  }

  setSelectedStep(step) {
    if (!this.plot) return;
    this.options.selectedStep = step;
    this.plot.redraw(false);
    this.plot.setLegend();
  }

  setLayerShown(name, shown) {
    if (!this.plot) return;
    const index = this.plot.series.findIndex((s, i) => i > 0 && s.label === name);
    if (index < 0 || this.plot.series[index].show === shown) return;
    this._programmatic = true;
    try {
      this.plot.setSeries(index, {show: shown});
    } finally {
      this._programmatic = false;
    }
  }

  destroy() {
    this._resize.disconnect();
    if (this.plot) this.plot.destroy();
    this.plot = null;
  }

  _width() {
    return Math.max(240, Math.floor(this.container.clientWidth));
  }

  _fitWidth() {
    if (!this.plot) return;
    const width = this._width();
    if (width !== this.plot.width) this.plot.setSize({width, height: HEIGHT_PX});
  }

  _readout(idx, format) {
    let index = idx;
    if (index === null || index === undefined) {
      const step = this.options.selectedStep;
      index = step === null || step === undefined ? -1 : lastIndexAtOrBefore(this.options.series.steps, step);
    }
    return index >= 0 ? format(index) : '–';
  }

  _scaleChanged(u, key) {
    // Only a drag is the user zooming; uPlot also sets the scale itself, e.g. when created.
    if (key !== 'x' || this._programmatic || !this._dragged || u.scales.x.min === null) return;
    this._dragged = false;
    this.handlers.onZoom([u.scales.x.min, u.scales.x.max]);
  }

  _seriesChanged(u, index, change) {
    if (this._programmatic || index === null || !change || change.show === undefined) return;
    this.handlers.onToggleLayer(u.series[index].label, change.show);
  }

  _bindClick() {
    const over = this.plot.over;
    let down = null;
    let pending = null;
    over.addEventListener('mousedown', (event) => {
      down = [event.clientX, event.clientY];
    });
    over.addEventListener('click', (event) => {
      if (!down) return;
      const moved = Math.hypot(event.clientX - down[0], event.clientY - down[1]);
      down = null;
      const index = this.plot.cursor.idx;
      if (moved > CLICK_SLOP_PX || index === null || index === undefined) return;
      const step = this.options.series.steps[index];
      // Wait out a double-click (which resets the zoom) before treating this as a pick.
      clearTimeout(pending);
      pending = setTimeout(() => this.handlers.onSelectStep(step), DOUBLE_CLICK_MS);
    });
    over.addEventListener('dblclick', () => clearTimeout(pending));
  }

  _writeNote(series) {
    if (series.nonFinite.length === 0) {
      this.note.replaceChildren();
      this.note.className = 'chart-note';
      return;
    }
    const first = series.steps[series.nonFinite[0]];
    const count = series.nonFinite.length;
    this.note.className = 'chart-note nonfinite-note';
    this.note.replaceChildren(
      el('span', {class: 'nonfinite-swatch', attrs: {'aria-hidden': 'true'}}),
      `NaN or Inf in ${count} logged step${count === 1 ? '' : 's'}, first at step ${formatStep(first)} (red marks; those points have no place on the line).`,
    );
  }
}
