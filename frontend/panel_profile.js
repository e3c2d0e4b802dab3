// The layer profile panel: each selected run's layers at the picked step (the latest until one is picked).

import {el} from './dom.js';
import {formatStep, lastIndexAtOrBefore} from './format.js';
import {ChartCell, Panel} from './panel.js';
import {LayerProfile, writesUpwards} from './view_profile.js';

class ProfileCell extends ChartCell {
  constructor(run) {
    super(run, 'profile-cell', false);
  }

  createChart(box) {
    const chartBox = el('div', {class: 'profile-box'});
    box.append(chartBox);
    return new LayerProfile(chartBox);
  }

  draw(series, view) {
    const step = view.step;
    // A run without that exact step shows its latest step before it.
    const index = step === null ? -1 : lastIndexAtOrBefore(series.steps, step);
    const shown = index >= 0 ? series.steps[index] : null;
    this.caption.note.textContent =
      shown === null ? 'no step at or before the selected one' : shown === step ? `step ${formatStep(shown)}` : `step ${formatStep(shown)} (nearest earlier)`;
    const {state, scales} = view;
    this.chart.update({
      series,
      rows: view.rowsOf(series).rows,
      focusLayer: state.focus === null ? -1 : series.layers.indexOf(state.focus),
      index,
      logY: state.logY,
      yRange: scales.y,
      colour: view.colour,
      theme: state.theme,
      upwardLabels: view.upwardLabels,
    });
  }

  show(content, view) {
    if (!content.series) this.caption.note.textContent = '';
    super.show(content, view);
  }
}

export class ProfilePanel {
  constructor() {
    this._panel = new Panel('profile', 'Layer profile');
    this._title = el('span', {class: 'panel-subtitle'});
    this._panel.extra.append(this._title);
    this.element = this._panel.element;
  }

  render(state, view) {
    const step = view.step;
    this._title.textContent =
      step === null ? '' : `at step ${formatStep(step)}${view.stepPinned ? '' : ' (latest)'} · click the heatmap or a trend to pick another step`;
    const cells = this._panel.columns(view.runs, (info) => new ProfileCell(info.run));
    // Side by side, every run gets the room of the one whose names are written upwards, so the profiles stay one height.
    const upwardLabels = view.runs.some((info, i) => {
      const content = view.content(info);
      return content.series && writesUpwards(view.rowsOf(content.series).rows.length, cells[i].body.clientWidth);
    });
    const shown = {...view, upwardLabels};
    view.runs.forEach((info, i) => cells[i].show(view.content(info), shown));
  }

  destroy() {
    this._panel.destroy();
  }
}
