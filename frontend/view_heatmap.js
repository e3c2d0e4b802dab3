// Heatmap view: rows of layers (input at the top) x steps, colour = log10 of the value; and its colour legend.

import {NONFINITE_CSS, NONFINITE_RGB, rgbCss, viridis, writeValueColour, ZERO_CSS, ZERO_RGB} from './colormap.js';
import {el, setupCanvas} from './dom.js';
import {formatPowerOfTen, formatStep, formatValue, nearestIndex, stepForKey} from './format.js';
import {palette, smallFont} from './theme.js';

const LABEL_MAX_PX = 130;
const LABEL_MIN_PX = 24;
const LABEL_GAP_PX = 8;
const AXIS_PX = 22;
// Room above the rows for the picked-step marker.
const TOP_PX = 9;
const RIGHT_PX = 10;
// Rows are tall enough to hover comfortably; many layers shrink them, down to a fraction of a pixel.
const ROW_MAX_PX = 24;
const PLOT_MAX_HEIGHT_PX = 420;
// Below this row height the names would overlap: label every k-th row only.
const LABEL_MIN_ROW_PX = 12;
// Half the height of a row's name (style.css: small font, line height 1.2).
const LABEL_HALF_LINE_PX = 7;
// Rows at least this tall get a thin gap between them, so neighbours of close colours stay apart.
const ROW_GAP_MIN_PX = 10;
const TICK_SPACING_PX = 90;
const LEGEND_WIDTH_PX = 260;
const LEGEND_BAR_PX = 12;
// Tooltips show at most this many characters of a name (the row label's own tooltip has it whole).
const TOOLTIP_NAME_CHARS = 160;
// Rows shown this tall when readable rows are asked for; they then scroll in the plot's height.
const READABLE_ROW_PX = 14;
// Room for the scroll bar of readable rows.
const SCROLL_PX = 16;
// Brackets beside the rows of open groups: one column of this width per level, this many levels.
const BRACKET_STEP_PX = 6;
const MAX_BRACKETS = 3;
const BRACKET_MIN_PX = 3;

// Cell kinds of the aggregate (a pixel can cover many steps and layers); EMPTY is also "not recorded".
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

/** Returns a name cut to `chars` characters (an ellipsis tells it was cut). */
export function shortName(name, chars = TOOLTIP_NAME_CHARS) {
  return name.length > chars ? name.slice(0, chars - 1) + '…' : name;
}

/** Returns whether (kind, value) is a stronger signal than what a cell holds: non-finite wins, then the largest finite value. */
function stronger(kind, value, oldKind, oldValue) {
  if (oldKind === EMPTY) return true;
  if (oldKind === NONFINITE) return false;
  if (kind === NONFINITE) return true;
  return kind === FINITE && (oldKind === ZERO || value > oldValue);
}

/**
 * Returns the layer of `layers` with the strongest value at step index `i` (non-finite first, then the largest), or -1.
 *
 * This is the value a pixel covering those layers shows; layers not recorded at that step count for nothing.
 */
export function strongestAt(series, layers, i) {
  const n = series.steps.length;
  let best = -1;
  let bestKind = EMPTY;
  for (const j of layers) {
    const at = j * n + i;
    if (series.missing !== null && series.missing[at]) continue;
    const value = series.values[at];
    const kind = !Number.isFinite(value) ? NONFINITE : value <= 0 ? ZERO : FINITE;
    if (stronger(kind, value, bestKind, best < 0 ? 0 : series.values[best * n + i])) {
      best = j;
      bestKind = kind;
    }
  }
  return best;
}

/**
 * Aggregates a run's cells into `width` pixel columns over steps [x0, x1] and into `rowLayers.length` rows.
 *
 * Cell i is centred on step i and reaches halfway to its neighbours. Row r covers the layers
 * `rowLayers[r]` (by default one row per layer). Several steps or layers in one pixel keep the
 * strongest signal: a non-finite value wins, then the largest finite value, so neither a spike nor
 * a NaN disappears by aggregation. Cells of a layer not recorded at a step count for nothing.
 * Returns {kinds: Uint8Array, values: Float64Array}, row-major [row][pixel].
 */
