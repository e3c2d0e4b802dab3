// Entry point of the Gradient Health tab: holds the view state and wires the model to the views.

import {el} from './dom.js';
import {formatStep, lastIndexAtOrBefore, reductionNote, statLabel} from './format.js';
import {listenForTensorBoardReload} from './host.js';
import {decodeProblems, Model} from './model.js';
import {requestPoints} from './resolution.js';
import {sharedScales} from './scales.js';
import {cellExtent, colourLegend, Heatmap} from './view_heatmap.js';
import {mergeProblems, renderNotices} from './view_notices.js';
import {LayerProfile} from './view_profile.js';
import {badge, diagnosisCard, renderRunList} from './view_runs.js';
import {buildShell, emptyState} from './view_shell.js';
import {TrendChart} from './view_trend.js';

const STYLESHEETS = ['./vendor/uplot/uPlot.min.css', './style.css'];
// Charts measure their boxes: wait for the styles, but never hang on a missing one.
const STYLESHEET_TIMEOUT_MS = 3000;
const REFRESH_INTERVAL_MS = 30_000;
const DEFAULT_STAT = 'grad_norm';
// Runs selected at first, in list order: a side-by-side comparison that still fits a screen.
const MAX_DEFAULT_SELECTED = 3;
// A window resize settles for this long before the series resolution is checked again.
const RESIZE_SETTLE_MS = 400;

function loadStylesheets() {
  return Promise.all(
    STYLESHEETS.map((href) => {
      const link = el('link', {rel: 'stylesheet', href: new URL(href, import.meta.url).href});
      const loaded = new Promise((resolve) => {
        link.addEventListener('load', resolve);
        link.addEventListener('error', resolve);
        setTimeout(resolve, STYLESHEET_TIMEOUT_MS);
      });
      document.head.appendChild(link);
      return loaded;
    }),
  );
}

/** Returns the note under a chart of a downsampled series, or null when it holds every step. */
function reductionElement(series) {
  const text = reductionNote(series.steps.length, series.totalSteps);
  return text ? el('div', {class: 'reduced-note', text, data: {shown: String(series.steps.length), total: String(series.totalSteps)}}) : null;
}

class App {
  constructor(root) {
    this.model = new Model();
    this.state = {
      stat: DEFAULT_STAT,
      selected: new Set(),
      selectionInitialized: false,
      smoothing: 0,
      logY: true,
      autoRefresh: true,
      xRange: null, // a zoom chosen by the user; null = all steps
      selectedStep: null,
      stepPinned: false, // the user picked a step; otherwise follow the newest
      hiddenLayers: new Set(),
    };
    this.runs = null; // /runs entries, once loaded
    this.health = null; // run -> /health entry, once loaded
    this.healthError = null;
    this.series = new Map();
    this.seriesErrors = [];
    this.seriesToken = null; // the series load in flight, if any
    this.maxPoints = null; // the `max_points` of the series shown (or being loaded)
    this.renderedProblems = null; // what the run list and the notices show, as JSON
    this.fatalError = null; // the run list could not be loaded
    this.refreshId = 0;
    this.lastRefreshAt = 0;
    this.panels = [];
    this.scales = null;
    this.renderedKey = null;
    this.shell = buildShell(root, this.state, {
      onStat: (stat) => {
        this.state.stat = stat;
        this.loadSeries(false);
      },
      onSmoothing: (weight) => {
        this.state.smoothing = weight;
        this._scheduleTrendRedraw();
      },
      onLogY: (logY) => {
        this.state.logY = logY;
        this.renderMain(true);
      },
      onRefresh: () => this.refresh(true),
      onAutoRefresh: (on) => {
        this.state.autoRefresh = on;
      },
    });
    this._updatePageState();
  }

  start() {
    this.refresh(false);
    setInterval(() => {
      // TensorBoard's own reload may have just refreshed the tab: no need to do it twice.
      const recent = Date.now() - this.lastRefreshAt < REFRESH_INTERVAL_MS / 2;
      if (this.state.autoRefresh && !recent && document.visibilityState !== 'hidden') this.refresh(true);
    }, REFRESH_INTERVAL_MS);
    listenForTensorBoardReload(() => this.refresh(true));
    let resizeTimer = null;
    window.addEventListener('resize', () => {
      clearTimeout(resizeTimer);
      resizeTimer = setTimeout(() => {
        // A wider plot (or a denser screen) deserves more points; a narrower one keeps what it has until the next load.
        if (this.runs && this.maxPoints !== null && this._requestPoints() > this.maxPoints) this.loadSeries(false);
      }, RESIZE_SETTLE_MS);
    });
  }

