// The "layers to look at" panel: per run, its layers ranked by how far they stand out; a click selects one everywhere.

import {el} from './dom.js';
import {formatStep, formatValue} from './format.js';
import {ranking} from './layers.js';
import {ChartCell, Panel} from './panel.js';

// What each ranking lists, how its number reads, and what it means (the heading's tooltip).
const RANKINGS = [
  {
    key: 'smallest',
    title: (kinds) => (kinds ? 'Smallest, relative to their kind' : 'Smallest, relative to the median layer'),
    help: 'level over the last tenth of the steps (median; 0 for a layer without gradient) divided by the median level of the layers of the same kind (of all layers when kinds are not recorded, or for a kind of fewer than 3 layers)',
    value: (entry) => `${formatValue(entry.ratio)}× median`,
  },
  {
    key: 'growth',
    title: () => 'Largest growth',
    help: 'level over the last tenth of the steps divided by the level over the first tenth (medians)',
    value: (entry) => `×${formatValue(entry.factor)}`,
  },
  {
    key: 'nonfinite',
    title: () => 'First NaN / Inf',
    help: 'the first step at which the layer has a NaN or infinite value',
    value: (entry) => `step ${formatStep(entry.step)}`,
  },
];

/** A run's ranked lists; not a chart, but drawn like one from the run's series. */
class LayersCell extends ChartCell {
  constructor(run, actions) {
    super(run, 'layers-cell', false);
    this._actions = actions;
  }

  createChart(box) {
    const lists = el('div', {class: 'rankings'});
    box.append(lists);
    let shown = null;
    return {
      update: (series, kinds, focus) => {
        if (shown?.series !== series || shown.kinds !== kinds) {
          shown = {series, kinds, ranked: ranking(series, kinds), focus: undefined};
          lists.replaceChildren(...RANKINGS.map((kind) => this._list(series, kinds, kind, shown.ranked[kind.key])));
        }
        if (shown.focus !== focus) {
          shown.focus = focus;
          for (const item of lists.querySelectorAll('.rank-item')) {
            const selected = item.dataset.layer === focus;
            item.classList.toggle('focused', selected);
            item.setAttribute('aria-pressed', String(selected));
          }
        }
      },
      destroy: () => {},
    };
  }

  _list(series, kinds, kind, entries) {
    const items = entries.map((entry) => {
      const name = series.layers[entry.j];
      const item = el('button', {type: 'button', class: 'rank-item', data: {layer: name}, title: `${name}: select this layer everywhere`}, [
        el('span', {class: 'name', text: name}),
        el('span', {class: 'rank-value', text: kind.value(entry)}),
      ]);
      item.addEventListener('click', () => this._actions.focusLayer(name));
      return el('li', {}, [item]);
    });
    return el('div', {class: 'ranking', data: {ranking: kind.key}}, [
      el('h3', {class: 'ranking-title', text: kind.title(kinds), title: kind.help}),
      items.length ? el('ol', {class: 'ranking-list'}, items) : el('p', {class: 'muted ranking-none', text: 'none'}),
    ]);
  }

  draw(series, view) {
    this.chart.update(series, view.kindsOf(series), view.state.focus);
  }
}

export class LayersPanel {
  constructor(actions) {
    this._actions = actions;
    this._panel = new Panel('layers', 'Layers to look at');
    this._panel.extra.append(el('span', {class: 'panel-hint', text: 'click a layer to select it in every chart'}));
    this.element = this._panel.element;
  }

  render(state, view) {
    this._panel.subtitle.textContent = view.stat;
    const cells = this._panel.columns(view.runs, (info) => new LayersCell(info.run, this._actions));
    view.runs.forEach((info, i) => cells[i].show(view.content(info), view));
  }

  destroy() {
    this._panel.destroy();
  }
}
