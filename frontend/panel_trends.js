// The trends panel: each selected run's statistic over steps, on shared scales, zoomed and picked together.

import {el} from './dom.js';
import {statLabel} from './format.js';
import {ALL_LINES_MAX, layerFilter, linesToDraw, spread} from './layers.js';
import {ChartCell, Panel, showReduction} from './panel.js';
import {LossChart} from './view_loss.js';
import {TrendChart} from './view_trend.js';

// Layers of each finding drawn as lines (a finding may name hundreds).
const FINDING_LINES = 4;

/**
 * Returns the layers a run's trend is asked to draw ([{j, reason}]), and whether its default lines come too.
 *
 * The selected layer always; with a filter, the layers it matches (and no defaults); without,
 * the first layers of each finding of the run's diagnosis.
 */
function wantedLines(series, state, health) {
  const wanted = [];
  const focus = state.focus === null ? -1 : series.layers.indexOf(state.focus);
  if (focus >= 0) wanted.push({j: focus, reason: 'selected'});
  const filter = layerFilter(state.filter);
  // A regular expression that does not compile filters nothing (the box says why).
  if (filter && !filter.error) {
    series.layers.forEach((name, j) => {
      if (filter.test(name)) wanted.push({j, reason: 'matches the filter'});
    });
    return [wanted, false];
  }
  for (const finding of health?.findings || []) {
    for (const name of (finding.layers || []).slice(0, FINDING_LINES)) {
      const j = series.layers.indexOf(name);
      if (j >= 0) wanted.push({j, reason: `named by the ${finding.kind} finding`});
    }
  }
  return [wanted, true];
}

class TrendCell extends ChartCell {
  constructor(run, actions) {
    super(run, 'trend-cell');
    this._actions = actions;
    this._drawn = {};
    this._shapesOf = null;
  }

  createChart(box) {
    this._lossBox = el('div', {class: 'loss', hidden: true});
    this._box = el('div', {class: 'trend'});
    this._reduction = el('div');
    box.append(this._lossBox, this._box, this._reduction);
    this._drawn = {};
    return new TrendChart(this._box, {
      onZoom: (range) => this._actions.zoom(range),
      onResetZoom: () => this._actions.zoom(null),
      onSelectStep: (step) => this._actions.pickStep(step),
      onToggleLayer: (name, shown) => this._actions.showLayer(name, shown),
      onShowOnset: () => this._actions.showOnset(this.run),
    });
  }

  /** Returns the band and lines of `series` (the band computed once per series and scale). */
  _shapes(series, view) {
    const {state} = view;
    const before = this._shapesOf;
    if (before?.series !== series) {
      const all = series.layers.map((name, j) => j);
      // A series grown by new steps keeps its lines, and its bands gain the new steps only.
      const grown = before && series.grownFrom === before.series.signature;
      const bands = new Map();
      if (grown) {
        const from = before.series.steps.length;
        for (const [logY, band] of before.bands) {
          const added = spread(series, all, logY, from);
          bands.set(logY, {min: [...band.min, ...added.min], median: [...band.median, ...added.median], max: [...band.max, ...added.max]});
        }
      }
      this._shapesOf = {series, bands, linesKey: grown ? before.linesKey : null, lines: grown ? before.lines : null, asked: before?.asked};
    }
    const shapes = this._shapesOf;
    const health = view.healthOf(series.run);
    const linesKey = [state.filter, state.focus, health];
    if (!shapes.linesKey || linesKey.some((part, i) => part !== shapes.linesKey[i])) {
      const {lines, asked} = linesToDraw(series, ...wantedLines(series, state, health));
      // The same layers drawn again keep the chart as it is (e.g. a diagnosis naming layers already drawn).
      if (!shapes.lines || lines.length !== shapes.lines.length || lines.some((line, i) => line.j !== shapes.lines[i].j)) {
        shapes.lines = lines;
      }
      shapes.asked = asked;
      shapes.linesKey = linesKey;
    }
    if (series.layers.length > ALL_LINES_MAX && !shapes.bands.has(state.logY)) {
      shapes.bands.set(state.logY, spread(series, series.layers.map((name, j) => j), state.logY));
    }
    return {lines: shapes.lines, asked: shapes.asked, band: shapes.bands.get(state.logY) ?? null};
  }

