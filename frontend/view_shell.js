// The tab's frame: toolbar, error banner, notices area, run sidebar and main area, and the empty state.

import {el} from './dom.js';
import {statLabel} from './format.js';

// The how-to shown while the logdir holds no gradient health data.
export const HOW_TO_LINES = [
  'from tb_gradhealth import GradientHealthCallback',
  'model.fit(x, y, epochs=5, callbacks=[GradientHealthCallback(log_dir="logs/run1")])',
  '# then: tensorboard --logdir logs   (this tab fills in while training runs)',
];

/**
 * The frame around the panels, drawn from the view state.
 *
 * `actions`: setStat(stat), setSmoothing(weight), setLogY(bool), refresh(), setAutoRefresh(bool).
 * Inside TensorBoard (`hosted`) its reload refreshes the tab: no refresh button or timer of the tab's own.
 */
export class Shell {
  constructor(root, actions, hosted) {
    this._stat = el('select', {class: 'stat-select', title: 'Statistic to plot', attrs: {'aria-label': 'Statistic'}});
    this._stat.addEventListener('change', () => actions.setStat(this._stat.value));

    this._smoothingValue = el('output', {class: 'smoothing-value'});
    this._smoothing = el('input', {type: 'range', min: '0', max: '0.99', step: '0.01', class: 'smoothing'});
    this._smoothing.addEventListener('input', () => actions.setSmoothing(Number(this._smoothing.value)));

    this._logY = el('input', {type: 'checkbox', class: 'log-y'});
    this._logY.addEventListener('change', () => actions.setLogY(this._logY.checked));

    this._refresh = el('button', {type: 'button', class: 'refresh-button', text: 'Refresh', title: 'Fetch new steps now'});
    this._refresh.addEventListener('click', () => actions.refresh());

    this._auto = el('input', {type: 'checkbox', class: 'auto-refresh'});
    this._auto.addEventListener('change', () => actions.setAutoRefresh(this._auto.checked));

    this._status = el('span', {class: 'status', attrs: {'aria-live': 'polite'}});

    const header = el('header', {class: 'toolbar'}, [
      el('div', {class: 'brand'}, [
        el('span', {class: 'brand-mark', attrs: {'aria-hidden': 'true'}}),
        el('span', {class: 'brand-name', text: 'Gradient Health'}),
      ]),
      el('label', {class: 'control'}, [el('span', {class: 'control-label', text: 'Statistic'}), this._stat]),
      el('label', {class: 'control', title: 'Exponential moving average, in log space when the scale is logarithmic'}, [
        el('span', {class: 'control-label', text: 'Smoothing'}),
        this._smoothing,
        this._smoothingValue,
      ]),
      el('label', {class: 'control check'}, [this._logY, el('span', {text: 'Log scale'})]),
      el('span', {class: 'spacer'}),
      this._status,
      hosted ? null : el('label', {class: 'control check', title: 'Fetch new steps every 30 seconds'}, [this._auto, el('span', {text: 'Auto-refresh'})]),
      hosted ? null : this._refresh,
    ]);

    this._errorText = el('span', {class: 'error-text'});
    const retry = el('button', {type: 'button', class: 'error-retry', text: 'Retry'});
    retry.addEventListener('click', () => actions.refresh());
    this._error = el('div', {class: 'error-banner', attrs: {role: 'alert'}, hidden: true}, [
      el('span', {class: 'error-icon', text: '!', attrs: {'aria-hidden': 'true'}}),
      this._errorText,
      retry,
    ]);

    // What the routes skipped reading (broken event files, undecodable tags): not an error of the tab.
    this.notices = el('div', {class: 'notice-banner', attrs: {role: 'status'}, hidden: true});
    this.runList = el('div', {class: 'run-list', attrs: {role: 'group', 'aria-label': 'Runs'}});
    const sidebar = el('aside', {class: 'sidebar'}, [
      el('h2', {class: 'sidebar-title', text: 'Runs'}),
      el('p', {class: 'sidebar-hint', text: 'Tick several runs to compare them on the same scales.'}),
      this.runList,
    ]);
    this.main = el('main', {class: 'content'});
    root.replaceChildren(el('div', {class: 'app'}, [header, this._error, this.notices, el('div', {class: 'layout'}, [sidebar, this.main])]));
  }

  /** Shows the toolbar's controls as `state` has them; `stats` are the statistics the runs offer. */
  render(state, stats) {
    const options = [...this._stat.options].map((option) => option.value);
    if (options.length !== stats.length || options.some((stat, i) => stat !== stats[i])) {
      this._stat.replaceChildren(...stats.map((name) => el('option', {value: name, text: `${name} — ${statLabel(name)}`})));
    }
    this._stat.value = state.stat;
    this._stat.disabled = stats.length === 0;
    if (Number(this._smoothing.value) !== state.smoothing) this._smoothing.value = String(state.smoothing);
    this._smoothingValue.textContent = state.smoothing.toFixed(2);
    this._logY.checked = state.logY;
    this._auto.checked = state.autoRefresh;
    this._refresh.disabled = state.busy;
    this._refresh.textContent = state.busy ? 'Loading…' : 'Refresh';
    this._status.textContent = state.status;
  }

  /** Shows `message` in the error banner, or hides it when there is none. */
  showError(message) {
    this._errorText.textContent = message || '';
    this._error.hidden = !message;
  }
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
