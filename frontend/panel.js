// What every panel shares: a titled section with one column per selected run, and the run's caption.

import {el} from './dom.js';
import {reductionNote} from './format.js';
import {badge} from './view_runs.js';

// A run's column is never narrower than this: three fit side by side in the main area from a 1280 px window.
export const MIN_COLUMN_PX = 280;

/** A titled section of the main area whose body is a grid of per-run cells, kept across renders. */
export class Panel {
  constructor(name, title) {
    this.subtitle = el('span', {class: 'panel-subtitle'});
    this.extra = el('span', {class: 'panel-extra'});
    this.grid = el('div', {class: 'run-grid'});
    // Controls of the panel's view, under its title.
    this.tools = el('div', {class: 'panel-tools', hidden: true});
    this.element = el('section', {class: `panel panel-${name}`}, [
      el('div', {class: 'panel-head'}, [el('h2', {text: title}), this.subtitle, el('span', {class: 'spacer'}), this.extra]),
      this.tools,
      this.grid,
    ]);
    this._cells = new Map();
  }

  /**
   * Returns one cell per run of `runs` (decoded /runs entries), in that order.
   *
   * Cells of runs still shown are kept as they are (with their charts); `makeCell(info)` builds the
   * others; cells of runs no longer shown are destroyed.
   */
  columns(runs, makeCell) {
    const names = new Set(runs.map((info) => info.run));
    for (const [run, cell] of this._cells) {
      if (names.has(run)) continue;
      cell.destroy?.();
      this._cells.delete(run);
    }
    const cells = runs.map((info) => {
      if (!this._cells.has(info.run)) this._cells.set(info.run, makeCell(info));
      return this._cells.get(info.run);
    });
    const inPlace = cells.length === this.grid.children.length && cells.every((cell, i) => this.grid.children[i] === cell.element);
    if (!inPlace) this.grid.replaceChildren(...cells.map((cell) => cell.element));
    this.grid.style.gridTemplateColumns = `repeat(${Math.max(1, cells.length)}, minmax(${MIN_COLUMN_PX}px, 1fr))`;
    return cells;
  }

  destroy() {
    for (const cell of this._cells.values()) cell.destroy?.();
    this._cells.clear();
  }
}

/** A run's caption: its name and its verdict badge (or, with `withBadge` false, a slot for other text). */
export class Caption {
  constructor(run, withBadge = true) {
    this.note = el('span', {class: 'cell-step'});
    this._badge = withBadge ? badge(undefined, true) : null;
    this.element = el('div', {class: 'cell-caption'}, [el('span', {class: 'cell-run', text: run, title: run}), this._badge || this.note]);
    this._verdictKey = null;
  }

  /** Shows the run's verdict; `pending` while the diagnosis loads. */
  setVerdict(verdict, pending) {
    const key = `${pending}:${verdict}`;
    if (!this._badge || key === this._verdictKey) return;
    this._verdictKey = key;
    const next = badge(verdict, pending);
    this._badge.replaceWith(next);
    this._badge = next;
  }
}

/**
 * A run's cell of a chart panel: its caption, then either the chart or a message.
 *
 * Subclasses create their chart in `createChart(box)` and draw it in `draw(series, view)`.
 */
export class ChartCell {
  constructor(run, className, withBadge = true) {
    this.run = run;
    this.caption = new Caption(run, withBadge);
    this.body = el('div', {class: 'cell-body'});
    this.element = el('div', {class: `cell ${className}`, data: {run}}, [this.caption.element, this.body]);
    this.chart = null;
    this._message = null;
  }

  /**
   * Shows `content`: {series} draws the chart, {message, error} shows the message instead.
   *
   * The chart is created once and kept while the run shows a series, so its zoom and scroll stay.
   */
  show(content, view) {
    if (content.series) {
      if (!this.chart) {
        this._message = null;
        this.body.replaceChildren();
        this.chart = this.createChart(this.body);
      }
      this.draw(content.series, view);
      return;
    }
    const key = `${content.error}:${content.message}`;
    if (key === this._message) return;
    this._message = key;
    this.destroy();
    this.body.replaceChildren(el('p', {class: content.error ? 'cell-error' : 'muted cell-missing', text: content.message}));
  }

  destroy() {
    this.chart?.destroy();
    this.chart = null;
  }
}

/**
 * Puts in `slot` what to know about the data drawn from `series`: how many of its steps the server
 * sent (when it downsampled) and what it says about the response (its notices), or nothing.
 */
export function showReduction(slot, series) {
  const text = reductionNote(series.steps.length, series.totalSteps);
  const key = JSON.stringify([text, series.notices]);
  if (slot.dataset.shown === key) return;
  slot.dataset.shown = key;
  const data = {shown: String(series.steps.length), total: String(series.totalSteps)};
  slot.replaceChildren(
    ...(text ? [el('div', {class: 'reduced-note', text, data})] : []),
    ...series.notices.map((notice) => el('div', {class: 'series-notice', text: notice})),
  );
}
