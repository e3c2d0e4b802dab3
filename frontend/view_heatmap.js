// Heatmap view: layers (rows, input at the top) x steps (columns), colour = log10 of the value; and its colour legend.

import {NONFINITE_CSS, NONFINITE_RGB, rgbCss, valueRgb, viridis, ZERO_CSS, ZERO_RGB} from './colormap.js';
import {el, fitText, setupCanvas} from './dom.js';
import {formatPowerOfTen, formatStep, formatValue, nearestIndex} from './format.js';
import {recorded} from './model.js';
import {palette, smallFont} from './theme.js';

const LABEL_MAX_PX = 130;
const LABEL_GAP_PX = 8;
const AXIS_PX = 22;
// Room above the rows for the selected-step marker.
const TOP_PX = 9;
const MARKER_PX = 5;
const RIGHT_PX = 10;
// Rows are tall enough to hover comfortably; many layers shrink them down to a readable minimum.
const ROW_MAX_PX = 24;
const ROW_MIN_PX = 5;
const PLOT_MAX_HEIGHT_PX = 420;
// Below this row height the names would overlap: label every k-th row only.
const LABEL_MIN_ROW_PX = 11;
const TICK_SPACING_PX = 90;
const LEGEND_WIDTH_PX = 260;
const LEGEND_BAR_PX = 12;

// Cell kinds of the per-pixel aggregate (a pixel column can cover many steps); EMPTY is also "not recorded".
const EMPTY = 0;
const FINITE = 1;
const ZERO = 2;
const NONFINITE = 3;

/** Returns about `count` round step values spanning [min, max]. */
export function niceTicks(min, max, count) {
  const span = max - min;
  if (!(span > 0) || count < 1) return [min];
  const raw = span / count;
  const magnitude = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * magnitude).find((s) => s >= raw);
  const ticks = [];
  // `|| 0` turns -0 into 0 (it would print as "-0").
  for (let t = Math.ceil(min / step) * step; t <= max + 1e-9; t += step) ticks.push(Math.round(t) || 0);
  return ticks;
}

/**
 * Aggregates a run's cells into `width` pixel columns over steps [x0, x1]; cell i is centred on step i.
 *
 * Several steps in one pixel column keep the strongest signal: a non-finite value wins, then
 * the largest finite value, so a spike or a NaN never disappears by downsampling.
 * Returns {kinds: Uint8Array, values: Float64Array}, row-major [layer][pixel].
 */
export function aggregateColumns(series, x0, x1, width) {
  const nLayers = series.layers.length;
  const kinds = new Uint8Array(width * nLayers);
  const values = new Float64Array(width * nLayers);
  const steps = series.steps;
  const n = steps.length;
  const missing = series.missing;
  const span = x1 - x0;
  if (!(span > 0) || steps.length === 0) return {kinds, values};
  const toPixel = (step) => ((step - x0) / span) * width;
  for (let i = 0; i < steps.length; i++) {
    const [start, end] = cellBounds(steps, i);
    if (end <= x0 || start >= x1) continue;
    const p0 = Math.max(0, Math.floor(toPixel(start)));
    // Every pixel column the cell overlaps, even partly, so no cell is ever skipped.
    const p1 = Math.min(width, Math.max(p0 + 1, Math.ceil(toPixel(end))));
    for (let j = 0; j < nLayers; j++) {
      if (missing !== null && missing[j * n + i]) continue;
      const value = series.values[j * n + i];
      const kind = !Number.isFinite(value) ? NONFINITE : value <= 0 ? ZERO : FINITE;
      for (let p = p0; p < p1; p++) {
        const cell = j * width + p;
        const old = kinds[cell];
        if (kind === NONFINITE || old === EMPTY || (old !== NONFINITE && kind === FINITE && (old === ZERO || value > values[cell]))) {
          kinds[cell] = kind;
          values[cell] = value;
        }
      }
    }
  }
  return {kinds, values};
}

