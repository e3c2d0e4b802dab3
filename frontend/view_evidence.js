// A finding's evidence in words and numbers: why it is not a false alarm, with the training loss when the run has one.

import {el} from './dom.js';
import {formatStep, formatValue} from './format.js';
import {lossSparkline} from './view_loss.js';

// What the diagnosis's evidence keys mean; a key not listed reads as its own words.
const LABELS = {
  steps_nonfinite: 'logged steps with NaN/Inf',
  steps_logged: 'logged steps',
  layers_nonfinite_ever: 'layers ever NaN/Inf',
  weights_nonfinite: 'layers with NaN/Inf weights',
  elements_at_first_step: 'NaN/Inf elements at the first step',
  baseline_norm: 'norm at the start',
  norm_at_first_step: 'norm at the first step',
  peak_norm: 'peak norm',
  peak_step: 'peak at step',
  growth_threshold: 'growth threshold (×)',
  layer_growth: 'growth per layer (×)',
};
// Per-layer lists longer than this show their first entries and how many more there are.
const LAYER_ROWS = 8;
const LIST_ITEMS = 8;
const TEXT_CHARS = 300;
// Nested objects deeper than this are shown as JSON text.
const MAX_DEPTH = 3;

function label(key) {
  return LABELS[key] ?? key.replaceAll('_', ' ');
}

function cut(text, chars) {
  return text.length > chars ? text.slice(0, chars - 1) + '…' : text;
}

/** Returns a number as it reads best: steps and counts with separators, measures to three significant digits. */
function number(key, value) {
  if (Number.isInteger(value) && (/step|steps|count|layers|elements/.test(key) || Math.abs(value) >= 1000)) return formatStep(value);
  return formatValue(value);
}

/** Returns the evidence value `value` of `key` as nodes; `layers` are the finding's layers (a list as long is per layer). */
function valueNodes(key, value, layers, depth) {
  if (value === null || value === undefined) return [el('span', {class: 'muted', text: '–'})];
  if (typeof value === 'number') return [number(key, value)];
  if (typeof value === 'string') return [cut(value, TEXT_CHARS)];
  if (typeof value === 'boolean') return [value ? 'yes' : 'no'];
  if (Array.isArray(value)) {
    const numbers = value.every((item) => typeof item === 'number');
    if (numbers && layers && value.length === layers.length && value.length > 0) {
      const rows = value.slice(0, LAYER_ROWS).map((item, i) => el('tr', {}, [el('td', {class: 'name', text: layers[i], title: layers[i]}), el('td', {text: number(key, item)})]));
      const more = value.length > LAYER_ROWS ? [el('tr', {}, [el('td', {class: 'muted', text: `and ${value.length - LAYER_ROWS} more`, attrs: {colspan: '2'}})])] : [];
      return [el('table', {class: 'evidence-layers'}, [el('tbody', {}, [...rows, ...more])])];
    }
    const shown = value.slice(0, LIST_ITEMS).map((item) => (typeof item === 'number' ? number(key, item) : cut(typeof item === 'string' ? item : JSON.stringify(item), 80)));
    return [shown.join(', ') + (value.length > LIST_ITEMS ? `, … (${value.length} in all)` : '')];
  }
  if (typeof value === 'object' && depth < MAX_DEPTH) return [entries(value, layers, depth + 1)];
  return [cut(JSON.stringify(value), TEXT_CHARS)];
}

function entries(object, layers, depth) {
  return el(
    'dl',
    {class: 'evidence-list'},
    Object.entries(object).flatMap(([key, value]) => [el('dt', {text: label(key), title: key}), el('dd', {}, valueNodes(key, value, layers, depth))]),
  );
}

/**
 * Returns the evidence block of a finding (folded), or null when it has no evidence and no loss to show.
 *
 * `loss` is the run's training loss series, or null: its trend is drawn with the finding's first step marked.
 */
export function evidenceBlock(finding, loss) {
  const evidence = finding.evidence && typeof finding.evidence === 'object' ? finding.evidence : {};
  const sparkline = loss ? lossSparkline(loss, finding.first_step ?? null) : null;
  if (Object.keys(evidence).length === 0 && sparkline === null) return null;
  return el('details', {class: 'finding-evidence'}, [
    el('summary', {text: 'Evidence'}),
    entries(evidence, finding.layers, 0),
    sparkline
      ? el('div', {class: 'evidence-loss'}, [
          el('div', {class: 'evidence-loss-title', text: 'training loss of this run' + (finding.first_step !== null && finding.first_step !== undefined ? ` (dashed: step ${formatStep(finding.first_step)})` : '')}),
          sparkline,
        ])
      : null,
  ]);
}
