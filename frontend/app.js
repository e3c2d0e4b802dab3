// The tab's application: the view state, the loads that fill it, and the panels drawn from it.

import {el} from './dom.js';
import {cutShort, groupsHolding, layerKinds, layerRows, onsetRange, topGroups} from './layers.js';
import {decodeProblems, Model} from './model.js';
import {DiagnosisPanel} from './panel_diagnosis.js';
import {HeatmapPanel} from './panel_heatmap.js';
import {LayersPanel} from './panel_layers.js';
import {ProfilePanel} from './panel_profile.js';
import {TrendsPanel} from './panel_trends.js';
import {requestPoints} from './resolution.js';
import {sharedScales} from './scales.js';
import {Store} from './store.js';
import {applyTheme} from './theme.js';
import {decodeView, encodeView} from './url_state.js';
import {cellExtent} from './view_heatmap.js';
import {mergeProblems, renderNotices} from './view_notices.js';
import {renderRunList} from './view_runs.js';
import {emptyState, Shell} from './view_shell.js';

const REFRESH_INTERVAL_MS = 30_000;
const DEFAULT_STAT = 'grad_norm';
// The run-level statistic drawn over each run's trends.
const LOSS = 'loss';
// Runs selected at first, in list order: a side-by-side comparison that still fits a screen.
const MAX_DEFAULT_SELECTED = 3;
// A window resize settles for this long before the series resolution is checked again.
const RESIZE_SETTLE_MS = 400;

function initialState() {
  return {
    // What the user chose.
    stat: DEFAULT_STAT,
    selected: [], // run names
    selectionInitialized: false,
    smoothing: 0,
    logY: true,
    autoRefresh: true,
    xRange: null, // a zoom chosen by the user; null = all steps
    step: null, // the step the user picked; null = follow the latest
    hiddenLayers: new Set(),
    filter: '', // what the trend charts' filter box holds
    focus: null, // the layer name selected everywhere, or null
    groupBy: 'path', // rows of heatmaps and profiles: 'path', 'kind' or 'none'
    collapsed: new Set(), // keys of the collapsed groups of rows
    kind: null, // the kind of layer heatmaps and profiles show; null = every kind
    rowZoom: 'fit', // 'fit': every row in the heatmap's height; 'rows': readable rows, scrolled
    theme: 'light',
    // What was loaded.
    runs: null, // decoded /runs entries, once loaded
    health: null, // run -> /health entry, once loaded
    healthError: null,
    series: new Map(), // run -> decoded series or RequestError, of `seriesStat`
    seriesStat: null,
    losses: new Map(), // run -> its training loss (decoded series) or RequestError, for runs that record it
    seriesLoading: false,
    maxPoints: null, // the `max_points` of the series shown (or being loaded)
    fatalError: null, // the run list could not be loaded
    busy: false,
    status: '',
  };
}

/** Returns `fn` remembering its last arguments and result: called again with the same arguments (by identity), it returns that result. */
function memo(fn) {
  let lastArgs = null;
  let lastResult;
  return (...args) => {
    if (lastArgs && args.length === lastArgs.length && args.every((arg, i) => Object.is(arg, lastArgs[i]))) return lastResult;
    lastArgs = args;
    lastResult = fn(...args);
    return lastResult;
  };
}

function sameItems(a, b) {
  return a.length === b.length && a.every((item, i) => item === b[i]);
}

/** Returns the statistics of `runs` in the order /runs lists them (built-ins first), without repeats. */
function allStats(runs) {
  const stats = [];
  for (const info of runs || []) for (const stat of info.stats) if (!stats.includes(stat)) stats.push(stat);
  return stats;
}