  /**
   * Fetches runs, diagnosis and the selected series; `fresh` refetches cached series too.
   *
   * The run list and the charts are drawn as soon as their data arrives; the diagnosis (the
   * slowest route) fills in its badges and cards when it comes.
   */
  async refresh(fresh) {
    const refreshId = ++this.refreshId;
    this.lastRefreshAt = Date.now();
    this.shell.setBusy(true);
    // The diagnosis covers every run, so a selection change meanwhile does not make it stale;
    // only a newer refresh does.
    this.model.health().then((health) => {
      if (refreshId === this.refreshId) this._healthArrived(health);
    });
    const token = this.model.begin();
    try {
      const runs = await this.model.runs(token);
      if (runs === null) return;
      this.runs = runs;
      this.fatalError = null;
      this._reconcile();
      this._renderSidebar();
      if (runs.length === 0) {
        this._destroyPanels();
        this.renderedKey = null;
        this.shell.main.replaceChildren(emptyState());
        this._showProblems();
        this._stamp();
        this._updatePageState();
        return;
      }
      await this._loadSeries(token, fresh);
    } catch (error) {
      if (this.model.isCurrent(token)) this._fail(error);
    } finally {
      if (refreshId === this.refreshId) this.shell.setBusy(false);
    }
  }

  /** Loads the selected runs' series (from the cache where possible) and redraws. */
  async loadSeries(fresh) {
    if (!this.runs) return this.refresh(fresh);
    const token = this.model.begin();
    this._renderSidebar();
    try {
      await this._loadSeries(token, fresh);
    } catch (error) {
      if (this.model.isCurrent(token)) this._fail(error);
    }
  }

  async _loadSeries(token, fresh) {
    this.seriesToken = token;
    this._updatePageState();
    const runs = this._selectedRuns().filter((info) => info.stats.includes(this.state.stat)).map((info) => info.run);
    const maxPoints = this._requestPoints();
    const series = await this.model.series(token, runs, this.state.stat, maxPoints, fresh);
    if (!series) return;
    this.seriesToken = null;
    this.series = series;
    this.maxPoints = maxPoints;
    this.seriesErrors = [...series.values()].filter((value) => value instanceof Error);
    this.renderMain(false);
    // The series bring their own skipped steps: redraw the run list only if that adds something
    // (redrawing it would take the keyboard focus off its checkboxes).
    if (JSON.stringify([...this._problemsByRun()]) !== this.renderedProblems) this._renderSidebar();
    this._showProblems();
    this._stamp();
    this._updatePageState();
  }

  _healthArrived(health) {
    this.health = health.entries;
    this.healthError = health.error;
    if (this.runs && this.runs.length) {
      this._renderSidebar();
      if (this.seriesToken === null) this.renderMain(false);
    }
    this._showProblems();
    this._updatePageState();
  }

  /** Returns the series resolution for the plots as wide as they can be now (one run across the whole main area). */
  _requestPoints() {
    return requestPoints(this.shell.main.clientWidth, window.devicePixelRatio || 1);
  }

  /** Marks the page for scripts and tests: loading, ready, empty or error. */
  _updatePageState() {
    let state = 'ready';
    if (this.fatalError) state = 'error';
    else if (this.runs === null) state = 'loading';
    else if (this.runs.length === 0) state = 'empty';
    else if (this.health === null || this.seriesToken !== null) state = 'loading';
    document.body.dataset.state = state;
  }

  _showProblems() {
    const problems = [];
    if (this.fatalError) problems.push(this.fatalError.message || String(this.fatalError));
    if (this.healthError && !this.fatalError) problems.push(`Diagnosis unavailable: ${this.healthError.message}`);
    problems.push(...this.seriesErrors.map((error) => error.message));
    this.shell.showError(problems.join(' · ') || null);
  }

