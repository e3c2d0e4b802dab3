// Trend view: a run's statistic over steps (uPlot): lines for some layers, the spread over layers as a band, NaN/Inf steps marked.

import {layerColour, NONFINITE_CSS} from './colormap.js';
import {el} from './dom.js';
import {formatPowerOfTen, formatStep, formatValue, lastIndexAtOrBefore, smooth, stepForKey} from './format.js';
import {column, recorded} from './model.js';
import {palette} from './theme.js';
import uPlot from './vendor/uplot/uPlot.esm.js';

const HEIGHT_PX = 250;
// Hovering one chart shows the read-out at the same step in every run's chart.
const SYNC_KEY = 'gradient-health-steps';
// A press that moves less than this is a click (pick a step), not a zoom drag.
const CLICK_SLOP_PX = 3;
const MARKER_SIZE_PX = 7;
// Height of the strip that marks NaN/Inf steps along the top of the plot.
const NONFINITE_STRIP_PX = 5;
// Value-axis labels this far apart at least (CSS pixels): decades are thinned out to fit.
const VALUE_TICK_SPACING_PX = 26;
// Series with at most this many steps get a dot at each step.
const DOTS_MAX_STEPS = 60;
const LINE_WIDTH = 1.6;
// The selected layer's line stands out.
const FOCUS_LINE_WIDTH = 3.2;

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

/** Returns decade splits of a log axis, every k-th decade when they would crowd (uPlot's `splits` of an axis). */
export function decadeSplits(u, axisIndex, min, max) {
  const lo = Math.ceil(Math.log10(min) - 1e-9);
  const hi = Math.floor(Math.log10(max) + 1e-9);
  const height = u.bbox.height / (window.devicePixelRatio || 1);
  const fit = Math.max(2, Math.floor(height / VALUE_TICK_SPACING_PX));
  const stride = Math.max(1, Math.ceil((hi - lo + 1) / fit));
  const splits = [];
  for (let e = hi; e >= lo; e -= stride) splits.unshift(10 ** e);
  return splits;
}

/**
 * Marks the steps where some layer is NaN or infinite without covering the lines: a red strip along
 * the top edge of the plot over those steps, and at the first one a thin line and a marker.
 */
function drawNonFiniteMarks(u, series) {
  if (series.nonFinite.length === 0) return;
  const ctx = u.ctx;
  const {left, top, width, height} = u.bbox;
  const ratio = window.devicePixelRatio || 1;
  const strip = NONFINITE_STRIP_PX * ratio;
  const marker = MARKER_SIZE_PX * ratio;
  const steps = series.steps;
  const x = (index) => u.valToPos(steps[index], 'x', true);
  // Half the way to the neighbouring steps on each side, at least a visible sliver.
  const reach = (index, side) => {
    const next = index + side;
    const half = next >= 0 && next < steps.length ? Math.abs(x(next) - x(index)) / 2 : 0;
    return Math.max(ratio, half);
  };
  ctx.save();
  ctx.beginPath();
  ctx.rect(left, top, width, height);
  ctx.clip();
  ctx.fillStyle = NONFINITE_CSS;
  const indices = series.nonFinite;
  for (let k = 0; k < indices.length; ) {
    let end = k;
    while (end + 1 < indices.length && indices[end + 1] === indices[end] + 1) end++;
    const from = x(indices[k]) - reach(indices[k], -1);
    const to = x(indices[end]) + reach(indices[end], 1);
    ctx.fillRect(Math.round(from), top, Math.max(1, Math.round(to - from)), strip);
    k = end + 1;
  }
  const onset = Math.round(x(indices[0]));
  ctx.strokeStyle = NONFINITE_CSS;
  ctx.lineWidth = ratio;
  ctx.setLineDash([3 * ratio, 3 * ratio]);
  ctx.beginPath();
  ctx.moveTo(onset + 0.5, top);
  ctx.lineTo(onset + 0.5, top + height);
  ctx.stroke();
  ctx.setLineDash([]);
  ctx.beginPath();
  ctx.moveTo(onset - marker, top);
  ctx.lineTo(onset + marker, top);
  ctx.lineTo(onset, top + marker * 1.4);
  ctx.closePath();
  ctx.fill();
  ctx.restore();
}