export class App {
  /** Builds the tab in `root`; `host` (host.js) is the page around it. */
  constructor(root, host) {
    this.host = host;
    this.model = new Model();
    this.store = new Store(initialState());
    this.actions = {
      setStat: (stat) => {
        this.store.update({stat});
        this._loadSeries(false);
      },
      toggleRun: (run, checked) => {
        const selected = this.store.state.selected.filter((name) => name !== run);
        this.store.update({selected: checked ? [...selected, run] : selected});
        this._loadSeries(false);
      },
      setSmoothing: (smoothing) => this.store.update({smoothing}),
      setLogY: (logY) => this.store.update({logY}),
      setAutoRefresh: (autoRefresh) => this.store.update({autoRefresh}),
      refresh: () => this.refresh(true),
      zoom: (xRange) => this.store.update({xRange}),
      pickStep: (step) => this.store.update({step}),
      showLayer: (name, shown) => {
        const hiddenLayers = new Set(this.store.state.hiddenLayers);
        if (shown) hiddenLayers.delete(name);
        else hiddenLayers.add(name);
        this.store.update({hiddenLayers});
      },
      setFilter: (filter) => this.store.update({filter}),
      focusLayer: (name) => this._focus(name),
      setGroupBy: (groupBy) => this.store.update({groupBy, collapsed: new Set()}),
      toggleGroup: (key) => {
        const collapsed = new Set(this.store.state.collapsed);
        if (collapsed.has(key)) collapsed.delete(key);
        else collapsed.add(key);
        this.store.update({collapsed});
      },
      collapseAll: () => {
        const view = this._viewOf(this.store.state);
        const keys = view.loaded.flatMap((series) => topGroups(series.layers, view.kindsOf(series), this.store.state.groupBy));
        this.store.update({collapsed: new Set(keys)});
      },
      expandAll: () => this.store.update({collapsed: new Set()}),
      setKind: (kind) => this.store.update({kind}),
      showOnset: (run) => {
        const series = this._viewOf(this.store.state).loaded.find((loaded) => loaded.run === run);
        if (series?.nonFinite.length) this.store.update({xRange: onsetRange(series), step: series.steps[series.nonFinite[0]]});
      },
      setRowZoom: (rowZoom) => this.store.update({rowZoom}),
    };
    this.shell = new Shell(root, this.actions, host.insideTensorBoard);
    this.panels = [
      new DiagnosisPanel(),
      new LayersPanel(this.actions),
      new TrendsPanel(this.actions),
      new HeatmapPanel(this.actions),
      new ProfilePanel(),
    ];
    this._mainShows = null;
    this._sidebarKey = null;
    this._refreshing = false;
    this._refreshAgain = false;
    this._lastRefreshAt = 0;
    this._selectedRuns = memo((runs, selected) => (runs || []).filter((info) => selected.includes(info.run)));
    this._loaded = memo((runs, series) => runs.map((info) => series.get(info.run)).filter((s) => s && !(s instanceof Error)));
    this._scales = memo(sharedScales);
    // The colour scale does not depend on the value axis: kept by value, so a log-scale toggle leaves the heatmaps be.
    this._colour = memo((lo, hi) => ({lo, hi}));
    this._cellExtent = memo(cellExtent);
    this._xRange = memo((chosen, scales) => chosen || scales.x);
    this._heatmapRange = memo((xRange, scales, extent) => {
      // The trends' range, widened so the first and last cells (centred on steps, as wide as their spacing) show whole.
      const [first, last] = scales.x;
      const [lo, hi] = extent || [first, last];
      return [xRange[0] - Math.max(0, first - lo), xRange[1] + Math.max(0, hi - last)];
    });
    this._rows = new WeakMap(); // series -> its rows, with what they were computed from
    this._problemsByRun = memo((runs, health, series) => {
      const byRun = new Map();
      for (const info of runs || []) {
        const loaded = series.get(info.run);
        const seriesProblems = loaded && !(loaded instanceof Error) ? loaded.problems : [];
        byRun.set(info.run, mergeProblems(info.problems, decodeProblems(health?.get(info.run)?.problems), seriesProblems));
      }
      return byRun;
    });
    this._urlData = null;
    this._openedOnce = false;
    this.store.subscribe((state) => this._render(state));
    this._render(this.store.state);
  }

