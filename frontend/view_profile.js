// Layer profile view: one bar per layer or group (input on the left) at one step, the classic "gradient flow" chart.

import {NONFINITE_CSS, rgbCss, valueRgb, ZERO_CSS} from './colormap.js';
import {el, fitText, setupCanvas} from './dom.js';
import {formatPowerOfTen, formatStep, formatValue} from './format.js';
import {palette, smallFont} from './theme.js';
import {niceTicks, shortName, strongestAt} from './view_heatmap.js';

const HEIGHT_PX = 236;
// Same width as the trend chart's value axis, so stacked charts line up.
const AXIS_LEFT_PX = 58;
const RIGHT_PX = 12;
const TOP_PX = 18;
const LABELS_PX = 64;
// Names written upwards (narrow bars) get this much room instead: long enough for names such as `block_16_depthwise_BN`.
const UPWARD_LABELS_PX = 124;
const BAR_MAX_PX = 46;
const BAR_FILL = 0.72;
const LABEL_MAX_PX = 90;
// Slots narrower than this get their names tilted so they do not overlap.
const UPRIGHT_LABEL_MIN_SLOT_PX = 70;
const TILTED_LABEL_MIN_SLOT_PX = 20;
// Height of a line of text: vertical names closer than this would touch.
const LABEL_LINE_PX = 13;
// Slots at least this wide get the value's text (NaN, 0) over their bar.
const VALUE_TEXT_MIN_SLOT_PX = 14;

/** Returns the bars of `rows` on `slots` slots: each bar's layers, rows merged when they outnumber the slots. */
function bars(rows, slots) {
  if (rows.length <= slots) return rows.map((row) => ({layers: row.layers, rows: [row]}));
  const merged = [];
  for (let b = 0; b < slots; b++) {
    const covered = rows.slice(Math.floor((b * rows.length) / slots), Math.floor(((b + 1) * rows.length) / slots));
    merged.push({layers: covered.flatMap((row) => row.layers), rows: covered});
  }
  return merged;
}

/** Returns whether a profile of `rowCount` rows in a box `width` CSS pixels wide writes its names upwards (its bars are narrow). */
export function writesUpwards(rowCount, width) {
  const plotWidth = Math.max(240, Math.floor(width)) - AXIS_LEFT_PX - RIGHT_PX;
  return plotWidth / Math.min(rowCount, Math.max(1, Math.floor(plotWidth))) < TILTED_LABEL_MIN_SLOT_PX;
}

/**
 * One run's layer profile: a bar per row (a layer, or a group of layers) at one step.
 *
 * With more rows than pixels across, each bar covers several rows and shows their strongest
 * value (non-finite first, then the largest), as a heatmap pixel does.
 */
export class LayerProfile {
  constructor(container) {
    this.container = container;
    this.options = null;
    this.canvas = el('canvas', {class: 'profile-canvas', attrs: {role: 'img'}});
    this.tooltip = el('div', {class: 'tooltip', hidden: true});
    this.element = el('div', {class: 'profile'}, [this.canvas, this.tooltip]);
    container.append(this.element);
    this.canvas.addEventListener('mousemove', (event) => this._hover(event));
    this.canvas.addEventListener('mouseleave', () => {
      this.tooltip.hidden = true;
    });
    this._lastWidth = 0;
    this._resize = new ResizeObserver(() => {
      if (this.options && this.container.clientWidth !== this._lastWidth) this.draw();
    });
    this._resize.observe(this.container);
  }

  /**
   * Draws with `options` {series, rows, focusLayer (index or -1), index (step index), logY, yRange: [min, max],
   * colour: {lo, hi}, theme, upwardLabels (room for names written upwards: see `writesUpwards`)}, unless they are those drawn.
   */
  update(options) {
    if (this.options && Object.keys(options).every((key) => options[key] === this.options[key])) return;
    this.options = options;
    this.draw();
  }

  destroy() {
    this._resize.disconnect();
  }

  _toY(value) {
    const {logY, yRange} = this.options;
    const {top, plotHeight} = this.layout;
    const [lo, hi] = logY ? yRange.map(Math.log10) : yRange;
    const v = logY ? Math.log10(value) : value;
    const fraction = (v - lo) / (hi - lo);
    return top + plotHeight * (1 - Math.min(1, Math.max(0, fraction)));
  }