  /** Returns run -> what was skipped reading it, from /runs, /health and the loaded series, in run list order. */
  _problemsByRun() {
    const byRun = new Map();
    for (const info of this.runs || []) {
      const series = this.series.get(info.run);
      const seriesProblems = series && !(series instanceof Error) ? series.problems : [];
      byRun.set(info.run, mergeProblems(decodeProblems(info.problems), decodeProblems(this._healthOf(info.run)?.problems), seriesProblems));
    }
    return byRun;
  }

  _fail(error) {
    this.fatalError = error;
    this.seriesToken = null;
    this._showProblems();
    this.shell.setStatus('Update failed');
    // Keep whatever was drawn: an outage during training should not blank the charts.
    if (!this.runs) this.shell.main.replaceChildren(el('div', {class: 'empty-state', text: 'The tab could not load its data.'}));
    this._updatePageState();
  }

  _stamp() {
    const time = new Date().toLocaleTimeString([], {hour: '2-digit', minute: '2-digit', second: '2-digit'});
    this.shell.setStatus(`Updated ${time}`);
  }

  /** Keeps the selection and the statistic valid for the runs now present. */
  _reconcile() {
    const runs = this.runs;
    const names = new Set(runs.map((info) => info.run));
    for (const run of [...this.state.selected]) if (!names.has(run)) this.state.selected.delete(run);
    if (!this.state.selectionInitialized && runs.length) {
      for (const info of runs.slice(0, MAX_DEFAULT_SELECTED)) this.state.selected.add(info.run);
      this.state.selectionInitialized = true;
    }
    if (this.state.selected.size === 0 && runs.length) this.state.selected.add(runs[0].run);
    const stats = this._allStats();
    if (!stats.includes(this.state.stat)) this.state.stat = stats.includes(DEFAULT_STAT) ? DEFAULT_STAT : stats[0] || DEFAULT_STAT;
    this.shell.setStats(stats, this.state.stat);
  }

  _allStats() {
    // /runs lists each run's stats built-ins first; keep that order across runs.
    const stats = [];
    for (const info of this.runs) for (const stat of info.stats) if (!stats.includes(stat)) stats.push(stat);
    return stats;
  }

  /** Returns a run's /health entry; null while the diagnosis is loading, undefined if it has none. */
  _healthOf(run) {
    return this.health === null ? null : this.health.get(run);
  }

  _selectedRuns() {
    return this.runs.filter((info) => this.state.selected.has(info.run));
  }

  /** Draws the run list and the notices of what was skipped (both follow the runs, diagnosis and series). */
  _renderSidebar() {
    const problems = this._problemsByRun();
    this.renderedProblems = JSON.stringify([...problems]);
    renderRunList(this.shell.runList, this.runs, this.health, this.state.selected, problems, (run, checked) => {
      if (checked) this.state.selected.add(run);
      else this.state.selected.delete(run);
      this.loadSeries(false);
    });
    renderNotices(this.shell.notices, problems);
  }

  _destroyPanels() {
    for (const panel of this.panels) for (const view of [panel.trend, panel.heatmap, panel.profile]) view?.destroy();
    this.panels = [];
  }