  /** Restores the view the URL keeps, follows the host's theme and reloads, and loads the data. */
  start() {
    this.host.watchTheme((dark) => {
      applyTheme(dark);
      this.store.update({theme: dark ? 'dark' : 'light'});
    });
    this.store.update(decodeView(this.host.urlData()));
    this.refresh(false);
    if (this.host.insideTensorBoard) {
      // TensorBoard's reload button and auto-reload refresh the tab: it has no timer of its own there.
      this.host.onReload(() => this.refresh(true));
    } else {
      setInterval(() => {
        const recent = Date.now() - this._lastRefreshAt < REFRESH_INTERVAL_MS / 2;
        if (this.store.state.autoRefresh && !recent && document.visibilityState !== 'hidden') this.refresh(true);
      }, REFRESH_INTERVAL_MS);
    }
    let resizeTimer = null;
    window.addEventListener('resize', () => {
      clearTimeout(resizeTimer);
      resizeTimer = setTimeout(() => {
        // A wider plot (or a denser screen) deserves more points; a narrower one keeps what it has until the next load.
        const {runs, maxPoints} = this.store.state;
        if (runs && maxPoints !== null && this._requestPoints() > maxPoints) this._loadSeries(false);
      }, RESIZE_SETTLE_MS);
    });
  }

  /**
   * Fetches runs, diagnosis and the selected series; `fresh` refetches cached series too.
   *
   * The run list and the charts are drawn as soon as their data arrives; the diagnosis (the
   * slowest route) fills in its badges and cards when it comes. A refresh asked for while one
   * is under way runs once that one is done.
   */
  async refresh(fresh) {
    if (this._refreshing) {
      this._refreshAgain = true;
      return;
    }
    this._refreshing = true;
    this._lastRefreshAt = Date.now();
    this.store.update({busy: true});
    this.model.health().then((health) => {
      if (health) this.store.update({health: health.entries, healthError: health.error});
    });
    try {
      const runs = await this.model.runs();
      if (runs === null) return;
      this.store.update({runs, fatalError: null, ...this._reconciled(runs)});
      if (runs.length) await this._loadSeries(fresh);
      this._stamp();
    } catch (error) {
      this.store.update({fatalError: error, seriesLoading: false, status: 'Update failed'});
    } finally {
      this._refreshing = false;
      this.store.update({busy: false});
      if (this._refreshAgain) {
        this._refreshAgain = false;
        this.refresh(true);
      }
    }
  }

  /** Loads the selected runs' series of the chosen statistic (from the cache unless `fresh`). */
  async _loadSeries(fresh) {
    const state = this.store.state;
    if (!state.runs) return;
    const stat = state.stat;
    const runs = this._selectedRuns(state.runs, state.selected).filter((info) => info.stats.includes(stat)).map((info) => info.run);
    const withLoss = this._selectedRuns(state.runs, state.selected).filter((info) => info.scalars.includes(LOSS)).map((info) => info.run);
    const maxPoints = this._requestPoints();
    this.store.update({seriesLoading: true});
    const [loaded, losses] = await Promise.all([
      this.model.series(runs, stat, maxPoints, fresh),
      this.model.series(withLoss, LOSS, maxPoints, fresh, LOSS),
    ]);
    if (loaded === null || losses === null) return; // a newer load is under way
    // Unchanged series keep their objects (and maps): the charts see by identity that there is nothing to redraw.
    const same = (before, after) => before.size === after.size && [...after].every(([run, s]) => before.get(run) === s);
    const current = this.store.state;
    this.store.update({
      series: current.seriesStat === stat && same(current.series, loaded) ? current.series : loaded,
      losses: same(current.losses, losses) ? current.losses : losses,
      seriesStat: stat,
      maxPoints,
      seriesLoading: false,
    });
    this._openAtOnset();
  }