  draw() {
    const {series, index, logY, yRange, colour} = this.options;
    const rows = this.options.rows ?? series.layers.map((name, j) => ({layers: [j], name}));
    const width = Math.max(240, Math.floor(this.container.clientWidth));
    this._lastWidth = this.container.clientWidth;
    const labels = this.options.upwardLabels ? UPWARD_LABELS_PX : LABELS_PX;
    const height = HEIGHT_PX - LABELS_PX + labels;
    const ctx = setupCanvas(this.canvas, width, height);
    ctx.font = smallFont();
    const colours = palette();
    const plotWidth = width - AXIS_LEFT_PX - RIGHT_PX;
    const plotHeight = HEIGHT_PX - TOP_PX - LABELS_PX;
    const shown = bars(rows, Math.max(1, Math.floor(plotWidth)));
    const slot = plotWidth / shown.length;
    this.layout = {left: AXIS_LEFT_PX, top: TOP_PX, plotWidth, plotHeight, slot, bars: shown, labels};
    ctx.clearRect(0, 0, width, height);

    this._drawGrid(ctx, logY, yRange);

    const baseline = logY ? TOP_PX + plotHeight : this._toY(Math.max(yRange[0], 0));
    const barWidth = Math.max(1, Math.min(BAR_MAX_PX, slot * BAR_FILL));
    // Text over a bar only where it fits.
    const texts = slot >= VALUE_TEXT_MIN_SLOT_PX;
    ctx.textAlign = 'center';
    ctx.textBaseline = 'bottom';
    let notRecorded = 0;
    shown.forEach((bar, b) => {
      const j = index < 0 ? -1 : strongestAt(series, bar.layers, index);
      const x = AXIS_LEFT_PX + slot * (b + 0.5);
      if (j < 0) {
        // No layer of the bar was recorded at this step (e.g. frozen): no bar, and where it fits, words that say so.
        if (index < 0) return;
        notRecorded++;
        if (texts) this._notRecorded(ctx, x, baseline);
        return;
      }
      const value = series.values[j * series.steps.length + index];
      const x0 = Math.round(x - barWidth / 2);
      if (!Number.isFinite(value)) {
        ctx.fillStyle = NONFINITE_CSS;
        ctx.fillRect(x0, TOP_PX, Math.round(barWidth), plotHeight);
        ctx.fillStyle = colours.nonfiniteText;
        if (texts) ctx.fillText(formatValue(value), x, TOP_PX - 3);
      } else if (logY && value <= 0) {
        ctx.fillStyle = ZERO_CSS;
        ctx.fillRect(x0, baseline - 3, Math.round(barWidth), 3);
        ctx.fillStyle = colours.muted;
        if (texts) ctx.fillText('0', x, baseline - 5);
      } else {
        const y = this._toY(value);
        ctx.fillStyle = rgbCss(valueRgb(value, colour.lo, colour.hi));
        ctx.fillRect(x0, Math.min(y, baseline), Math.round(barWidth), Math.max(1, Math.abs(baseline - y)));
      }
    });
    this._drawFocus(ctx, shown, slot);
    this._drawLabels(ctx, shown, slot);
    this.canvas.setAttribute(
      'aria-label',
      `Layer profile of ${series.stat} for run ${series.run.slice(0, 80)}: ${rows.length} rows` +
        (index >= 0 ? ` at step ${formatStep(series.steps[index])}` : ', no step shown') +
        (notRecorded ? `, ${notRecorded} of them not recorded at that step` : ''),
    );
  }

  /** Writes "not recorded" upwards from the baseline in the slot centred on `x`, in the muted colour. */
  _notRecorded(ctx, x, baseline) {
    ctx.save();
    ctx.translate(x, baseline - 4);
    ctx.rotate(-Math.PI / 2);
    ctx.fillStyle = palette().muted;
    ctx.textAlign = 'left';
    ctx.textBaseline = 'middle';
    ctx.fillText('not recorded', 0, 0);
    ctx.restore();
  }

  _drawGrid(ctx, logY, yRange) {
    const {left, top, plotWidth, plotHeight} = this.layout;
    let ticks;
    if (logY) {
      const lo = Math.ceil(Math.log10(yRange[0]) - 1e-9);
      const hi = Math.floor(Math.log10(yRange[1]) + 1e-9);
      const stride = Math.max(1, Math.ceil((hi - lo + 1) / 6));
      ticks = [];
      for (let e = lo; e <= hi; e += stride) ticks.push([10 ** e, formatPowerOfTen(e)]);
    } else {
      ticks = niceTicks(yRange[0], yRange[1], 5).map((v) => [v, formatValue(v)]);
    }
    const colours = palette();
    ctx.textAlign = 'right';
    ctx.textBaseline = 'middle';
    for (const [value, label] of ticks) {
      const y = Math.round(this._toY(value)) + 0.5;
      ctx.strokeStyle = colours.grid;
      ctx.beginPath();
      ctx.moveTo(left, y);
      ctx.lineTo(left + plotWidth, y);
      ctx.stroke();
      ctx.fillStyle = colours.muted;
      ctx.fillText(label, left - 8, y);
    }
    ctx.strokeStyle = colours.axisLine;
    ctx.beginPath();
    ctx.moveTo(left + 0.5, top);
    ctx.lineTo(left + 0.5, top + plotHeight + 0.5);
    ctx.lineTo(left + plotWidth, top + plotHeight + 0.5);
    ctx.stroke();
  }