/**
 * One run's trend chart.
 *
 * Draws `lines` (layers by index) and, for deep runs, the spread over layers as a min-max band
 * around the median. The legend is the chart's own, below the plot in a box of fixed height, so
 * no number or length of names moves the plot. `handlers`: onZoom([min, max]),
 * onResetZoom(), onSelectStep(step), onToggleLayer(name, shown), onShowOnset().
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
    this.marker = el('div', {class: 'step-marker', attrs: {'aria-hidden': 'true'}});
    this._readoutStep = el('span', {class: 'legend-value'});
    this.legend = el('div', {class: 'trend-legend'});
    this.note = el('div', {class: 'chart-note'});
    container.append(this.element, this.legend, this.note);
    this._resize = new ResizeObserver(() => this._fitWidth());
    this._resize.observe(this.container);
  }

  /**
   * Draws `series` with the shared scales.
   *
   * @param {object} options {series, lines: [{j, reason}], band: {min, median, max}|null,
   *     asked (lines asked for), focus (the selected layer's index, or -1), filtered (the lines
   *     are a filter's matches), logY, smoothing, yRange, xRange, selectedStep, hiddenLayers}
   */
  update(options) {
    this.options = options;
    const {series, lines, band, logY, hiddenLayers} = options;
    const colours = palette();
    const bandSeries = band
      ? [
          {label: 'min', stroke: 'transparent', width: 0, points: {show: false}},
          {label: 'median', stroke: colours.median, width: 1.2, dash: [5, 4], points: {show: false}},
          {label: 'max', stroke: 'transparent', width: 0, points: {show: false}},
        ]
      : [];
    const opts = {
      width: this._width(),
      height: HEIGHT_PX,
      padding: [10, 12, 0, 0],
      legend: {show: false},
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
        y: logY ? {distr: 3, log: 10, range: () => this.options.yRange} : {range: () => this.options.yRange},
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
        {label: 'Step'},
        ...bandSeries,
        ...lines.map(({j}) => ({
          label: series.layers[j],
          stroke: layerColour(j),
          width: j === options.focus ? FOCUS_LINE_WIDTH : LINE_WIDTH,
          show: !hiddenLayers.has(series.layers[j]),
          spanGaps: false,
          points: {show: series.steps.length <= DOTS_MAX_STEPS, size: 4},
        })),
      ],
      bands: band ? [{series: [3, 1], fill: colours.band}] : [],
      hooks: {
        draw: [(u) => drawNonFiniteMarks(u, series)],
        // A drag shows its selection box (setSelect) just before uPlot zooms to it.
        setSelect: [
          (u) => {
            if (u.select.width > 0) this._dragged = true;
          },
        ],
        setScale: [(u, key) => this._scaleChanged(u, key)],
        setCursor: [(u) => this._showValues(u.cursor.idx)],
      },
    };
    if (this.plot) this.plot.destroy();
    this.element.replaceChildren();
    this.plot = new uPlot(opts, this._data(options.smoothing), this.element);
    this.plot.over.append(this.marker);
    this._bindClick();
    this._bindKeys();
    this.plot.ctx.canvas.setAttribute('role', 'img');
    this.plot.ctx.canvas.setAttribute('aria-label', this._description());
    this._buildLegend();
    this.setXRange(options.xRange);
    this._placeMarker();
    this._showValues(null);
    this._writeNote(series);
  }

  /** Redraws the lines with another smoothing, keeping the chart (and its zoom) as it is. */
  setSmoothing(weight) {
    if (!this.plot || weight === this.options.smoothing) return;
    this.options.smoothing = weight;
    this.plot.setData(this._data(weight), false);
  }

  /** Shows `series`, the one drawn grown by new steps, with its `band`, in place: the chart and its legend stay. */
  setSeries(series, band, xRange) {
    if (!this.plot) return;
    this.options.series = series;
    this.options.band = band;
    this.plot.setData(this._data(this.options.smoothing));
    this.setXRange(xRange);
    this._placeMarker();
    this._describeStep();
    this._showValues(null);
    this._writeNote(series);
    this.plot.ctx.canvas.setAttribute('aria-label', this._description());
  }

  /** Shows values `range` = [min, max] on the value axis (the runs' shared scale). */
  setYRange(range) {
    if (!this.plot) return;
    this.options.yRange = range;
    this.plot.setScale('y', {min: range[0], max: range[1]});
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

  /** Moves the picked-step marker and the read-out to `step` (no redraw of the plot). */
  setSelectedStep(step) {
    if (!this.plot) return;
    this.options.selectedStep = step;
    this._placeMarker();
    this._describeStep();
    if (this.plot.cursor.idx === null || this.plot.cursor.idx === undefined) this._showValues(null);
  }

  /** Shows every line but those of `hiddenLayers` (names). */
  setHidden(hiddenLayers) {
    if (!this.plot) return;
    this.options.hiddenLayers = hiddenLayers;
    const first = this.options.band ? 4 : 1;
    this.options.lines.forEach(({j}, k) => {
      const shown = !hiddenLayers.has(this.options.series.layers[j]);
      if (this.plot.series[first + k].show !== shown) this.plot.setSeries(first + k, {show: shown});
      this.legend.querySelector(`[data-series="${first + k}"]`)?.classList.toggle('off', !shown);
    });
  }

  destroy() {
    this._resize.disconnect();
    if (this.plot) this.plot.destroy();
    this.plot = null;
  }

  _data(weight) {
    const {series, lines, band, logY} = this.options;
    const bandLines = band ? [band.min, band.median, band.max].map((values) => smooth(values, weight, logY)) : [];
    return [Array.from(series.steps), ...bandLines, ...lines.map(({j}) => smooth(column(series, j), weight, logY))];
  }

  _width() {
    return Math.max(240, Math.floor(this.container.clientWidth));
  }

  _fitWidth() {
    if (!this.plot) return;
    const width = this._width();
    if (width !== this.plot.width) this.plot.setSize({width, height: HEIGHT_PX});
    this._placeMarker();
  }

  _placeMarker() {
    const step = this.options.selectedStep;
    const x = step === null || step === undefined ? NaN : this.plot.valToPos(step, 'x');
    const inside = Number.isFinite(x) && x >= 0 && x <= this.plot.over.clientWidth;
    this.marker.hidden = !inside;
    if (inside) this.marker.style.left = `${Math.round(x)}px`;
  }

  /** The legend: the step read-out, the band's entries and one entry per line, each with its value at the step shown. */
  _buildLegend() {
    const {series, lines, band, asked, focus, filtered} = this.options;
    const colours = palette();
    const entry = (index, swatch, name, title, toggles) => {
      const item = el('div', {class: 'legend-item', data: {series: String(index)}, title}, [
        el('span', {class: 'legend-swatch', style: swatch, attrs: {'aria-hidden': 'true'}}),
        el('span', {class: 'legend-name', text: name}),
        el('span', {class: 'legend-value'}),
      ]);
      if (toggles) {
        item.classList.add('toggles');
        item.classList.toggle('off', !this.plot.series[index].show);
        item.addEventListener('click', () => this.handlers.onToggleLayer(name, !this.plot.series[index].show));
      }
      return item;
    };
    const items = [el('div', {class: 'legend-item legend-step'}, [el('span', {class: 'legend-name', text: 'Step'}), this._readoutStep])];
    if (band) {
      const count = series.layers.length;
      items.push(entry(2, {borderTop: `2px dashed ${colours.median}`}, `median of ${count} layers`, `the median over all ${count} layers at each step`, false));
      items.push(entry(3, {background: colours.band}, `min – max of ${count} layers`, `the spread over all ${count} layers at each step`, false));
    }
    const first = band ? 4 : 1;
    lines.forEach(({j, reason}, k) => {
      const name = series.layers[j];
      const item = entry(first + k, {background: layerColour(j)}, name, `${name} (${reason}) · click to hide or show`, true);
      item.classList.toggle('focused', j === focus);
      items.push(item);
    });
    if (filtered && asked === 0) items.push(el('div', {class: 'legend-cap', text: 'no layer of this run matches the filter'}));
    else if (asked > lines.length) {
      items.push(el('div', {class: 'legend-cap', text: `${lines.length} of ${asked} layers drawn (at most ${lines.length} lines); narrow the filter to see others`}));
    } else if (filtered) items.push(el('div', {class: 'legend-cap', text: `${asked} of ${series.layers.length} layers match the filter`}));
    this.legend.replaceChildren(...items);
    this._valueCells = [...this.legend.querySelectorAll('.legend-item[data-series] .legend-value')];
  }

  /** Shows the values at step index `idx` (the hovered one), or at the picked step when the cursor is away. */
  _showValues(idx) {
    const {series, lines, band} = this.options;
    let index = idx;
    if (index === null || index === undefined) {
      const step = this.options.selectedStep;
      index = step === null || step === undefined ? -1 : lastIndexAtOrBefore(series.steps, step);
    }
    this._readoutStep.textContent = index >= 0 ? formatStep(series.steps[index]) : '–';
    const shown = (value) => (index < 0 || value === null ? '–' : formatValue(value));
    const texts = band ? [shown(band.median[index]), `${shown(band.min[index])} – ${shown(band.max[index])}`] : [];
    for (const {j} of lines) {
      texts.push(index < 0 ? '–' : recorded(series, j, index) ? formatValue(series.values[j * series.steps.length + index]) : 'not recorded');
    }
    this._valueCells.forEach((cell, k) => {
      cell.textContent = texts[k];
    });
  }

  /** What the chart shows, for screen readers. */
  _description() {
    const {series, lines, band} = this.options;
    const drawn = lines.map(({j}) => series.layers[j].slice(0, 80)).join(', ');
    return (
      `Trend of ${series.stat} for run ${series.run.slice(0, 80)} over ${series.steps.length} steps` +
      (band ? `: the median and range of ${series.layers.length} layers, and lines for ${drawn}` : `: lines for ${drawn}`) +
      (series.nonFinite.length ? `; NaN or Inf from step ${formatStep(series.steps[series.nonFinite[0]])}` : '')
    );
  }

  /** The plot takes the keyboard: arrows, PageUp/PageDown, Home and End pick a step. */
  _bindKeys() {
    const over = this.plot.over;
    over.tabIndex = 0;
    over.setAttribute('role', 'slider');
    over.setAttribute('aria-label', `Picked step of run ${this.options.series.run.slice(0, 80)}: arrow keys move it`);
    over.addEventListener('keydown', (event) => {
      const step = stepForKey(event.key, this.options.series.steps, this.options.selectedStep);
      if (step === null) return;
      event.preventDefault();
      this.handlers.onSelectStep(step);
    });
    this._describeStep();
  }

  _describeStep() {
    const {series, selectedStep} = this.options;
    const over = this.plot.over;
    if (series.steps.length) {
      over.setAttribute('aria-valuemin', String(series.steps[0]));
      over.setAttribute('aria-valuemax', String(series.steps[series.steps.length - 1]));
    }
    if (selectedStep === null || selectedStep === undefined) return;
    over.setAttribute('aria-valuenow', String(selectedStep));
    over.setAttribute('aria-valuetext', `step ${formatStep(selectedStep)}`);
  }

  _scaleChanged(u, key) {
    if (key !== 'x') return;
    this._placeMarker();
    // Only a drag is the user zooming; uPlot also sets the scale itself, e.g. when created.
    if (this._programmatic || !this._dragged || u.scales.x.min === null) return;
    this._dragged = false;
    this.handlers.onZoom([u.scales.x.min, u.scales.x.max]);
  }

  _bindClick() {
    const over = this.plot.over;
    let down = null;
    over.addEventListener('mousedown', (event) => {
      down = [event.clientX, event.clientY];
    });
    over.addEventListener('click', (event) => {
      if (!down) return;
      const moved = Math.hypot(event.clientX - down[0], event.clientY - down[1]);
      down = null;
      const index = this.plot.cursor.idx;
      if (moved > CLICK_SLOP_PX || index === null || index === undefined) return;
      this.handlers.onSelectStep(this.options.series.steps[index]);
    });
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
    const onset = el('button', {type: 'button', class: 'tool-button onset-button', text: 'Show the onset', title: `Zoom every run to the steps before and after step ${formatStep(first)}, and pick that step`});
    onset.addEventListener('click', () => this.handlers.onShowOnset());
    this.note.replaceChildren(
      el('span', {class: 'nonfinite-swatch', attrs: {'aria-hidden': 'true'}}),
      el('span', {
        text: `NaN or Inf in ${count} logged step${count === 1 ? '' : 's'}, first at step ${formatStep(first)} (red along the top; those points have no place on the lines).`,
      }),
      onset,
    );
  }
}
