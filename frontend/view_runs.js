// Run views: the run list with verdict badges, and each run's diagnosis in plain words.

import {el} from './dom.js';
import {formatStep, verdictLabel} from './format.js';
import {problemMarker} from './view_notices.js';

// Layer lists longer than this are cut in a finding ("and N more").
const LAYERS_SHOWN = 4;

/** Returns a verdict (or finding kind) badge; `pending` while the diagnosis loads; no verdict shows a neutral badge. */
export function badge(verdict, pending = false) {
  if (pending) return el('span', {class: 'badge badge-pending', text: 'diagnosing…', data: {verdict: ''}});
  if (!verdict) return el('span', {class: 'badge badge-unknown', text: 'no diagnosis', data: {verdict: ''}});
  return el('span', {class: `badge badge-${verdict}`, text: verdictLabel(verdict), data: {verdict}});
}

function runMeta(info) {
  const parts = [`${info.layers.length} layer${info.layers.length === 1 ? '' : 's'}`];
  if (info.maxStep !== null) parts.push(`step ${formatStep(info.maxStep)}`);
  return parts.join(' · ');
}

/**
 * Fills `list` with one selectable row per run.
 *
 * @param {HTMLElement} list the container
 * @param {Array<object>} runs the decoded /runs entries (model.decodeRun)
 * @param {Map<string, object>|null} health run -> /health entry; null while it loads
 * @param {Array<string>} selected selected run names
 * @param {Map<string, Array<object>>} problems run -> what was skipped reading it ({tag, file, message})
 * @param {function(string, boolean)} onToggle called with a run and its new checked state
 */
export function renderRunList(list, runs, health, selected, problems, onToggle) {
  if (runs.length === 0) {
    list.replaceChildren(el('p', {class: 'muted run-list-empty', text: 'No runs with gradient health data yet.'}));
    return;
  }
  list.replaceChildren(
    ...runs.map((info) => {
      const verdict = health?.get(info.run)?.verdict;
      const isSelected = selected.includes(info.run);
      const checkbox = el('input', {type: 'checkbox', checked: isSelected});
      checkbox.addEventListener('change', () => onToggle(info.run, checkbox.checked));
      return el('label', {class: 'run-item' + (isSelected ? ' selected' : ''), data: {run: info.run}, title: info.run}, [
        checkbox,
        el('span', {class: 'run-text'}, [
          el('span', {class: 'run-name', text: info.run}),
          el('span', {class: 'run-meta', text: runMeta(info)}),
          problemMarker(problems.get(info.run)),
        ]),
        badge(verdict, health === null),
      ]);
    }),
  );
}

function formatEvidence(value) {
  if (typeof value === 'number') return Number.isInteger(value) ? String(value) : value.toPrecision(3);
  if (typeof value === 'string') return value;
  return JSON.stringify(value);
}

function layerList(layers) {
  if (!layers || layers.length === 0) return null;
  const shown = layers.slice(0, LAYERS_SHOWN).join(', ');
  const more = layers.length > LAYERS_SHOWN ? ` and ${layers.length - LAYERS_SHOWN} more` : '';
  return `${layers.length === 1 ? 'Layer' : 'Layers'}: ${shown}${more}`;
}

function findingItem(finding) {
  const where = [layerList(finding.layers)];
  if (finding.first_step !== null && finding.first_step !== undefined) where.push(`from step ${formatStep(finding.first_step)}`);
  if (finding.severity !== null && finding.severity !== undefined) where.push(`severity ${formatEvidence(finding.severity)}`);
  const evidence = Object.entries(finding.evidence || {});
  return el('li', {class: 'finding', data: {kind: finding.kind}}, [
    el('div', {class: 'finding-head'}, [badge(finding.kind), el('span', {class: 'finding-message', text: finding.message || ''})]),
    el('div', {class: 'finding-where', text: where.filter(Boolean).join(' · ')}),
    finding.advice ? el('div', {class: 'finding-advice'}, [el('strong', {text: 'What usually helps: '}), finding.advice]) : null,
    evidence.length
      ? el('details', {class: 'finding-evidence'}, [
          el('summary', {text: 'Evidence'}),
          el('dl', {}, evidence.flatMap(([key, value]) => [el('dt', {text: key}), el('dd', {text: formatEvidence(value)})])),
        ])
      : null,
  ]);
}

/**
 * Returns the diagnosis card of one run.
 *
 * @param {object|null|undefined} entry the run's /health entry; null while it loads, undefined if unavailable
 */
export function diagnosisCard(entry) {
  if (entry === null) {
    return el('div', {class: 'diagnosis'}, [el('p', {class: 'muted', text: 'Diagnosing…'})]);
  }
  if (!entry) {
    return el('div', {class: 'diagnosis'}, [el('p', {class: 'muted', text: 'No diagnosis available for this run.'})]);
  }
  const findings = entry.findings || [];
  if (findings.length === 0) {
    return el('div', {class: 'diagnosis'}, [
      el('p', {class: 'healthy-note', text: 'No problem found: gradients stay finite and in a normal range in every recorded step.'}),
    ]);
  }
  return el('div', {class: 'diagnosis'}, [el('ul', {class: 'findings'}, findings.map(findingItem))]);
}