  /** Outlines the bar that holds the selected layer. */
  _drawFocus(ctx, shown, slot) {
    const {focusLayer} = this.options;
    if (focusLayer === undefined || focusLayer < 0) return;
    const b = shown.findIndex((bar) => bar.layers.includes(focusLayer));
    if (b < 0) return;
    const {left, top, plotHeight} = this.layout;
    ctx.save();
    ctx.strokeStyle = palette().marker;
    ctx.lineWidth = 1.5;
    ctx.setLineDash([3, 2]);
    ctx.strokeRect(Math.round(left + slot * b) + 0.5, top - 2.5, Math.max(3, Math.round(slot)), plotHeight + 4);
    ctx.restore();
  }

  _drawLabels(ctx, shown, slot) {
    const {left, top, plotHeight} = this.layout;
    const y = top + plotHeight + 6;
    ctx.fillStyle = palette().label;
    const upright = slot >= UPRIGHT_LABEL_MIN_SLOT_PX;
    // Narrow slots get steeper names; very narrow ones name every k-th bar only.
    const angle = slot >= TILTED_LABEL_MIN_SLOT_PX ? -Math.PI / 5 : -Math.PI / 2;
    const every = Math.max(1, Math.ceil(LABEL_LINE_PX / slot));
    shown.forEach((bar, b) => {
      const name = bar.rows[0].name;
      const x = left + slot * (b + 0.5);
      if (upright) {
        ctx.textAlign = 'center';
        ctx.textBaseline = 'top';
        ctx.fillText(fitText(ctx, name, slot - 6), x, y);
        return;
      }
      if (b % every !== 0) return;
      ctx.save();
      ctx.translate(x, y);
      ctx.rotate(angle);
      ctx.textAlign = 'right';
      ctx.textBaseline = 'middle';
      ctx.fillText(fitText(ctx, name, angle === -Math.PI / 2 ? this.layout.labels - 8 : LABEL_MAX_PX * 0.75), 0, 0);
      ctx.restore();
    });
  }

  _hover(event) {
    if (!this.layout || !this.options || this.options.index < 0) return;
    const rect = this.canvas.getBoundingClientRect();
    const x = event.clientX - rect.left;
    const y = event.clientY - rect.top;
    const {left, plotWidth, slot, bars: shown} = this.layout;
    const {series, index} = this.options;
    const b = Math.floor((x - left) / slot);
    if (x < left || x > left + plotWidth || b < 0 || b >= shown.length) {
      this.tooltip.hidden = true;
      return;
    }
    const bar = shown[b];
    const j = strongestAt(series, bar.layers, index);
    const value = j < 0 ? null : series.values[j * series.steps.length + index];
    const single = bar.layers.length === 1;
    const title = bar.rows.length === 1 ? bar.rows[0].name : `${bar.rows.length} rows: ${bar.rows[0].name} … ${bar.rows[bar.rows.length - 1].name}`;
    let reading;
    if (j < 0) reading = el('div', {class: 'muted', text: 'not recorded at this step'});
    else if (single) reading = el('div', {class: Number.isFinite(value) ? '' : 'tooltip-bad', text: `${series.stat} = ${formatValue(value)}`});
    else reading = el('div', {class: Number.isFinite(value) ? '' : 'tooltip-bad', text: `largest: ${series.stat} = ${formatValue(value)} in ${shortName(series.layers[j])}`});
    this.tooltip.replaceChildren(el('div', {class: 'tooltip-title', text: shortName(title)}), reading);
    this.tooltip.hidden = false;
    const flip = x > left + plotWidth * 0.6;
    this.tooltip.style.left = flip ? '' : `${x + 14}px`;
    this.tooltip.style.right = flip ? `${this.canvas.clientWidth - x + 14}px` : '';
    this.tooltip.style.top = `${Math.max(0, y - 10)}px`;
  }
}