/** Returns the step interval [start, end) of cell `i`: it reaches halfway to its neighbours. */
export function cellBounds(steps, i) {
  const n = steps.length;
  if (n === 1) return [steps[0] - 0.5, steps[0] + 0.5];
  const before = i > 0 ? (steps[i] - steps[i - 1]) / 2 : (steps[1] - steps[0]) / 2;
  const after = i < n - 1 ? (steps[i + 1] - steps[i]) / 2 : (steps[n - 1] - steps[n - 2]) / 2;
  return [steps[i] - before, steps[i] + after];
}

/**
 * Returns the step interval [start, end] the cells of `seriesList` cover together, or null without steps.
 *
 * Cells reach halfway to their neighbours, so a downsampled series (uneven spacing) has wider
 * first and last cells than its smallest gap suggests.
 */
export function cellExtent(seriesList) {
  let lo = Infinity;
  let hi = -Infinity;
  for (const series of seriesList) {
    const n = series.steps.length;
    if (n === 0) continue;
    lo = Math.min(lo, cellBounds(series.steps, 0)[0]);
    hi = Math.max(hi, cellBounds(series.steps, n - 1)[1]);
  }
  return Number.isFinite(lo) ? [lo, hi] : null;
}

/** One run's heatmap. `handlers`: onSelectStep(step). */
export class Heatmap {
  constructor(container, handlers) {
    this.container = container;
    this.handlers = handlers;
    this.options = null;
    this.canvas = el('canvas', {class: 'heatmap-canvas'});
    this.tooltip = el('div', {class: 'tooltip', hidden: true});
    this.element = el('div', {class: 'heatmap'}, [this.canvas, this.tooltip]);
    container.append(this.element);
    this.canvas.addEventListener('mousemove', (event) => this._hover(event));
    this.canvas.addEventListener('mouseleave', () => {
      this.tooltip.hidden = true;
    });
    this.canvas.addEventListener('click', (event) => {
      const cell = this._cellAt(event);
      if (cell) this.handlers.onSelectStep(this.options.series.steps[cell.index]);
    });
    this._lastWidth = 0;
    this._resize = new ResizeObserver(() => {
      if (this.options && this.container.clientWidth !== this._lastWidth) this.draw();
    });
    this._resize.observe(this.container);
  }

  /** Draws with `options` {series, xRange: [min, max], colour: {lo, hi}, selectedStep, theme}, unless they are those drawn. */
  update(options) {
    const next = {...this.options, ...options};
    if (this.options && Object.keys(next).every((key) => next[key] === this.options[key])) return;
    this.options = next;
    this.draw();
  }

  destroy() {
    this._resize.disconnect();
  }

  draw() {
    const {series, xRange, colour, selectedStep} = this.options;
    const width = Math.max(240, Math.floor(this.container.clientWidth));
    this._lastWidth = this.container.clientWidth;
    const nLayers = series.layers.length;
    const rowHeight = Math.max(ROW_MIN_PX, Math.min(ROW_MAX_PX, Math.floor(PLOT_MAX_HEIGHT_PX / nLayers)));
    const plotHeight = rowHeight * nLayers;
    const height = TOP_PX + plotHeight + AXIS_PX;
    const ctx = setupCanvas(this.canvas, width, height);
    const colours = palette();
    ctx.font = smallFont();
    const labelWidth = Math.min(LABEL_MAX_PX, Math.max(...series.layers.map((name) => ctx.measureText(name).width), 20));
    const left = Math.ceil(labelWidth + LABEL_GAP_PX);
    const plotWidth = width - left - RIGHT_PX;
    this.layout = {left, top: TOP_PX, plotWidth, plotHeight, rowHeight};

    ctx.clearRect(0, 0, width, height);
    ctx.fillStyle = colours.plotBg;
    ctx.fillRect(left, TOP_PX, plotWidth, plotHeight);

    // Paint at device resolution so one pixel column is one aggregate column.
    const ratio = window.devicePixelRatio || 1;
    const pixels = Math.max(1, Math.round(plotWidth * ratio));
    const {kinds, values} = aggregateColumns(series, xRange[0], xRange[1], pixels);
    const image = new ImageData(pixels, nLayers);
    for (let j = 0; j < nLayers; j++) {
      for (let p = 0; p < pixels; p++) {
        const cell = j * pixels + p;
        const kind = kinds[cell];
        if (kind === EMPTY) continue;
        const rgb = kind === NONFINITE ? NONFINITE_RGB : kind === ZERO ? ZERO_RGB : valueRgb(values[cell], colour.lo, colour.hi);
        const o = cell * 4;
        image.data[o] = rgb[0];
        image.data[o + 1] = rgb[1];
        image.data[o + 2] = rgb[2];
        image.data[o + 3] = 255;
      }
    }
    const offscreen = document.createElement('canvas');
    offscreen.width = pixels;
    offscreen.height = nLayers;
    offscreen.getContext('2d').putImageData(image, 0, 0);
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(offscreen, 0, 0, pixels, nLayers, left, TOP_PX, plotWidth, plotHeight);

    // Thin gaps between rows keep the layers apart when neighbouring colours are close.
    if (rowHeight >= 10) {
      ctx.fillStyle = colours.rowGap;
      for (let j = 1; j < nLayers; j++) ctx.fillRect(left, TOP_PX + j * rowHeight - 0.5, plotWidth, 1);
    }

    this._drawSelected(ctx, series, xRange, selectedStep);
    this._drawLabels(ctx, series, labelWidth);
    this._drawAxis(ctx, xRange);
  }

