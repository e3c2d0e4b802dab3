// The trends panel: each selected run's statistic over steps, on shared scales, zoomed and picked together.

import {el} from './dom.js';
import {statLabel} from './format.js';
import {ALL_LINES_MAX, linesToDraw, spread} from './layers.js';
import {ChartCell, Panel, showReduction} from './panel.js';
import {TrendChart} from './view_trend.js';

class TrendCell extends ChartCell {
  constructor(run, actions) {
    super(run, 'trend-cell');
    this._actions = actions;
    this._drawn = {};
  }

  createChart(box) {
    this._box = el('div', {class: 'trend'});
    this._reduction = el('div');
    box.append(this._box, this._reduction);
    this._drawn = {};
    return new TrendChart(this._box, {
      onZoom: (range) => this._actions.zoom(range),
      onResetZoom: () => this._actions.zoom(null),
      onSelectStep: (step) => this._actions.pickStep(step),
      onToggleLayer: (name, shown) => this._actions.showLayer(name, shown),
    });
  }

  /** Returns the band and lines of `series`, computed once per series (and scale, for the band). */
  _shapes(series, logY) {
    if (this._shapesOf?.series !== series) this._shapesOf = {series, ...linesToDraw(series), bands: new Map()};
    const shapes = this._shapesOf;
    if (series.layers.length > ALL_LINES_MAX && !shapes.bands.has(logY)) {
      shapes.bands.set(logY, spread(series, series.layers.map((name, j) => j), logY));
    }
    return {lines: shapes.lines, asked: shapes.asked, band: shapes.bands.get(logY) ?? null};
  }

  draw(series, view) {
    const {state} = view;
    const drawn = this._drawn;
    if (drawn.series !== series || drawn.logY !== state.logY || drawn.scales !== view.scales || drawn.theme !== state.theme) {
      const {lines, asked, band} = this._shapes(series, state.logY);
      this.chart.update({
        series,
        lines,
        asked,
        band,
        logY: state.logY,
        smoothing: state.smoothing,
        yRange: view.scales.y,
        xRange: view.xRange,
        selectedStep: view.step,
        hiddenLayers: state.hiddenLayers,
      });
      showReduction(this._reduction, series);
    } else {
      if (drawn.xRange !== view.xRange) this.chart.setXRange(view.xRange);
      if (drawn.step !== view.step) this.chart.setSelectedStep(view.step);
      if (drawn.smoothing !== state.smoothing) this.chart.setSmoothing(state.smoothing);
      if (drawn.hiddenLayers !== state.hiddenLayers) this.chart.setHidden(state.hiddenLayers);
    }
    this._drawn = {
      series,
      logY: state.logY,
      scales: view.scales,
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
    this._panel.extra.append(
      el('span', {class: 'panel-hint', text: 'drag to zoom · double-click to reset · click to pick a step · legend toggles layers'}),
    );
    this.element = this._panel.element;
  }

  render(state, view) {
    this._panel.subtitle.textContent = statLabel(view.stat);
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