export function aggregateColumns(series, x0, x1, width, rowLayers = null) {
  const rows = rowLayers ?? series.layers.map((name, j) => [j]);
  const kinds = new Uint8Array(width * rows.length);
  const values = new Float64Array(width * rows.length);
  const steps = series.steps;
  const n = steps.length;
  const span = x1 - x0;
  if (!(span > 0) || n === 0) return {kinds, values};
  // The pixel columns [p0, p1) each step's cell overlaps (even partly, so no cell is ever skipped).
  const first = new Int32Array(n);
  const p0s = new Int32Array(n);
  const p1s = new Int32Array(n);
  let shown = 0;
  for (let i = 0; i < n; i++) {
    const [start, end] = cellBounds(steps, i);
    if (end <= x0 || start >= x1) continue;
    const p0 = Math.max(0, Math.floor(((start - x0) / span) * width));
    first[shown] = i;
    p0s[shown] = p0;
    p1s[shown] = Math.min(width, Math.max(p0 + 1, Math.ceil(((end - x0) / span) * width)));
    shown++;
  }
  const {values: data, missing} = series;
  // Each row's strongest cell per step first (over its layers), then that cell spread over its pixel columns:
  // a row of many layers or a step of many pixels is visited once per layer and step, once per pixel.
  const stepKinds = new Uint8Array(shown);
  const stepValues = new Float64Array(shown);
  for (let r = 0; r < rows.length; r++) {
    stepKinds.fill(EMPTY);
    for (const j of rows[r]) {
      const offset = j * n;
      for (let k = 0; k < shown; k++) {
        const at = offset + first[k];
        if (missing !== null && missing[at]) continue;
        const value = data[at];
        const kind = value !== value || value === Infinity || value === -Infinity ? NONFINITE : value <= 0 ? ZERO : FINITE;
        // stronger(), inlined: this loop visits every cell of the run.
        const old = stepKinds[k];
        if (old === EMPTY || (old !== NONFINITE && (kind === NONFINITE || (kind === FINITE && (old === ZERO || value > stepValues[k]))))) {
          stepKinds[k] = kind;
          stepValues[k] = value;
        }
      }
    }
    const base = r * width;
    for (let k = 0; k < shown; k++) {
      const kind = stepKinds[k];
      if (kind === EMPTY) continue;
      const value = stepValues[k];
      const end = base + p1s[k];
      for (let cell = base + p0s[k]; cell < end; cell++) {
        if (stronger(kind, value, kinds[cell], values[cell])) {
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

/** Returns the rows of the plot's pixel rows: each pixel row's layers when rows outnumber the pixels, else the rows as they are. */
function mergedRows(rows, pixels) {
  if (rows.length <= pixels) return rows.map((row) => row.layers);
  const merged = [];
  for (let p = 0; p < pixels; p++) {
    const from = Math.floor((p * rows.length) / pixels);
    const to = Math.floor(((p + 1) * rows.length) / pixels);
    merged.push(rows.slice(from, to).flatMap((row) => row.layers));
  }
  return merged;
}

/**
 * One run's heatmap.
 *
 * Rows are given as [{layers: [layer indices], name, group}] (a layer, or a collapsed group of
 * layers) with `spans`, the expanded groups around them (layers.layerRows). With `rowZoom` 'fit'
 * every row fits the plot's height: with more rows than pixel rows, each pixel row shows the
 * strongest cell of its rows, and a note says so. With 'rows' each row is tall enough to read its
 * name and the rows scroll. Names are HTML next to the plot: cut with an ellipsis, isolated from
 * their neighbours' writing direction, whole in their tooltip; a collapsed group's name opens it,
 * the bracket beside an open group's rows closes it. `handlers`: onSelectStep(step),
 * onToggleGroup(key).
 */
export class Heatmap {
  constructor(container, handlers) {
    this.container = container;
    this.handlers = handlers;
    this.options = null;
    this._first = 0;
    // The selected row is scrolled into view when it (or the rows) change, not on every scroll.
    this._revealFocus = true;
    this._image = null;
    this.canvas = el('canvas', {class: 'heatmap-canvas', attrs: {role: 'img', tabindex: '0'}});
    this.labels = el('div', {class: 'heatmap-labels'});
    this.marker = el('div', {class: 'step-marker heatmap-marker', hidden: true, attrs: {'aria-hidden': 'true'}});
    this.focus = el('div', {class: 'heatmap-focus', hidden: true, attrs: {'aria-hidden': 'true'}});
    this.scroller = el('div', {class: 'heatmap-scroll', hidden: true}, [el('div', {class: 'heatmap-scroll-size'})]);
    this.tooltip = el('div', {class: 'tooltip', hidden: true});
    this.note = el('div', {class: 'heatmap-note'});
    this.element = el('div', {class: 'heatmap'}, [this.canvas, this.labels, this.marker, this.focus, this.scroller, this.tooltip]);
    container.append(this.element, this.note);
    this.canvas.addEventListener('mousemove', (event) => this._hover(event));
    this.canvas.addEventListener('mouseleave', () => {
      this.tooltip.hidden = true;
    });
    this.canvas.addEventListener('click', (event) => {
      const cell = this._cellAt(event);
      if (cell) this.handlers.onSelectStep(this.options.series.steps[cell.index]);
    });
    // Arrows, PageUp/PageDown, Home and End pick a step from the keyboard.
    this.canvas.addEventListener('keydown', (event) => {
      const step = stepForKey(event.key, this.options.series.steps, this.options.selectedStep);
      if (step === null) return;
      event.preventDefault();
      this.handlers.onSelectStep(step);
    });
    this.scroller.addEventListener('scroll', () => {
      const first = Math.round(this.scroller.scrollTop / this.layout.rowHeight);
      if (first === this._first) return;
      this._first = first;
      if (!this._frame) {
        this._frame = requestAnimationFrame(() => {
          this._frame = null;
          this.draw();
        });
      }
    });
    // The wheel over readable rows scrolls them (and only while they can scroll that way: the page scrolls otherwise).
    this.element.addEventListener(
      'wheel',
      (event) => {
        if (this.scroller.hidden) return;
        const before = this.scroller.scrollTop;
        this.scroller.scrollTop += event.deltaY;
        if (this.scroller.scrollTop !== before) event.preventDefault();
      },
      {passive: false},
    );
    this._lastWidth = 0;
    this._resize = new ResizeObserver(() => {
      if (this.options && this.container.clientWidth !== this._lastWidth) this.draw();
    });
    this._resize.observe(this.container);
  }

  /**
   * Draws with `options` {series, rows, spans, rowZoom, focusRow, xRange: [min, max], colour: {lo, hi}, selectedStep, theme}.
   *
   * Only what changed is redrawn: a new picked step moves the marker, nothing else.
   */
  update(options) {
    const next = {...this.options, ...options};
    const previous = this.options;
    this.options = next;
    if (previous && Object.keys(next).every((key) => key === 'selectedStep' || next[key] === previous[key])) {
      if (next.selectedStep !== previous.selectedStep) this._placeMarker();
      return;
    }
    if (previous && (next.rows !== previous.rows || next.focusRow !== previous.focusRow)) this._revealFocus = true;
    this.draw();
  }

  destroy() {
    this._resize.disconnect();
    if (this._frame) cancelAnimationFrame(this._frame);
  }

  draw() {
    const {series, xRange, colour, rowZoom, focusRow} = this.options;
    const rows = this.options.rows ?? series.layers.map((name, j) => ({layers: [j], name, group: null}));
    const spans = this.options.spans ?? [];
    const width = Math.max(240, Math.floor(this.container.clientWidth));
    this._lastWidth = this.container.clientWidth;
    const fitRowHeight = Math.min(ROW_MAX_PX, PLOT_MAX_HEIGHT_PX / Math.max(1, rows.length));
    const readable = rowZoom === 'rows' && fitRowHeight < READABLE_ROW_PX;
    const rowHeight = readable ? READABLE_ROW_PX : fitRowHeight;
    const plotHeight = readable ? PLOT_MAX_HEIGHT_PX : Math.max(1, Math.round(rowHeight * rows.length));
    const visible = readable ? Math.ceil(plotHeight / rowHeight) : rows.length;
    const whole = Math.floor(plotHeight / rowHeight);
    if (readable && this._revealFocus && focusRow >= 0 && (focusRow < this._first || focusRow >= this._first + whole)) {
      this._first = focusRow - Math.floor(whole / 2);
    }
    this._revealFocus = false;
    const first = readable ? Math.max(0, Math.min(this._first, rows.length - whole)) : 0;
    this._first = first;
    const shownRows = rows.slice(first, first + visible);
    const height = TOP_PX + plotHeight + AXIS_PX;
    const ctx = setupCanvas(this.canvas, width, height);
    const colours = palette();
    ctx.font = smallFont();
    const every = Math.ceil(LABEL_MIN_ROW_PX / rowHeight);
    const labelled = [];
    for (let r = 0; r < shownRows.length; r += every) labelled.push(r);
    const depths = Math.min(MAX_BRACKETS, 1 + Math.max(-1, ...spans.map((span) => span.depth)));
    const brackets = depths * BRACKET_STEP_PX;
    const widest = Math.max(...labelled.map((r) => ctx.measureText(rowLabel(shownRows[r]).slice(0, 80)).width), LABEL_MIN_PX);
    const labelWidth = Math.ceil(Math.min(LABEL_MAX_PX, widest + 2)) + brackets;
    const left = labelWidth + LABEL_GAP_PX;
    const right = readable ? SCROLL_PX : RIGHT_PX;
    const plotWidth = width - left - right;
    const ratio = window.devicePixelRatio || 1;
    this.layout = {left, top: TOP_PX, plotWidth, plotHeight, rowHeight, rows, first, visible, readable};

    ctx.clearRect(0, 0, width, height);
    ctx.fillStyle = colours.plotBg;
    ctx.fillRect(left, TOP_PX, plotWidth, plotHeight);
    const image = this._cells(series, shownRows, xRange, colour, Math.max(1, Math.round(plotWidth * ratio)), Math.max(1, Math.round(plotHeight * ratio)));
    ctx.save();
    ctx.beginPath();
    ctx.rect(left, TOP_PX, plotWidth, plotHeight);
    ctx.clip();
    ctx.imageSmoothingEnabled = false;
    const imageHeight = image.merged ? plotHeight : rowHeight * image.canvas.height;
    ctx.drawImage(image.canvas, 0, 0, image.canvas.width, image.canvas.height, left, TOP_PX, plotWidth, imageHeight);
    if (rowHeight >= ROW_GAP_MIN_PX) {
      ctx.fillStyle = colours.rowGap;
      for (let r = 1; r < shownRows.length; r++) ctx.fillRect(left, TOP_PX + r * rowHeight - 0.5, plotWidth, 1);
    }
    ctx.restore();
    this._merged = image.merged;
    this._drawAxis(ctx, xRange);
    this._drawLabels(labelled, shownRows, spans, labelWidth, brackets);
    this._placeMarker();
    this._placeFocus();
    this._placeScroller(rows.length);
    this.note.textContent = image.merged
      ? `${rows.length.toLocaleString('en-US')} rows in ${image.canvas.height} pixel rows: each shows the largest value (or NaN/Inf) of its rows; hover for names, or show readable rows`
      : readable
        ? `rows ${first + 1}–${Math.min(rows.length, first + visible)} of ${rows.length.toLocaleString('en-US')}; scroll for the others`
        : '';
    this.canvas.dataset.rows = String(rows.length);
    this.canvas.setAttribute(
      'aria-label',
      `Heatmap of ${series.stat} for run ${shortName(series.run, 80)}: ${rows.length} rows by ${series.steps.length} steps` +
        (series.nonFinite.length ? `, NaN or Inf from step ${formatStep(series.steps[series.nonFinite[0]])}` : ''),
    );
  }

  /** Returns the cells of `rows` as an image (merged into the pixel rows when they outnumber them), reused while they stay the same. */
  _cells(series, rows, xRange, colour, pixels, pixelRows) {
    const key = [series, rows.length, rows[0], rows[rows.length - 1], xRange, colour, pixels, pixelRows, this.options.rows];
    if (this._image && key.every((part, i) => part === this._image.key[i])) return this._image;
    const imageRows = mergedRows(rows, pixelRows);
    const {kinds, values} = aggregateColumns(series, xRange[0], xRange[1], pixels, imageRows);
    const image = new ImageData(pixels, imageRows.length);
    const pixels4 = image.data;
    for (let cell = 0; cell < kinds.length; cell++) {
      const kind = kinds[cell];
      if (kind === EMPTY) continue;
      const o = cell * 4;
      if (kind === FINITE) {
        writeValueColour(pixels4, o, values[cell], colour.lo, colour.hi);
        continue;
      }
      const rgb = kind === NONFINITE ? NONFINITE_RGB : ZERO_RGB;
      pixels4[o] = rgb[0];
      pixels4[o + 1] = rgb[1];
      pixels4[o + 2] = rgb[2];
      pixels4[o + 3] = 255;
    }
    const canvas = document.createElement('canvas');
    canvas.width = pixels;
    canvas.height = imageRows.length;
    canvas.getContext('2d').putImageData(image, 0, 0);
    this._image = {key, canvas, merged: imageRows.length < rows.length};
    return this._image;
  }

  _drawLabels(labelled, shownRows, spans, labelWidth, brackets) {
    const {top, rowHeight, first, visible, plotHeight} = this.layout;
    this.labels.style.width = `${labelWidth}px`;
    this.labels.style.top = `${top}px`;
    this.labels.style.height = `${plotHeight}px`;
    const items = labelled.map((r) => {
      const row = shownRows[r];
      // Centred on its row, but never cut by the top or bottom edge (rows can be thinner than a line of text).
      const centre = Math.min(Math.max((r + 0.5) * rowHeight, LABEL_HALF_LINE_PX), plotHeight - LABEL_HALF_LINE_PX);
      const style = {top: `${centre}px`, left: `${brackets}px`};
      if (!row.group) return el('div', {class: 'heatmap-label', text: row.name, title: row.name, style});
      const label = el('button', {
        type: 'button',
        class: 'heatmap-label heatmap-group',
        text: rowLabel(row),
        title: `${row.name}: ${row.group.count} layers, shown as one row (the largest value of each step) · click to open`,
        style,
        attrs: {'aria-expanded': 'false'},
      });
      label.addEventListener('click', () => this.handlers.onToggleGroup(row.group.key));
      return label;
    });
    for (const span of spans) {
      if (span.depth >= MAX_BRACKETS) continue;
      const from = Math.max(span.from, first);
      const to = Math.min(span.to, first + visible);
      const height = (to - from) * rowHeight;
      if (height < BRACKET_MIN_PX) continue;
      const bracket = el('button', {
        type: 'button',
        class: 'heatmap-bracket',
        title: `${span.label}: ${span.layers.length} layers · click to show them as one row`,
        style: {top: `${(from - first) * rowHeight}px`, height: `${height}px`, left: `${span.depth * BRACKET_STEP_PX}px`},
        attrs: {'aria-expanded': 'true', 'aria-label': `collapse ${span.label}`},
      });
      bracket.addEventListener('click', () => this.handlers.onToggleGroup(span.key));
      items.push(bracket);
    }
    this.labels.replaceChildren(...items);
  }

  _placeScroller(count) {
    const {readable, top, plotHeight, rowHeight, first} = this.layout;
    this.scroller.hidden = !readable;
    if (!readable) return;
    this.scroller.style.top = `${top}px`;
    this.scroller.style.height = `${plotHeight}px`;
    this.scroller.firstChild.style.height = `${count * rowHeight}px`;
    if (Math.round(this.scroller.scrollTop / rowHeight) !== first) this.scroller.scrollTop = first * rowHeight;
  }

  _placeFocus() {
    const {focusRow} = this.options;
    const {left, top, plotWidth, rowHeight, first, visible} = this.layout;
    const inside = focusRow !== null && focusRow !== undefined && focusRow >= first && focusRow < first + visible;
    this.focus.hidden = !inside;
    if (!inside) return;
    this.focus.style.left = `${left - 1}px`;
    this.focus.style.width = `${plotWidth + 2}px`;
    this.focus.style.top = `${top + (focusRow - first) * rowHeight - 1}px`;
    this.focus.style.height = `${Math.max(2, rowHeight) + 2}px`;
  }

  _stepToX(step) {
    const {left, plotWidth} = this.layout;
    const [x0, x1] = this.options.xRange;
    return left + ((step - x0) / (x1 - x0)) * plotWidth;
  }

  _placeMarker() {
    const step = this.options.selectedStep;
    const [x0, x1] = this.options.xRange;
    const inside = step !== null && step !== undefined && step >= x0 && step <= x1;
    this.marker.hidden = !inside;
    if (!inside) return;
    this.marker.style.left = `${Math.round(this._stepToX(step))}px`;
    this.marker.style.top = `${this.layout.top}px`;
    this.marker.style.height = `${this.layout.plotHeight}px`;
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
    const {left, top, plotWidth, plotHeight, rowHeight, rows, first, visible} = this.layout;
    if (x < left || x > left + plotWidth || y < top || y >= top + plotHeight) return null;
    const {series, xRange} = this.options;
    const step = xRange[0] + ((x - left) / plotWidth) * (xRange[1] - xRange[0]);
    const index = nearestIndex(series.steps, step);
    if (index < 0) return null;
    const [start, end] = cellBounds(series.steps, index);
    if (step < start || step >= end) return null;
    const last = Math.min(rows.length, first + visible) - 1;
    const from = Math.min(last, first + Math.floor((y - top) / rowHeight));
    // A pixel row covers a run of rows when they outnumber the pixels: all of them are under the cursor.
    const ratio = window.devicePixelRatio || 1;
    const to = this._merged ? Math.min(last + 1, Math.max(from + 1, first + Math.floor((y - top + 1 / ratio) / rowHeight))) : from + 1;
    return {index, rows: rows.slice(from, to), x, y};
  }

  _hover(event) {
    const cell = this._cellAt(event);
    if (!cell) {
      this.tooltip.hidden = true;
      return;
    }
    const {series} = this.options;
    const n = series.steps.length;
    const layers = cell.rows.flatMap((row) => row.layers);
    // The cell's colour is its strongest value: name the layer that has it.
    const best = strongestAt(series, layers, cell.index);
    const single = cell.rows.length === 1 && layers.length === 1;
    const title = single
      ? series.layers[layers[0]]
      : cell.rows.length === 1
        ? `${cell.rows[0].name} (${layers.length} layers)`
        : `${cell.rows.length} rows: ${cell.rows[0].name} … ${cell.rows[cell.rows.length - 1].name}`;
    const value = best < 0 ? null : series.values[best * n + cell.index];
    let reading;
    if (best < 0) reading = el('div', {class: 'muted', text: 'not recorded at this step'});
    else if (single) reading = el('div', {class: Number.isFinite(value) ? '' : 'tooltip-bad', text: `${series.stat} = ${formatValue(value)}`});
    else reading = el('div', {class: Number.isFinite(value) ? '' : 'tooltip-bad', text: `largest: ${series.stat} = ${formatValue(value)} in ${shortName(series.layers[best])}`});
    this.tooltip.replaceChildren(
      el('div', {class: 'tooltip-title', text: shortName(title)}),
      el('div', {text: `step ${formatStep(series.steps[cell.index])}`}),
      reading,
      el('div', {class: 'tooltip-hint', text: 'click to show this step in the layer profile'}),
    );
    this.tooltip.hidden = false;
    const flip = cell.x > this.layout.left + this.layout.plotWidth * 0.6;
    this.tooltip.style.left = flip ? '' : `${cell.x + 14}px`;
    this.tooltip.style.right = flip ? `${this.canvas.clientWidth - cell.x + 14}px` : '';
    this.tooltip.style.top = `${Math.max(0, cell.y - 10)}px`;
  }
}

/** Returns how a row is named beside the heatmap: a collapsed group with its number of layers. */
function rowLabel(row) {
  return row.group ? `▸ ${row.name} (${row.group.count})` : row.name;
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

/**
 * Returns the colour legend of the shared scale: a viridis bar over decades, and the special colours.
 *
 * With `notRecorded`, it also shows what a cell of a layer not recorded at a step looks like: empty.
 */
export function colourLegend(colour, stat, notRecorded = false) {
  const canvas = el('canvas', {class: 'legend-bar', attrs: {role: 'img', 'aria-label': `colour scale of ${stat}, log10, from ${formatValue(10 ** colour.lo)} to ${formatValue(10 ** colour.hi)}`}});
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
  const swatch = (css, text) => el('span', {class: 'legend-swatch'}, [el('span', {class: 'swatch', style: {background: css}}), text]);
  return el('div', {class: 'colour-legend'}, [
    el('span', {class: 'legend-title', text: `${stat} (log scale)`}),
    canvas,
    swatch(NONFINITE_CSS, 'NaN / Inf'),
    swatch(ZERO_CSS, 'exactly 0'),
    notRecorded ? swatch(palette().plotBg, 'not recorded') : null,
  ]);
}
