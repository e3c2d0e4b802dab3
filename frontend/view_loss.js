// Loss views: a run's training loss as a small chart over the trends (zoomed and picked with them), and as a sparkline.

import {NONFINITE_CSS} from './colormap.js';
import {el, setupCanvas} from './dom.js';
import {formatStep, formatValue, lastIndexAtOrBefore} from './format.js';
import {palette} from './theme.js';
import {decadeSplits} from './view_trend.js';
import uPlot from './vendor/uplot/uPlot.esm.js';

const HEIGHT_PX = 96;
// The trend chart's hover key: hovering either shows the same step in both.
const SYNC_KEY = 'gradient-health-steps';
// A loss spanning more than this factor (all positive) is drawn on a log scale.
const LOG_SPAN = 20;
// Same width as the trend chart's value axis, so the two plots line up.
const AXIS_PX = 58;
const SPARK_WIDTH_PX = 220;
const SPARK_HEIGHT_PX = 44;

/** Returns the loss values of a run-level series as numbers (null for NaN/Inf and steps not recorded). */
function lossValues(series) {
  const values = [];
  for (let i = 0; i < series.steps.length; i++) {
    const value = series.values[i];
    values.push(Number.isFinite(value) && (series.missing === null || !series.missing[i]) ? value : null);
  }
  return values;
}

/** Returns [min, max] of the finite values, or null. */
function extent(values) {
  let lo = Infinity;
  let hi = -Infinity;
  for (const value of values) {
    if (value === null) continue;
    lo = Math.min(lo, value);
    hi = Math.max(hi, value);
  }
  return lo <= hi ? [lo, hi] : null;
}

/** Returns whether `values` are best read on a log scale: all positive, spanning orders of magnitude. */
function logScale(values) {
  const range = extent(values);
  return range !== null && range[0] > 0 && range[1] / range[0] > LOG_SPAN;
}

/**
 * One run's training loss over steps, over its trend chart: same steps, same zoom, same picked step.
 *
 * `handlers`: onSelectStep(step).
 */
export class LossChart {
  constructor(container, handlers) {
    this.container = container;
    this.handlers = handlers;
    this.plot = null;
    this.options = null;
    this.element = el('div', {class: 'loss-plot'});
    this.marker = el('div', {class: 'step-marker', attrs: {'aria-hidden': 'true'}});
    this.readout = el('div', {class: 'loss-readout'});
    container.append(el('div', {class: 'loss-title'}, [el('span', {text: 'training loss'}), this.readout]), this.element);
    this._resize = new ResizeObserver(() => {
      if (this.plot && this._width() !== this.plot.width) this.plot.setSize({width: this._width(), height: HEIGHT_PX});
      this._placeMarker();
    });
    this._resize.observe(this.container);
  }

  /** @param {object} options {series (run-level, layers ['loss']), xRange, selectedStep} */
  update(options) {
    this.options = options;
    const {series} = options;
    const values = lossValues(series);
    const log = logScale(values);
    const colours = palette();
    const opts = {
      width: this._width(),
      height: HEIGHT_PX,
      padding: [6, 12, 0, 0],
      legend: {show: false},
      cursor: {sync: {key: SYNC_KEY, setSeries: false}, drag: {x: false, y: false}, points: {size: 5}},
      scales: {x: {time: false}, y: log ? {distr: 3, log: 10} : {}},
      axes: [
        {stroke: colours.muted, grid: {stroke: colours.grid}, ticks: {stroke: colours.tick, size: 3}, values: (u, splits) => splits.map((v) => (Number.isInteger(v) ? formatStep(v) : '')), space: 70, size: 24},
        {
          stroke: colours.muted,
          grid: {stroke: colours.grid},
          ticks: {stroke: colours.tick, size: 3},
          values: (u, splits) => splits.map(formatValue),
          size: AXIS_PX,
          space: 24,
          // Decades only (uPlot's log axis would also grid every 2..9 of each decade, too dense in this height).
          ...(log ? {splits: decadeSplits, filter: (u, splits) => splits} : {}),
        },
      ],
      series: [{label: 'Step'}, {label: 'loss', stroke: colours.text, width: 1.4, spanGaps: false, points: {show: series.steps.length <= 60, size: 3}}],
      hooks: {
        draw: [(u) => drawNonFinite(u, series)],
        setCursor: [(u) => this._showValue(u.cursor.idx)],
        setScale: [(u, key) => key === 'x' && this._placeMarker()],
      },
    };
    if (this.plot) this.plot.destroy();
    this.element.replaceChildren();
    this.plot = new uPlot(opts, [Array.from(series.steps), values], this.element);
    this.plot.over.append(this.marker);
    const canvas = this.plot.ctx.canvas;
    canvas.setAttribute('role', 'img');
    const range = extent(values);
    canvas.setAttribute(
      'aria-label',
      `Training loss of run ${series.run.slice(0, 80)} over ${series.steps.length} steps` +
        (range ? `, from ${formatValue(values.find((v) => v !== null))} to ${formatValue(values.findLast((v) => v !== null))}` : ''),
    );
    this.plot.over.addEventListener('click', () => {
      const index = this.plot.cursor.idx;
      if (index !== null && index !== undefined) this.handlers.onSelectStep(series.steps[index]);
    });
    this.setXRange(options.xRange);
    this._showValue(null);
  }