  /** Draws the run's training loss over its trend (or nothing, for a run without one). */
  _drawLoss(view) {
    const loss = view.lossOf(this.run);
    this._lossBox.hidden = loss === null;
    if (loss === null) {
      this._loss?.destroy();
      this._loss = null;
      this._lossBox.replaceChildren();
      return;
    }
    if (!this._loss) this._loss = new LossChart(this._lossBox, {onSelectStep: (step) => this._actions.pickStep(step)});
    const drawn = this._lossDrawn ?? {};
    if (drawn.series !== loss || drawn.theme !== view.state.theme || this._loss.plot === null) {
      this._loss.update({series: loss, xRange: view.xRange, selectedStep: view.step});
    } else {
      if (drawn.xRange !== view.xRange) this._loss.setXRange(view.xRange);
      if (drawn.step !== view.step) this._loss.setSelectedStep(view.step);
    }
    this._lossDrawn = {series: loss, theme: view.state.theme, xRange: view.xRange, step: view.step};
  }

  destroy() {
    this._loss?.destroy();
    this._loss = null;
    this._lossDrawn = null;
    super.destroy();
  }

  draw(series, view) {
    this._drawLoss(view);
    const {state} = view;
    const drawn = this._drawn;
    const {lines, asked, band} = this._shapes(series, view);
    const focus = lines.find(({j}) => series.layers[j] === state.focus)?.j ?? -1;
    // A series grown by new steps only, drawn with the same lines, is updated in place.
    const grown = drawn.series !== series && series.grownFrom === drawn.series?.signature;
    const rebuild =
      (drawn.series !== series && !grown) ||
      drawn.lines !== lines ||
      drawn.focus !== focus ||
      drawn.logY !== state.logY ||
      drawn.theme !== state.theme;
    if (rebuild) {
      this.chart.update({
        series,
        lines,
        asked,
        band,
        focus,
        filtered: Boolean(layerFilter(state.filter)) && !layerFilter(state.filter).error,
        logY: state.logY,
        smoothing: state.smoothing,
        yRange: view.scales.y,
        xRange: view.xRange,
        selectedStep: view.step,
        hiddenLayers: state.hiddenLayers,
      });
      showReduction(this._reduction, series);
    } else {
      if (grown) {
        this.chart.setSeries(series, band, view.xRange);
        showReduction(this._reduction, series);
      }
      if (drawn.yRange !== view.scales.y) this.chart.setYRange(view.scales.y);
      if (drawn.xRange !== view.xRange) this.chart.setXRange(view.xRange);
      if (drawn.step !== view.step) this.chart.setSelectedStep(view.step);
      if (drawn.smoothing !== state.smoothing) this.chart.setSmoothing(state.smoothing);
      if (drawn.hiddenLayers !== state.hiddenLayers) this.chart.setHidden(state.hiddenLayers);
    }
    this._drawn = {
      series,
      lines,
      focus,
      logY: state.logY,
      yRange: view.scales.y,
      theme: state.theme,
      xRange: view.xRange,
      step: view.step,
      smoothing: state.smoothing,
      hiddenLayers: state.hiddenLayers,
    };
  }
}

export class TrendsPanel {
  constructor(actions) {
    this._actions = actions;
    this._panel = new Panel('trends', 'Trends');
    this._filter = el('input', {
      type: 'search',
      class: 'layer-filter',
      placeholder: 'filter layers: text or /regex/',
      attrs: {'aria-label': 'Filter the layers drawn as lines: text, or a regular expression between slashes'},
    });
    this._filter.addEventListener('input', () => actions.setFilter(this._filter.value));
    this._panel.extra.append(
      this._filter,
      el('span', {class: 'panel-hint', text: 'drag to zoom · double-click to reset · click to pick a step · legend toggles lines'}),
    );
    this.element = this._panel.element;
  }

  render(state, view) {
    this._panel.subtitle.textContent = statLabel(view.stat);
    if (this._filter.value !== state.filter) this._filter.value = state.filter;
    const error = layerFilter(state.filter)?.error ?? null;
    this._filter.classList.toggle('invalid', error !== null);
    this._filter.title = error ? `Not a regular expression: ${error}` : '';
    const cells = this._panel.columns(view.runs, (info) => new TrendCell(info.run, this._actions));
    view.runs.forEach((info, i) => {
      cells[i].caption.setVerdict(view.healthOf(info.run)?.verdict, view.healthOf(info.run) === null);
      cells[i].show(view.content(info), view);
    });
  }

  destroy() {
    this._panel.destroy();
  }
}
