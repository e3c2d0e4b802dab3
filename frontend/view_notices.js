// What the routes reported about each run's data (skipped tags and files, wrong values): the run list's warning marker and the notices list, as plain text.

import {el} from './dom.js';

// Lines shown at once; the rest fold away so a logdir of broken runs does not push the charts down.
const NOTICES_SHOWN = 6;
// What each notices area shows now: redrawing the same list would make screen readers announce it again.
const shownProblems = new WeakMap();

/** Returns the problems of `lists` ([{tag, file, message}] each) in order, without repeats: several routes report the same one. */
export function mergeProblems(...lists) {
  const seen = new Set();
  const merged = [];
  for (const list of lists) {
    for (const problem of list || []) {
      const key = JSON.stringify([problem.tag, problem.file, problem.message]);
      if (seen.has(key)) continue;
      seen.add(key);
      merged.push(problem);
    }
  }
  return merged;
}

/** Returns what a problem is about: a broken event file's name or a tag. */
function subject(problem) {
  return problem.file || problem.tag;
}

/** Returns one problem as a line of text: what it is about and what is wrong (the server's message says what was skipped). */
export function problemText(problem) {
  return subject(problem) ? `${subject(problem)}: ${problem.message}` : problem.message;
}

/** Returns the run list's marker of a run with problems in its data (its title lists them), or null. */
export function problemMarker(problems) {
  if (!problems || problems.length === 0) return null;
  const count = problems.length;
  return el('span', {
    class: 'run-problems',
    text: `⚠ ${count} problem${count === 1 ? '' : 's'} in its data`,
    title: problems.map(problemText).join('\n'),
    data: {problems: String(count)},
  });
}

function noticeItem(run, problem) {
  const data = problem.file ? {run, file: problem.file} : {run, tag: problem.tag};
  return el('li', {class: 'notice', data}, [
    el('span', {class: 'notice-run', text: run}),
    ': ',
    el('code', {class: 'notice-tag', text: subject(problem) || '(unnamed)'}),
    ': ',
    el('span', {class: 'notice-message', text: problem.message}),
  ]);
}

/**
 * Fills the notices area with every run's problems; hides it when there is none.
 *
 * @param {HTMLElement} container the notices area
 * @param {Map<string, Array<{tag: string, file: string, message: string}>>} problemsByRun run -> its problems, in run list order
 */
export function renderNotices(container, problemsByRun) {
  const key = JSON.stringify([...problemsByRun]);
  if (shownProblems.get(container) === key) return;
  shownProblems.set(container, key);
  const items = [];
  for (const [run, problems] of problemsByRun) for (const problem of problems) items.push(noticeItem(run, problem));
  if (items.length === 0) {
    container.replaceChildren();
    container.hidden = true;
    return;
  }
  const runs = [...problemsByRun.values()].filter((problems) => problems.length).length;
  const rest = items.slice(NOTICES_SHOWN);
  container.replaceChildren(
    el('span', {class: 'notice-icon', text: '⚠', attrs: {'aria-hidden': 'true'}}),
    el('div', {class: 'notice-body'}, [
      el('div', {class: 'notice-title', text: `Problems in the data of ${runs} run${runs === 1 ? '' : 's'} (everything readable is shown):`}),
      el('ul', {class: 'notice-list'}, items.slice(0, NOTICES_SHOWN)),
      rest.length
        ? el('details', {class: 'notice-more'}, [el('summary', {text: `${rest.length} more`}), el('ul', {class: 'notice-list'}, rest)])
        : null,
    ]),
  );
  container.hidden = false;
}
