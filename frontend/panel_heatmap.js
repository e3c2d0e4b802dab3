// The heatmap panel: each selected run's rows of layers x steps, on the shared colour scale, grouped and filtered by kind.

import {el} from './dom.js';
import {LAYER_KINDS} from './layers.js';
import {ChartCell, Panel, showReduction} from './panel.js';
import {colourLegend, Heatmap} from './view_heatmap.js';

const GROUPINGS = [
  ['path', 'by name path'],
  ['kind', 'by kind of layer'],
  ['none', 'none'],
];

class HeatmapCell extends ChartCell {
  constructor(run, actions) {
    super(run, 'heatmap-cell');
    this._actions = actions;
  }

  createChart(box) {
    const chartBox = el('div', {class: 'heatmap-box'});
    this._reduction = el('div');
    box.append(chartBox, this._reduction);
    return new Heatmap(chartBox, {
      onSelectStep: (step) => this._actions.pickStep(step),
      onToggleGroup: (key) => this._actions.toggleGroup(key),
    });
  }

  draw(series, view) {
    const {rows, spans} = view.rowsOf(series);
    const focus = view.state.focus;
    this.chart.update({
      series,
      rows,
      spans,
      rowZoom: view.state.rowZoom,
      focusRow: focus === null ? -1 : rows.findIndex((row) => row.layers.some((j) => series.layers[j] === focus)),
      xRange: view.heatmapRange,
      colour: view.colour,
      selectedStep: view.step,
      theme: view.state.theme,
    });
    showReduction(this._reduction, series);
  }
}

function select(label, title, onChange) {
  const control = el('select', {class: 'tool-select', title, attrs: {'aria-label': label}});
  control.addEventListener('change', () => onChange(control.value));
  return control;
}

function button(text, title, onClick) {
  const control = el('button', {type: 'button', class: 'tool-button', text, title});
  control.addEventListener('click', onClick);
  return control;
}

export class HeatmapPanel {
  constructor(actions) {
    this._actions = actions;
    this._panel = new Panel('heatmap', 'Heatmap');
    this._panel.subtitle.textContent = 'layers (input at the top) × steps';
    this.element = this._panel.element;
    this._legendKey = null;
    this._group = select('Group rows', 'Group the rows of the heatmaps and layer profiles', actions.setGroupBy);
    this._kind = select('Kind of layer', 'Show one kind of layer in the heatmaps and layer profiles', (kind) => actions.setKind(kind || null));
    this._kindLabel = el('label', {class: 'control'}, [el('span', {class: 'control-label', text: 'Kind'}), this._kind]);
    this._zoom = button('', '', () => actions.setRowZoom(this._zoom.dataset.next));
    this._panel.tools.append(
      el('label', {class: 'control'}, [el('span', {class: 'control-label', text: 'Group rows'}), this._group]),
      button('Collapse all', 'Show each outermost group as one row', actions.collapseAll),
      button('Expand all', 'Show every layer as a row of its own', actions.expandAll),
      this._kindLabel,
      this._zoom,
    );
    this._panel.tools.hidden = false;
  }

  _renderTools(state, view) {
    const withKinds = view.loaded.some((series) => view.kindsOf(series));
    const groupings = GROUPINGS.filter(([value]) => value !== 'kind' || withKinds);
    if (this._group.options.length !== groupings.length) {
      this._group.replaceChildren(...groupings.map(([value, text]) => el('option', {value, text})));
    }
    this._group.value = groupings.some(([value]) => value === state.groupBy) ? state.groupBy : 'path';
    const kinds = LAYER_KINDS.filter((kind) => view.loaded.some((series) => view.kindsOf(series)?.includes(kind)));
    this._kindLabel.hidden = kinds.length === 0;
    if (this._kind.options.length !== kinds.length + 1) {
      this._kind.replaceChildren(el('option', {value: '', text: 'all'}), ...kinds.map((kind) => el('option', {value: kind, text: kind})));
    }
    this._kind.value = state.kind ?? '';
    const readable = state.rowZoom === 'rows';
    this._zoom.textContent = readable ? 'Fit all rows' : 'Readable rows';
    this._zoom.title = readable ? 'Fit every row in the heatmap’s height' : 'Show rows tall enough to read each name, scrolling';
    this._zoom.dataset.next = readable ? 'fit' : 'rows';
    this._zoom.setAttribute('aria-pressed', String(readable));
  }

  render(state, view) {
    // Runs whose layer set changed (e.g. a frozen head) have cells that were not recorded: the legend says how they look.
    const notRecorded = view.loaded.some((series) => series.missing !== null);
    const legendKey = view.loaded.length ? JSON.stringify([view.colour, view.stat, state.theme, notRecorded]) : null;
    if (legendKey !== this._legendKey) {
      this._legendKey = legendKey;
      this._panel.extra.replaceChildren(...(legendKey ? [colourLegend(view.colour, view.stat, notRecorded)] : []));
    }
    this._renderTools(state, view);
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
