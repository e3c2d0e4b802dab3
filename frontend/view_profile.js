// Layer profile view: one bar per layer (input on the left) at one step, the classic "gradient flow" chart.

import {NONFINITE_CSS, rgbCss, valueRgb, ZERO_CSS} from './colormap.js';
import {el, fitText, setupCanvas} from './dom.js';
import {formatPowerOfTen, formatValue} from './format.js';
import {recorded} from './model.js';
import {palette, smallFont} from './theme.js';
import {niceTicks} from './view_heatmap.js';

const HEIGHT_PX = 236;
// Same width as the trend chart's value axis, so stacked charts line up.
const AXIS_LEFT_PX = 58;
const RIGHT_PX = 12;
const TOP_PX = 18;
const LABELS_PX = 64;
const BAR_MAX_PX = 46;
const BAR_FILL = 0.72;
const LABEL_MAX_PX = 90;
// Slots narrower than this get their names tilted so they do not overlap.
const UPRIGHT_LABEL_MIN_SLOT_PX = 70;
const TILTED_LABEL_MIN_SLOT_PX = 20;
// Height of a line of text: vertical names closer than this would touch.
const LABEL_LINE_PX = 13;

/** One run's layer profile. */
export class LayerProfile {
  constructor(container) {
    this.container = container;
    this.options = null;
    this.canvas = el('canvas', {class: 'profile-canvas'});
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

  /** Draws with `options` {series, index (step index), logY, yRange: [min, max], colour: {lo, hi}, theme}, unless they are those drawn. */
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
    const width = Math.max(240, Math.floor(this.container.clientWidth));
    this._lastWidth = this.container.clientWidth;
    const ctx = setupCanvas(this.canvas, width, HEIGHT_PX);
    ctx.font = smallFont();
    const colours = palette();
    const nLayers = series.layers.length;
    const plotWidth = width - AXIS_LEFT_PX - RIGHT_PX;
    const plotHeight = HEIGHT_PX - TOP_PX - LABELS_PX;
    const slot = plotWidth / nLayers;
    this.layout = {left: AXIS_LEFT_PX, top: TOP_PX, plotWidth, plotHeight, slot};
    ctx.clearRect(0, 0, width, HEIGHT_PX);

    this._drawGrid(ctx, logY, yRange);

    const baseline = logY ? TOP_PX + plotHeight : this._toY(Math.max(yRange[0], 0));
    const barWidth = Math.min(BAR_MAX_PX, slot * BAR_FILL);
    ctx.textAlign = 'center';
    ctx.textBaseline = 'bottom';
    for (let j = 0; j < nLayers; j++) {
      if (index < 0 || !recorded(series, j, index)) continue;
      const value = series.values[j * series.steps.length + index];
      const x = AXIS_LEFT_PX + slot * (j + 0.5);
      const x0 = Math.round(x - barWidth / 2);
      if (!Number.isFinite(value)) {
        ctx.fillStyle = NONFINITE_CSS;
        ctx.fillRect(x0, TOP_PX, Math.round(barWidth), plotHeight);
        ctx.fillStyle = colours.nonfiniteText;
        ctx.fillText(formatValue(value), x, TOP_PX - 3);
      } else if (logY && value <= 0) {
        ctx.fillStyle = ZERO_CSS;
        ctx.fillRect(x0, baseline - 3, Math.round(barWidth), 3);
        ctx.fillStyle = colours.muted;
        ctx.fillText('0', x, baseline - 5);
      } else {
        const y = this._toY(value);
        ctx.fillStyle = rgbCss(valueRgb(value, colour.lo, colour.hi));
        ctx.fillRect(x0, Math.min(y, baseline), Math.round(barWidth), Math.max(1, Math.abs(baseline - y)));
      }
    }
    this._drawLabels(ctx, series.layers, slot);
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

  _drawLabels(ctx, layers, slot) {
    const {left, top, plotHeight} = this.layout;
    const y = top + plotHeight + 6;
    ctx.fillStyle = palette().label;
    const upright = slot >= UPRIGHT_LABEL_MIN_SLOT_PX;
    // Narrow slots get steeper names; very narrow ones name every k-th layer only.
    const angle = slot >= TILTED_LABEL_MIN_SLOT_PX ? -Math.PI / 5 : -Math.PI / 2;
    const every = Math.max(1, Math.ceil(LABEL_LINE_PX / slot));
    layers.forEach((name, j) => {
      const x = left + slot * (j + 0.5);
      if (upright) {
        ctx.textAlign = 'center';
        ctx.textBaseline = 'top';
        ctx.fillText(fitText(ctx, name, slot - 6), x, y);
        return;
      }
      if (j % every !== 0) return;
      ctx.save();
      ctx.translate(x, y);
      ctx.rotate(angle);
      ctx.textAlign = 'right';
      ctx.textBaseline = 'middle';
      ctx.fillText(fitText(ctx, name, angle === -Math.PI / 2 ? LABELS_PX - 8 : LABEL_MAX_PX * 0.75), 0, 0);
      ctx.restore();
    });
  }

  _hover(event) {
    if (!this.layout || !this.options || this.options.index < 0) return;
    const rect = this.canvas.getBoundingClientRect();
    const x = event.clientX - rect.left;
    const y = event.clientY - rect.top;
    const {left, plotWidth, slot} = this.layout;
    const {series, index} = this.options;
    const j = Math.floor((x - left) / slot);
    if (x < left || x > left + plotWidth || j < 0 || j >= series.layers.length) {
      this.tooltip.hidden = true;
      return;
    }
    const value = series.values[j * series.steps.length + index];
    this.tooltip.replaceChildren(
      el('div', {class: 'tooltip-title', text: series.layers[j]}),
      recorded(series, j, index)
        ? el('div', {class: Number.isFinite(value) ? '' : 'tooltip-bad', text: `${series.stat} = ${formatValue(value)}`})
        : el('div', {class: 'muted', text: 'not recorded at this step'}),
    );
    this.tooltip.hidden = false;
    const flip = x > left + plotWidth * 0.6;
    this.tooltip.style.left = flip ? '' : `${x + 14}px`;
    this.tooltip.style.right = flip ? `${this.canvas.clientWidth - x + 14}px` : '';
    this.tooltip.style.top = `${Math.max(0, y - 10)}px`;
  }
}