  /** Rebuilds the main area when its inputs changed (or when `force`), keeping zoom and step. */
  renderMain(force) {
    const runs = this._selectedRuns();
    const loaded = runs.map((info) => this.series.get(info.run)).filter((s) => s && !(s instanceof Error));
    const key = [this.state.stat, this.state.logY, JSON.stringify(runs.map((info) => info.run))];
    // The diagnosis enters by value: each refresh brings a new but often equal /health body.
    const diagnosisKey = JSON.stringify(runs.map((info) => this._healthOf(info.run) || null));
    const sameInputs =
      this.renderedKey && key.length === this.renderedKey.key.length && key.every((k, i) => k === this.renderedKey.key[i]) &&
      loaded.length === this.renderedKey.loaded.length && loaded.every((s, i) => s === this.renderedKey.loaded[i]);
    if (sameInputs && !force) {
      // Only the diagnosis changed (it usually arrives after the series): the charts stay as drawn.
      if (diagnosisKey !== this.renderedKey.diagnosisKey) this._updateDiagnosis();
      this.renderedKey.diagnosisKey = diagnosisKey;
      return;
    }
    this.renderedKey = {key, loaded, diagnosisKey};

    this.scales = sharedScales(loaded, this.state.logY);
    this.cellExtent = cellExtent(loaded);
    const latest = this.scales.x[1];
    if (!this.state.stepPinned || this.state.selectedStep === null) this.state.selectedStep = loaded.length ? latest : null;

    this._destroyPanels();
    const main = this.shell.main;
    const columns = Math.max(1, runs.length);
    const grid = (cells) => el('div', {class: 'run-grid', style: {gridTemplateColumns: `repeat(${columns}, minmax(340px, 1fr))`}}, cells);
    const caption = (info) => el('div', {class: 'cell-caption'}, [el('span', {class: 'cell-run', text: info.run}), badge(this._healthOf(info.run)?.verdict, this.health === null)]);

    const diagnosisCells = runs.map((info) => el('div', {class: 'cell', data: {run: info.run}}, [caption(info), diagnosisCard(this._healthOf(info.run))]));
    const trendCells = [];
    const heatmapCells = [];
    const profileCells = [];
    for (const info of runs) {
      const series = this.series.get(info.run);
      const panel = {run: info.run, series: series instanceof Error ? null : series};
      const trendCell = el('div', {class: 'cell trend-cell', data: {run: info.run}}, [caption(info)]);
      const heatmapCell = el('div', {class: 'cell heatmap-cell', data: {run: info.run}}, [caption(info)]);
      const profileCaption = el('span', {class: 'cell-step'});
      const profileCell = el('div', {class: 'cell profile-cell', data: {run: info.run}}, [el('div', {class: 'cell-caption'}, [el('span', {class: 'cell-run', text: info.run}), profileCaption])]);
      if (!info.stats.includes(this.state.stat)) {
        for (const cell of [trendCell, heatmapCell, profileCell]) cell.append(el('p', {class: 'muted cell-missing', text: `This run has no “${this.state.stat}” statistic.`}));
      } else if (!panel.series) {
        const text = series ? series.message : 'Loading…';
        for (const cell of [trendCell, heatmapCell, profileCell]) cell.append(el('p', {class: series ? 'cell-error' : 'muted cell-missing', text}));
      } else {
        panel.trendBox = el('div', {class: 'trend'});
        panel.heatmapBox = el('div', {class: 'heatmap-box'});
        panel.profileBox = el('div', {class: 'profile-box'});
        panel.profileCaption = profileCaption;
        // Told under both charts drawn from the reduced rows; the profile shows one whole step.
        // (append() would turn a null into the text "null").
        const reduced = () => [reductionElement(panel.series)].filter(Boolean);
        trendCell.append(panel.trendBox, ...reduced());
        heatmapCell.append(panel.heatmapBox, ...reduced());
        profileCell.append(panel.profileBox);
      }
      this.panels.push(panel);
      trendCells.push(trendCell);
      heatmapCells.push(heatmapCell);
      profileCells.push(profileCell);
    }

    const stat = this.state.stat;
    const section = (title, subtitle, extra, body, name) =>
      el('section', {class: `panel panel-${name}`}, [
        el('div', {class: 'panel-head'}, [el('h2', {text: title}), subtitle ? el('span', {class: 'panel-subtitle', text: subtitle}) : null, el('span', {class: 'spacer'}), extra]),
        body,
      ]);
    this.profileTitle = el('span', {class: 'panel-subtitle'});
    main.replaceChildren(
      section('Diagnosis', runs.length > 1 ? `${runs.length} runs side by side` : null, null, grid(diagnosisCells), 'diagnosis'),
      section('Trends', statLabel(stat), el('span', {class: 'panel-hint', text: 'drag to zoom · double-click to reset · click to pick a step · legend toggles layers'}), grid(trendCells), 'trends'),
      section('Heatmap', 'layers (input at the top) × steps', loaded.length ? colourLegend(this.scales.colour, stat) : null, grid(heatmapCells), 'heatmap'),
      section('Layer profile', null, this.profileTitle, grid(profileCells), 'profile'),
    );

    // Charts are created after insertion so they can measure their width.
    for (const panel of this.panels) {
      if (!panel.series) continue;
      panel.trend = new TrendChart(panel.trendBox, {
        onZoom: (range) => this._zoom(range, panel.trend),
        onResetZoom: () => this._zoom(null, null),
        onSelectStep: (step) => this._selectStep(step),
        onToggleLayer: (name, shown) => this._toggleLayer(name, shown, panel.trend),
      });
      panel.heatmap = new Heatmap(panel.heatmapBox, {onSelectStep: (step) => this._selectStep(step)});
      panel.profile = new LayerProfile(panel.profileBox);
    }
    this._drawTrends();
    this._drawHeatmaps();
    this._drawProfiles();
  }

