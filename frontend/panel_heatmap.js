// The heatmap panel: each selected run's layers x steps, coloured on the shared scale, with its colour legend.

import {el} from './dom.js';
import {ChartCell, Panel, showReduction} from './panel.js';
import {colourLegend, Heatmap} from './view_heatmap.js';

class HeatmapCell extends ChartCell {
  constructor(run, actions) {
    super(run, 'heatmap-cell');
    this._actions = actions;
  }

  createChart(box) {
    const chartBox = el('div', {class: 'heatmap-box'});
    this._reduction = el('div');
    box.append(chartBox, this._reduction);
    return new Heatmap(chartBox, {onSelectStep: (step) => this._actions.pickStep(step)});
  }

  draw(series, view) {
    this.chart.update({series, xRange: view.heatmapRange, colour: view.colour, selectedStep: view.step, theme: view.state.theme});
    showReduction(this._reduction, series);
  }
}

export class HeatmapPanel {
  constructor(actions) {
    this._actions = actions;
    this._panel = new Panel('heatmap', 'Heatmap');
    this._panel.subtitle.textContent = 'layers (input at the top) × steps';
    this.element = this._panel.element;
    this._legendKey = null;
  }

  render(state, view) {
    const legendKey = view.loaded.length ? JSON.stringify([view.colour, view.stat, state.theme]) : null;
    if (legendKey !== this._legendKey) {
      this._legendKey = legendKey;
      this._panel.extra.replaceChildren(...(legendKey ? [colourLegend(view.colour, view.stat)] : []));
    }
    const cells = this._panel.columns(view.runs, (info) => new HeatmapCell(info.run, this._actions));
    view.runs.forEach((info, i) => {
      cells[i].caption.setVerdict(view.healthOf(info.run)?.verdict, view.healthOf(info.run) === null);
      cells[i].show(view.content(info), view);
    });
  }

  destroy() {
    this._panel.destroy();
  }
}