  /**
   * On the first series shown, zooms to the onset when every run turned non-finite early (its
   * finite part would otherwise be a few pixels at the left edge), unless the user chose a range.
   */
  _openAtOnset() {
    const state = this.store.state;
    const view = this._viewOf(state);
    if (this._openedOnce || view.loaded.length === 0) return;
    this._openedOnce = true;
    if (state.xRange !== null || !cutShort(view.loaded, view.scales.x)) return;
    const ranges = view.loaded.map(onsetRange);
    const onset = Math.min(...view.loaded.map((series) => series.steps[series.nonFinite[0]]));
    this.store.update({xRange: [Math.min(...ranges.map((r) => r[0])), Math.max(...ranges.map((r) => r[1]))], step: onset});
  }

  /** Returns the series resolution for the plots as wide as they can be now (one run across the whole main area). */
  _requestPoints() {
    return requestPoints(this.shell.main.clientWidth, window.devicePixelRatio || 1);
  }

  /** Returns the selection and statistic made valid for `runs`. */
  _reconciled(runs) {
    const state = this.store.state;
    const names = new Set(runs.map((info) => info.run));
    let selected = state.selected.filter((run) => names.has(run));
    let selectionInitialized = state.selectionInitialized;
    if (!selectionInitialized && runs.length) {
      selected = runs.slice(0, MAX_DEFAULT_SELECTED).map((info) => info.run);
      selectionInitialized = true;
    }
    if (selected.length === 0 && runs.length) selected = [runs[0].run];
    const stats = allStats(runs);
    const stat = stats.includes(state.stat) ? state.stat : stats.includes(DEFAULT_STAT) ? DEFAULT_STAT : stats[0] || DEFAULT_STAT;
    return {selected: sameItems(selected, state.selected) ? state.selected : selected, selectionInitialized, stat};
  }

  /**
   * Selects layer `name` everywhere (or unselects it when it is selected): its groups open, its
   * heatmap row shows at a readable height, its line is drawn.
   */
  _focus(name) {
    const state = this.store.state;
    if (state.focus === name) {
      this.store.update({focus: null});
      return;
    }
    const view = this._viewOf(state);
    const collapsed = new Set(state.collapsed);
    for (const series of view.loaded) {
      const j = series.layers.indexOf(name);
      if (j >= 0) for (const key of groupsHolding(series.layers, view.kindsOf(series), state.groupBy, j)) collapsed.delete(key);
    }
    this.store.update({focus: name, collapsed, rowZoom: 'rows'});
  }

  _stamp() {
    const time = new Date().toLocaleTimeString([], {hour: '2-digit', minute: '2-digit', second: '2-digit'});
    this.store.update({status: `Updated ${time}`});
  }

  /** Returns what the panels draw from: `state` and what follows from it, computed once per change of its inputs. */
  _viewOf(state) {
    const runs = this._selectedRuns(state.runs, state.selected);
    const stat = state.seriesStat ?? state.stat;
    const series = state.series;
    const loaded = this._loaded(runs, series);
    const scales = this._scales(loaded, state.logY);
    const xRange = this._xRange(state.xRange, scales);
    const health = state.health;
    const infoOf = new Map(runs.map((info) => [info.run, info]));
    const kindsOf = (series) => layerKinds(series, infoOf.get(series.run));
    return {
      state,
      stat,
      runs,
      loaded,
      scales,
      colour: this._colour(scales.colour.lo, scales.colour.hi),
      xRange,
      heatmapRange: this._heatmapRange(xRange, scales, this._cellExtent(loaded)),
      step: state.step ?? (loaded.length ? scales.x[1] : null),
      stepPinned: state.step !== null,
      /** Returns a run's /health entry; null while the diagnosis is loading, undefined if it has none. */
      healthOf: (run) => (health === null ? null : health.get(run)),
      /** Returns a run's training loss series, or null when it has none (or it could not be read). */
      lossOf: (run) => {
        const loss = state.losses.get(run);
        return loss && !(loss instanceof Error) ? loss : null;
      },
      /** Returns each layer's kind of a series, or null when the run recorded none. */
      kindsOf,
      /** Returns the rows of a series' heatmap and profile: {rows, spans} (layers.layerRows). */
      rowsOf: (series) => {
        const inputs = [state.groupBy, state.collapsed, state.kind, infoOf.get(series.run)];
        const cached = this._rows.get(series);
        if (cached && cached.inputs.every((input, i) => input === inputs[i])) return cached.result;
        const result = layerRows(series.layers, kindsOf(series), {groupBy: state.groupBy, collapsed: state.collapsed, kind: state.kind});
        this._rows.set(series, {inputs, result});
        return result;
      },
      /** Returns what a run's chart cells show: {series} or {message, error}. */
      content: (info) => {
        if (!info.stats.includes(stat)) return {message: `This run has no “${stat}” statistic.`};
        const loadedSeries = series.get(info.run);
        if (loadedSeries === undefined) return {message: 'Loading…'};
        if (loadedSeries instanceof Error) return {message: loadedSeries.message, error: true};
        return {series: loadedSeries};
      },
    };
  }

