// The diagnosis panel: each selected run's findings in plain words.

import {el} from './dom.js';
import {Caption, Panel} from './panel.js';
import {diagnosisCard} from './view_runs.js';

class DiagnosisCell {
  constructor(run) {
    this.caption = new Caption(run);
    this._card = diagnosisCard(null);
    this.element = el('div', {class: 'cell', data: {run}}, [this.caption.element, this._card]);
    this._shownKey = JSON.stringify(null);
  }

  /** Shows `entry` (the run's /health entry; null while it loads, undefined if there is none) and its `loss` series (or null). */
  update(entry, loss) {
    this.caption.setVerdict(entry?.verdict, entry === null);
    // Each refresh brings a new but often equal /health body: redraw only what changed.
    const key = JSON.stringify(entry ?? (entry === null ? null : 'none'));
    if (key === this._shownKey && loss === this._shownLoss) return;
    this._shownKey = key;
    this._shownLoss = loss;
    const card = diagnosisCard(entry, loss);
    this._card.replaceWith(card);
    this._card = card;
  }
}

export class DiagnosisPanel {
  constructor() {
    this._panel = new Panel('diagnosis', 'Diagnosis');
    this.element = this._panel.element;
  }

  render(state, view) {
    this._panel.subtitle.textContent = view.runs.length > 1 ? `${view.runs.length} runs side by side` : '';
    const cells = this._panel.columns(view.runs, (info) => new DiagnosisCell(info.run));
    view.runs.forEach((info, i) => cells[i].update(view.healthOf(info.run), view.lossOf(info.run)));
  }

  destroy() {
    this._panel.destroy();
  }
}