  _stepToX(step) {
    const {left, plotWidth} = this.layout;
    const [x0, x1] = this.options.xRange;
    return left + ((step - x0) / (x1 - x0)) * plotWidth;
  }

  _drawSelected(ctx, series, xRange, selectedStep) {
    if (selectedStep === null || selectedStep === undefined) return;
    if (selectedStep < xRange[0] || selectedStep > xRange[1]) return;
    const {top, plotHeight} = this.layout;
    const x = Math.round(this._stepToX(selectedStep)) + 0.5;
    const colours = palette();
    ctx.save();
    ctx.fillStyle = colours.marker;
    ctx.beginPath();
    ctx.moveTo(x - MARKER_PX, top - MARKER_PX - 3);
    ctx.lineTo(x + MARKER_PX, top - MARKER_PX - 3);
    ctx.lineTo(x, top - 1);
    ctx.closePath();
    ctx.fill();
    ctx.strokeStyle = colours.markerHalo;
    ctx.lineWidth = 3;
    ctx.beginPath();
    ctx.moveTo(x, top);
    ctx.lineTo(x, top + plotHeight);
    ctx.stroke();
    ctx.strokeStyle = colours.marker;
    ctx.lineWidth = 1;
    ctx.stroke();
    ctx.restore();
  }

  _drawLabels(ctx, series, labelWidth) {
    const {left, top, rowHeight} = this.layout;
    const every = Math.ceil(LABEL_MIN_ROW_PX / rowHeight);
    ctx.fillStyle = palette().label;
    ctx.textAlign = 'right';
    ctx.textBaseline = 'middle';
    series.layers.forEach((name, j) => {
      if (j % every !== 0) return;
      ctx.fillText(fitText(ctx, name, labelWidth), left - LABEL_GAP_PX, top + (j + 0.5) * rowHeight);
    });
  }

  _drawAxis(ctx, xRange) {
    const {left, top, plotWidth, plotHeight} = this.layout;
    const y = top + plotHeight;
    ctx.fillStyle = palette().muted;
    ctx.strokeStyle = palette().axisLine;
    ctx.textBaseline = 'top';
    ctx.textAlign = 'center';
    for (const tick of niceTicks(xRange[0], xRange[1], Math.max(1, Math.floor(plotWidth / TICK_SPACING_PX)))) {
      if (tick < xRange[0] || tick > xRange[1]) continue;
      const x = Math.round(this._stepToX(tick)) + 0.5;
      ctx.beginPath();
      ctx.moveTo(x, y);
      ctx.lineTo(x, y + 4);
      ctx.stroke();
      ctx.fillText(formatStep(tick), Math.min(Math.max(x, left + 12), left + plotWidth - 12), y + 6);
    }
  }