  _render(state) {
    const view = this._viewOf(state);
    this.shell.render(state, allStats(state.runs));
    this._renderSidebar(state);
    this.shell.showError(this._errorText(state));
    this._renderMain(state, view);
    this._keepInUrl(state);
    document.body.dataset.state = this._pageState(state);
    // The charts alone, whatever the diagnosis: for scripts that time them.
    document.body.dataset.charts = state.runs !== null && !state.seriesLoading && state.seriesStat !== null ? 'drawn' : 'loading';
  }

  /** Writes what the user chose into the URL, once the data it refers to has loaded (before, the URL is what is being restored). */
  _keepInUrl(state) {
    if (state.runs === null) return;
    const data = JSON.stringify(encodeView(state));
    if (data === this._urlData) return;
    this._urlData = data;
    this.host.writeUrlData(JSON.parse(data));
  }

  _renderSidebar(state) {
    if (!state.runs) return;
    const problems = this._problemsByRun(state.runs, state.health, state.series);
    const problemsKey = JSON.stringify([...problems]);
    const key = [state.runs, state.health, state.selected, problemsKey];
    // Redrawing the run list would take the keyboard focus off its checkboxes: only when it changed.
    if (this._sidebarKey && key.every((part, i) => part === this._sidebarKey[i])) return;
    this._sidebarKey = key;
    renderRunList(this.shell.runList, state.runs, state.health, state.selected, problems, this.actions.toggleRun);
    renderNotices(this.shell.notices, problems);
  }

  _errorText(state) {
    const problems = [];
    if (state.fatalError) problems.push(state.fatalError.message || String(state.fatalError));
    else if (state.healthError) problems.push(`Diagnosis unavailable: ${state.healthError.message}`);
    for (const series of state.series.values()) if (series instanceof Error) problems.push(series.message);
    return problems.join(' · ') || null;
  }

  _renderMain(state, view) {
    let shows = 'panels';
    if (state.runs === null) shows = state.fatalError ? 'failed' : 'nothing';
    else if (state.runs.length === 0) shows = 'empty';
    if (shows !== this._mainShows) {
      this._mainShows = shows;
      if (shows !== 'panels') for (const panel of this.panels) panel.destroy();
      const main = this.shell.main;
      if (shows === 'failed') main.replaceChildren(el('div', {class: 'empty-state', text: 'The tab could not load its data.'}));
      else if (shows === 'empty') main.replaceChildren(emptyState());
      else if (shows === 'nothing') main.replaceChildren();
      else main.replaceChildren(...this.panels.map((panel) => panel.element));
    }
    // Panels are drawn once in the page, so their charts can measure their width.
    if (shows === 'panels') for (const panel of this.panels) panel.render(state, view);
  }

  /** Returns the page's state for scripts and tests: loading, ready (nothing in flight, all drawn), empty or error. */
  _pageState(state) {
    if (state.fatalError) return 'error';
    if (state.runs === null) return 'loading';
    if (state.runs.length === 0) return 'empty';
    if (state.health === null || state.seriesLoading || state.busy) return 'loading';
    return 'ready';
  }
}