  setXRange(range) {
    if (!this.plot || !range) return;
    this.options.xRange = range;
    this.plot.setScale('x', {min: range[0], max: range[1]});
  }

  setSelectedStep(step) {
    if (!this.plot) return;
    this.options.selectedStep = step;
    this._placeMarker();
    if (this.plot.cursor.idx === null || this.plot.cursor.idx === undefined) this._showValue(null);
  }

  destroy() {
    this._resize.disconnect();
    if (this.plot) this.plot.destroy();
    this.plot = null;
  }

  _width() {
    return Math.max(240, Math.floor(this.container.clientWidth));
  }

  _placeMarker() {
    if (!this.plot) return;
    const step = this.options.selectedStep;
    const x = step === null || step === undefined ? NaN : this.plot.valToPos(step, 'x');
    const inside = Number.isFinite(x) && x >= 0 && x <= this.plot.over.clientWidth;
    this.marker.hidden = !inside;
    if (inside) this.marker.style.left = `${Math.round(x)}px`;
  }

  _showValue(idx) {
    const {series, selectedStep} = this.options;
    const index = idx ?? (selectedStep === null || selectedStep === undefined ? -1 : lastIndexAtOrBefore(series.steps, selectedStep));
    this.readout.textContent = index >= 0 ? `step ${formatStep(series.steps[index])}: ${formatValue(series.values[index])}` : '';
  }
}

/** Marks the loss's NaN/Inf steps along the top of the plot, as the trend chart does. */
function drawNonFinite(u, series) {
  if (series.nonFinite.length === 0) return;
  const {left, top, width} = u.bbox;
  const ratio = window.devicePixelRatio || 1;
  const ctx = u.ctx;
  ctx.save();
  ctx.beginPath();
  ctx.rect(left, top, width, u.bbox.height);
  ctx.clip();
  ctx.fillStyle = NONFINITE_CSS;
  for (const index of series.nonFinite) {
    const x = u.valToPos(series.steps[index], 'x', true);
    ctx.fillRect(Math.round(x - ratio), top, Math.max(2, 2 * ratio), 4 * ratio);
  }
  ctx.restore();
}

/**
 * Returns a small chart of the training loss with `step` marked (the first step of a finding), or null without values.
 *
 * Drawn once on a canvas: it shows the trend a finding's evidence refers to, not the data to explore.
 */
export function lossSparkline(series, step) {
  const values = lossValues(series);
  const range = extent(values);
  if (range === null || series.steps.length < 2) return null;
  const log = logScale(values);
  const canvas = el('canvas', {class: 'loss-sparkline'});
  const ctx = setupCanvas(canvas, SPARK_WIDTH_PX, SPARK_HEIGHT_PX);
  const colours = palette();
  const steps = series.steps;
  const x = (s) => 2 + ((s - steps[0]) / (steps[steps.length - 1] - steps[0])) * (SPARK_WIDTH_PX - 4);
  const [lo, hi] = log ? range.map(Math.log10) : range;
  const y = (v) => {
    const t = hi > lo ? ((log ? Math.log10(v) : v) - lo) / (hi - lo) : 0.5;
    return SPARK_HEIGHT_PX - 3 - t * (SPARK_HEIGHT_PX - 6);
  };
  if (step !== null && step !== undefined) {
    ctx.strokeStyle = NONFINITE_CSS;
    ctx.setLineDash([3, 2]);
    ctx.beginPath();
    ctx.moveTo(Math.round(x(step)) + 0.5, 0);
    ctx.lineTo(Math.round(x(step)) + 0.5, SPARK_HEIGHT_PX);
    ctx.stroke();
    ctx.setLineDash([]);
  }
  ctx.strokeStyle = colours.text;
  ctx.lineWidth = 1.2;
  ctx.beginPath();
  let drawing = false;
  values.forEach((value, i) => {
    if (value === null) {
      drawing = false;
      return;
    }
    if (drawing) ctx.lineTo(x(steps[i]), y(value));
    else ctx.moveTo(x(steps[i]), y(value));
    drawing = true;
  });
  ctx.stroke();
  const first = values.find((v) => v !== null);
  const last = values.findLast((v) => v !== null);
  canvas.setAttribute('role', 'img');
  canvas.setAttribute(
    'aria-label',
    `training loss from ${formatValue(first)} to ${formatValue(last)} over steps ${formatStep(steps[0])} to ${formatStep(steps[steps.length - 1])}` +
      (step !== null && step !== undefined ? `; the finding starts at step ${formatStep(step)}` : ''),
  );
  return canvas;
}
