// The tab's frame: header controls, run sidebar, main area, error banner, notices area and the empty state.

import {el} from './dom.js';
import {statLabel} from './format.js';

// The how-to shown while the logdir holds no gradient health data.
export const HOW_TO_LINES = [
  'from tb_gradhealth import GradientHealthCallback',
  'model.fit(x, y, epochs=5, callbacks=[GradientHealthCallback(log_dir="logs/run1")])',
  '# then: tensorboard --logdir logs   (this tab fills in while training runs)',
];

/**
 * Builds the frame inside `root` and returns its parts.
 *
 * `handlers`: onStat(stat), onSmoothing(weight), onLogY(bool), onRefresh(), onAutoRefresh(bool).
 */
export function buildShell(root, state, handlers) {
  const stat = el('select', {class: 'stat-select', title: 'Statistic to plot', attrs: {'aria-label': 'Statistic'}});
  stat.addEventListener('change', () => handlers.onStat(stat.value));

  const smoothingValue = el('output', {class: 'smoothing-value', text: state.smoothing.toFixed(2)});
  const smoothing = el('input', {type: 'range', min: '0', max: '0.99', step: '0.01', value: String(state.smoothing), class: 'smoothing'});
  smoothing.addEventListener('input', () => {
    smoothingValue.textContent = Number(smoothing.value).toFixed(2);
    handlers.onSmoothing(Number(smoothing.value));
  });

  const logY = el('input', {type: 'checkbox', checked: state.logY, class: 'log-y'});
  logY.addEventListener('change', () => handlers.onLogY(logY.checked));

  const refresh = el('button', {type: 'button', class: 'refresh-button', text: 'Refresh', title: 'Fetch new steps now'});
  refresh.addEventListener('click', () => handlers.onRefresh());

  const auto = el('input', {type: 'checkbox', checked: state.autoRefresh, class: 'auto-refresh'});
  auto.addEventListener('change', () => handlers.onAutoRefresh(auto.checked));

  const status = el('span', {class: 'status', attrs: {'aria-live': 'polite'}});

  const header = el('header', {class: 'toolbar'}, [
    el('div', {class: 'brand'}, [el('span', {class: 'brand-mark', attrs: {'aria-hidden': 'true'}}), el('span', {class: 'brand-name', text: 'Gradient Health'})]),
    el('label', {class: 'control'}, [el('span', {class: 'control-label', text: 'Statistic'}), stat]),
    el('label', {class: 'control', title: 'Exponential moving average, in log space when the scale is logarithmic'}, [
      el('span', {class: 'control-label', text: 'Smoothing'}),
      smoothing,
      smoothingValue,
    ]),
    el('label', {class: 'control check'}, [logY, el('span', {text: 'Log scale'})]),
    el('span', {class: 'spacer'}),
    status,
    el('label', {class: 'control check', title: 'Fetch new steps every 30 seconds'}, [auto, el('span', {text: 'Auto-refresh'})]),
    refresh,
  ]);

  const errorText = el('span', {class: 'error-text'});
  const retry = el('button', {type: 'button', class: 'error-retry', text: 'Retry'});
  retry.addEventListener('click', () => handlers.onRefresh());
  const error = el('div', {class: 'error-banner', attrs: {role: 'alert'}, hidden: true}, [
    el('span', {class: 'error-icon', text: '!', attrs: {'aria-hidden': 'true'}}),
    errorText,
    retry,
  ]);

  // What the routes skipped reading (broken event files, undecodable tags): not an error of the tab.
  const notices = el('div', {class: 'notice-banner', attrs: {role: 'status'}, hidden: true});

  const runList = el('div', {class: 'run-list', attrs: {role: 'group', 'aria-label': 'Runs'}});
  const sidebar = el('aside', {class: 'sidebar'}, [
    el('h2', {class: 'sidebar-title', text: 'Runs'}),
    el('p', {class: 'sidebar-hint', text: 'Tick several runs to compare them on the same scales.'}),
    runList,
  ]);
  const main = el('main', {class: 'content'});
  const body = el('div', {class: 'layout'}, [sidebar, main]);
  root.replaceChildren(el('div', {class: 'app'}, [header, error, notices, body]));

  return {
    header,
    notices,
    runList,
    main,
    sidebar,
    setStats(stats, current) {
      stat.replaceChildren(...stats.map((name) => el('option', {value: name, text: `${name} — ${statLabel(name)}`, selected: name === current})));
      stat.value = current;
      stat.disabled = stats.length === 0;
    },
    setStatus(text) {
      status.textContent = text;
    },
    setBusy(busy) {
      refresh.disabled = busy;
      refresh.textContent = busy ? 'Loading…' : 'Refresh';
    },
    showError(message) {
      errorText.textContent = message || '';
      error.hidden = !message;
    },
  };
}

/** Returns the empty state: what the tab needs and the three lines that produce it. */
export function emptyState() {
  return el('div', {class: 'empty-state'}, [
    el('h2', {text: 'No gradient health data yet'}),
    el('p', {
      text: 'This logdir has no runs with per-layer gradient statistics. Add the callback to your training and the tab fills in as steps are written:',
    }),
    el('pre', {class: 'how-to'}, [el('code', {text: HOW_TO_LINES.join('\n')})]),
    el('p', {class: 'muted', text: 'Custom training loops and other frameworks: see the README section "Recording gradients".'}),
  ]);
}
