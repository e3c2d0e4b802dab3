// Run views: the run list with verdict badges, and each run's diagnosis in plain words.

import {el} from './dom.js';
import {formatStep, verdictLabel} from './format.js';
import {evidenceBlock} from './view_evidence.js';
import {shortName} from './view_heatmap.js';
import {problemMarker} from './view_notices.js';

// Layer lists longer than this are cut in a finding ("and N more"), and so are the names in them.
const LAYERS_SHOWN = 4;
const NAME_CHARS = 60;

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

// A finding's message or advice longer than this is cut (names in it can be long); the whole text is its tooltip.
const TEXT_CHARS = 600;

function layerList(layers) {
  if (!layers || layers.length === 0) return null;
  const shown = layers.slice(0, LAYERS_SHOWN).map((name) => shortName(name, NAME_CHARS)).join(', ');
  const more = layers.length > LAYERS_SHOWN ? ` and ${layers.length - LAYERS_SHOWN} more` : '';
  return `${layers.length === 1 ? 'Layer' : 'Layers'}: ${shown}${more}`;
}

function longText(className, text) {
  const whole = String(text ?? '');
  return el('span', {class: className, text: shortName(whole, TEXT_CHARS), title: whole.length > TEXT_CHARS ? whole : null});
}

function findingItem(finding, loss) {
  const where = [layerList(finding.layers)];
  if (finding.first_step !== null && finding.first_step !== undefined) where.push(`from step ${formatStep(finding.first_step)}`);
  if (finding.severity) where.push(`severity ${finding.severity}`);
  return el('li', {class: 'finding', data: {kind: finding.kind}}, [
    el('div', {class: 'finding-head'}, [badge(finding.kind), longText('finding-message', finding.message)]),
    el('div', {class: 'finding-where', text: where.filter(Boolean).join(' · ')}),
    finding.advice ? el('div', {class: 'finding-advice'}, [el('strong', {text: 'What usually helps: '}), longText('', finding.advice)]) : null,
    evidenceBlock(finding, loss),
  ]);
}

/** Returns what the diagnosis could not check for a run (its notes), or null when it checked everything. */
function notesBlock(notes) {
  if (!Array.isArray(notes) || notes.length === 0) return null;
  return el('div', {class: 'diagnosis-notes'}, [
    el('span', {class: 'diagnosis-notes-title', text: 'Not checked: '}),
    el('ul', {}, notes.map((note) => el('li', {}, [longText('', note)]))),
  ]);
}

/**
 * Returns the diagnosis card of one run.
 *
 * @param {object|null|undefined} entry the run's /health entry; null while it loads, undefined if unavailable
 * @param {object|null} loss the run's training loss series, drawn in each finding's evidence; null without one
 */
export function diagnosisCard(entry, loss = null) {
  if (entry === null) {
    return el('div', {class: 'diagnosis'}, [el('p', {class: 'muted', text: 'Diagnosing…'})]);
  }
  if (!entry) {
    return el('div', {class: 'diagnosis'}, [el('p', {class: 'muted', text: 'No diagnosis available for this run.'})]);
  }
  const findings = entry.findings || [];
  const notes = notesBlock(entry.notes);
  if (entry.verdict === 'unreadable') {
    return el('div', {class: 'diagnosis'}, [
      el('p', {class: 'unreadable-note', text: 'Not diagnosed: none of this run’s statistics could be read (its problems are listed above the charts).'}),
      notes,
    ]);
  }
  if (findings.length === 0) {
    return el('div', {class: 'diagnosis'}, [
      el('p', {class: 'healthy-note', text: 'No problem found: gradients stay finite and in a normal range in every recorded step.'}),
      notes,
    ]);
  }
  return el('div', {class: 'diagnosis'}, [el('ul', {class: 'findings'}, findings.map((finding) => findingItem(finding, loss))), notes]);
}