  /** Puts the diagnosis in place (verdict badges of the captions, diagnosis cards) without touching the charts. */
  _updateDiagnosis() {
    for (const cell of this.shell.main.querySelectorAll('.cell[data-run]')) {
      const entry = this._healthOf(cell.dataset.run);
      cell.querySelector(':scope > .cell-caption > .badge')?.replaceWith(badge(entry?.verdict, this.health === null));
      cell.querySelector(':scope > .diagnosis')?.replaceWith(diagnosisCard(entry));
    }
  }

  _xRange() {
    return this.state.xRange || this.scales.x;
  }

  /** Returns the heatmaps' step range: the trends' range, widened so the first and last cells (centred on steps, as wide as their spacing) show whole. */
  _heatmapRange() {
    const [x0, x1] = this._xRange();
    const [first, last] = this.scales.x;
    const [lo, hi] = this.cellExtent || [first, last];
    return [x0 - Math.max(0, first - lo), x1 + Math.max(0, hi - last)];
  }

  _drawTrends() {
    for (const panel of this.panels) {
      if (!panel.trend) continue;
      panel.trend.update({
        series: panel.series,
        logY: this.state.logY,
        smoothing: this.state.smoothing,
        yRange: this.scales.y,
        xRange: this._xRange(),
        selectedStep: this.state.selectedStep,
        hiddenLayers: this.state.hiddenLayers,
      });
    }
  }

  _drawHeatmaps() {
    for (const panel of this.panels) {
      if (!panel.heatmap) continue;
      panel.heatmap.update({series: panel.series, xRange: this._heatmapRange(), colour: this.scales.colour, selectedStep: this.state.selectedStep});
    }
  }

  _drawProfiles() {
    const step = this.state.selectedStep;
    if (this.profileTitle) this.profileTitle.textContent = step === null ? '' : `at step ${formatStep(step)}${this.state.stepPinned ? '' : ' (latest)'} · click the heatmap or a trend to pick another step`;
    for (const panel of this.panels) {
      if (!panel.profile) continue;
      // A run without that exact step shows its latest step before it.
      const index = step === null ? -1 : lastIndexAtOrBefore(panel.series.steps, step);
      const shown = index >= 0 ? panel.series.steps[index] : null;
      panel.profileCaption.textContent = shown === null ? 'no step at or before the selected one' : shown === step ? `step ${formatStep(shown)}` : `step ${formatStep(shown)} (nearest earlier)`;
      panel.profile.update({series: panel.series, index, logY: this.state.logY, yRange: this.scales.y, colour: this.scales.colour});
    }
  }

  _scheduleTrendRedraw() {
    if (this._trendFrame) return;
    this._trendFrame = requestAnimationFrame(() => {
      this._trendFrame = null;
      for (const panel of this.panels) panel.trend?.setSmoothing(this.state.smoothing);
    });
  }

  _zoom(range, source) {
    this.state.xRange = range;
    const effective = this._xRange();
    for (const panel of this.panels) if (panel.trend && panel.trend !== source) panel.trend.setXRange(effective);
    this._drawHeatmaps();
  }

  _selectStep(step) {
    this.state.selectedStep = step;
    this.state.stepPinned = true;
    for (const panel of this.panels) panel.trend?.setSelectedStep(step);
    this._drawHeatmaps();
    this._drawProfiles();
  }

  _toggleLayer(name, shown, source) {
    if (shown) this.state.hiddenLayers.delete(name);
    else this.state.hiddenLayers.add(name);
    for (const panel of this.panels) if (panel.trend && panel.trend !== source) panel.trend.setLayerShown(name, shown);
  }
}

/** Called by TensorBoard's plugin frame once this module is imported. */
export async function render() {
  document.body.classList.add('gradient-health');
  await loadStylesheets();
  new App(document.body).start();
}