  _cellAt(event) {
    if (!this.layout) return null;
    const rect = this.canvas.getBoundingClientRect();
    const x = event.clientX - rect.left;
    const y = event.clientY - rect.top;
    const {left, top, plotWidth, plotHeight, rowHeight} = this.layout;
    if (x < left || x > left + plotWidth || y < top || y >= top + plotHeight) return null;
    const {series, xRange} = this.options;
    const step = xRange[0] + ((x - left) / plotWidth) * (xRange[1] - xRange[0]);
    const index = nearestIndex(series.steps, step);
    if (index < 0) return null;
    const [start, end] = cellBounds(series.steps, index);
    if (step < start || step >= end) return null;
    return {index, layer: Math.floor((y - top) / rowHeight), x, y};
  }

  _hover(event) {
    const cell = this._cellAt(event);
    if (!cell) {
      this.tooltip.hidden = true;
      return;
    }
    const {series} = this.options;
    const value = series.values[cell.layer * series.steps.length + cell.index];
    const shown = recorded(series, cell.layer, cell.index);
    this.tooltip.replaceChildren(
      el('div', {class: 'tooltip-title', text: series.layers[cell.layer]}),
      el('div', {text: `step ${formatStep(series.steps[cell.index])}`}),
      shown
        ? el('div', {class: Number.isFinite(value) ? '' : 'tooltip-bad', text: `${series.stat} = ${formatValue(value)}`})
        : el('div', {class: 'muted', text: 'not recorded at this step'}),
      el('div', {class: 'tooltip-hint', text: 'click to show this step in the layer profile'}),
    );
    this.tooltip.hidden = false;
    const flip = cell.x > this.layout.left + this.layout.plotWidth * 0.6;
    this.tooltip.style.left = flip ? '' : `${cell.x + 14}px`;
    this.tooltip.style.right = flip ? `${this.canvas.clientWidth - cell.x + 14}px` : '';
    this.tooltip.style.top = `${Math.max(0, cell.y - 10)}px`;
  }
}

/** Returns [log10 value, label] ticks of the colour scale: decades, or the two ends when under two decades fit. */
export function legendTicks(colour) {
  const first = Math.ceil(colour.lo - 1e-9);
  const last = Math.floor(colour.hi + 1e-9);
  if (last - first >= 1) {
    const stride = Math.max(1, Math.ceil((last - first + 1) / 6));
    const ticks = [];
    for (let e = first; e <= last; e += stride) ticks.push([e, formatPowerOfTen(e)]);
    return ticks;
  }
  return [colour.lo, colour.hi].map((e) => [e, formatValue(10 ** e)]);
}

/** Returns the colour legend of the shared scale: a viridis bar over decades, and the special colours. */
export function colourLegend(colour, stat) {
  const canvas = el('canvas', {class: 'legend-bar'});
  const height = LEGEND_BAR_PX + 16;
  const ctx = setupCanvas(canvas, LEGEND_WIDTH_PX, height);
  const inset = 14;
  const barWidth = LEGEND_WIDTH_PX - 2 * inset;
  for (let x = 0; x < barWidth; x++) {
    ctx.fillStyle = rgbCss(viridis(x / (barWidth - 1)));
    ctx.fillRect(inset + x, 0, 1.5, LEGEND_BAR_PX);
  }
  ctx.font = smallFont();
  ctx.fillStyle = palette().muted;
  ctx.textAlign = 'center';
  ctx.textBaseline = 'top';
  const span = colour.hi - colour.lo;
  const toX = (exponent) => inset + (span > 0 ? (exponent - colour.lo) / span : 0.5) * barWidth;
  for (const [exponent, label] of legendTicks(colour)) {
    const x = toX(exponent);
    ctx.fillRect(Math.round(x), LEGEND_BAR_PX, 1, 3);
    ctx.fillText(label, x, LEGEND_BAR_PX + 4);
  }
  const swatch = (css, text) =>
    el('span', {class: 'legend-swatch'}, [el('span', {class: 'swatch', style: {background: css}}), text]);
  return el('div', {class: 'colour-legend'}, [
    el('span', {class: 'legend-title', text: `${stat} (log scale)`}),
    canvas,
    swatch(NONFINITE_CSS, 'NaN / Inf'),
    swatch(ZERO_CSS, 'exactly 0'),
  ]);
}
