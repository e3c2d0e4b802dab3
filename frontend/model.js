// Every request of the tab: fetching the plugin's routes, decoding, caching, and dropping stale responses.

import {decodeNumber} from './format.js';

// Run-level statistics a server that does not list `scalars` apart still serves among `stats`.
const KNOWN_RUN_SCALARS = ['loss'];

/** A route that failed: unreachable server, HTTP error or a body that is not JSON. */
export class RequestError extends Error {
  constructor(message, status) {
    super(message);
    this.name = 'RequestError';
    this.status = status;
  }
}

/**
 * Returns the URL of a route of this plugin.
 *
 * Routes are siblings of this module (`.../data/plugin/gradient_health/model.js`), so resolving
 * against the module's own URL keeps TensorBoard's `--path_prefix` and works in or out of the iframe.
 */
export function routeUrl(route, params = {}) {
  const url = new URL('./' + route, import.meta.url);
  for (const [key, value] of Object.entries(params)) url.searchParams.set(key, value);
  return url;
}

async function getJson(route, params) {
  const url = routeUrl(route, params);
  let response;
  try {
    response = await fetch(url, {headers: {Accept: 'application/json'}, cache: 'no-store'});
  } catch (error) {
    throw new RequestError(`Could not reach TensorBoard for /${route}: ${error.message}`, 0);
  }
  const text = await response.text();
  let body = null;
  try {
    body = JSON.parse(text);
  } catch {
    body = null;
  }
  if (!response.ok) {
    const detail = body?.error?.message || text.trim().slice(0, 300) || response.statusText;
    throw new RequestError(`/${route} failed (HTTP ${response.status}): ${detail}`, response.status);
  }
  if (body === null) throw new RequestError(`/${route} answered with something that is not JSON`, response.status);
  return body;
}

/** Returns a route's `problems` as [{tag, file, message}] of strings: a skipped tag names `tag`, a broken event file `file`. */
export function decodeProblems(problems) {
  if (!Array.isArray(problems)) return [];
  return problems
    .filter((problem) => problem && typeof problem === 'object')
    .map((problem) => ({
      tag: String(problem.tag ?? ''),
      file: String(problem.file ?? ''),
      message: String(problem.message ?? ''),
    }));
}

function stringList(value) {
  return Array.isArray(value) ? value.map(String) : null;
}

/**
 * Returns one /runs entry in the form the tab uses.
 *
 * `stats` are the per-layer statistics and `scalars` the run-level ones (e.g. the loss); a server
 * that lists no `scalars` has them among `stats`. `kinds` and `params` are null when not recorded.
 */
export function decodeRun(entry) {
  const listed = stringList(entry.stats) || [];
  const scalars = stringList(entry.scalars) ?? listed.filter((stat) => KNOWN_RUN_SCALARS.includes(stat));
  let layers = stringList(entry.layers) || [];
  // Such a server also counts the run-level statistic's one name among the layers.
  if (!Array.isArray(entry.scalars)) layers = layers.filter((name) => !scalars.includes(name));
  const kinds = stringList(entry.kinds);
  return {
    run: String(entry.run),
    stats: listed.filter((stat) => !scalars.includes(stat)),
    scalars,
    layers,
    kinds: kinds && kinds.length === layers.length ? kinds : null,
    params: Array.isArray(entry.params) && entry.params.length === layers.length ? entry.params.map(Number) : null,
    maxStep: Number.isFinite(entry.max_step) ? entry.max_step : null,
    problems: decodeProblems(entry.problems),
  };
}

/**
 * Returns one statistic of one run in the form the views draw from.
 *
 * `values` holds layer j's value at step index i at `j * steps.length + i` (NaN and ±Infinity
 * restored from their JSON strings). A `null` cell (the layer was not recorded at that step) is
 * NaN in `values` and 1 in `missing` (null when every cell was recorded): never non-finite,
 * never zero. `nonFinite` lists the step indices where a recorded value is NaN or infinite;
 * `totalSteps` is how many steps the server holds (more than `steps.length` when it downsampled);
 * `problems` and `notices` are what the server skipped or wants said about this response.
 */
export function decodeSeries(body) {
  const layers = (body.layers || []).map(String);
  const steps = Float64Array.from(body.steps || []);
  const n = steps.length;
  const values = new Float64Array(layers.length * n);
  let missing = null;
  const nonFinite = [];
  let finiteMin = Infinity;
  let finiteMax = -Infinity;
  let positiveMin = Infinity;
  for (let i = 0; i < n; i++) {
    const row = body.values[i] || [];
    let rowNonFinite = false;
    for (let j = 0; j < layers.length; j++) {
      const cell = row[j];
      const at = j * n + i;
      if (cell === null || cell === undefined) {
        if (missing === null) missing = new Uint8Array(values.length);
        missing[at] = 1;
        values[at] = NaN;
        continue;
      }
      const value = decodeNumber(cell);
      values[at] = value;
      if (!Number.isFinite(value)) {
        rowNonFinite = true;
        continue;
      }
      if (value < finiteMin) finiteMin = value;
      if (value > finiteMax) finiteMax = value;
      if (value > 0 && value < positiveMin) positiveMin = value;
    }
    if (rowNonFinite) nonFinite.push(i);
  }
  const last = n - 1;
  return {
    run: String(body.run),
    stat: String(body.stat),
    scope: body.scope === 'run' ? 'run' : 'layer',
    layers,
    kinds: stringList(body.kinds),
    steps,
    wallTimes: Float64Array.from(body.wall_times || []),
    values,
    missing,
    nonFinite,
    totalSteps: Number.isFinite(body.total_steps) ? Math.max(n, body.total_steps) : n,
    problems: decodeProblems(body.problems),
    notices: stringList(body.notices) || [],
    finiteMin,
    finiteMax,
    positiveMin,
    // Equal signatures mean nothing new arrived since the last fetch.
    signature: `${n}:${last >= 0 ? steps[last] : ''}:${last >= 0 ? body.wall_times[last] : ''}`,
  };
}

/** Returns layer `j`'s values over the steps of `series` (a view, not a copy). */
export function column(series, j) {
  const n = series.steps.length;
  return series.values.subarray(j * n, (j + 1) * n);
}

/** Returns whether layer `j` was recorded at step index `i` of `series`. */
export function recorded(series, j, i) {
  return series.missing === null || series.missing[j * series.steps.length + i] === 0;
}

/**
 * Fetches and caches the tab's data.
 *
 * Each kind of request is a channel: when a newer request of the same channel began while one was
 * under way, the older one's answer (or error) is dropped and the call returns null.
 */
export class Model {
  constructor() {
    this._latest = new Map();
    this._series = new Map();
    this._maxPoints = null;
  }

  async _latestOnly(channel, load) {
    const token = (this._latest.get(channel) || 0) + 1;
    this._latest.set(channel, token);
    try {
      const value = await load();
      return this._latest.get(channel) === token ? value : null;
    } catch (error) {
      if (this._latest.get(channel) === token) throw error;
      return null;
    }
  }

  /** Returns the decoded /runs entries, or null when a newer call began meanwhile. */
  runs() {
    return this._latestOnly('runs', async () => ((await getJson('runs')).runs || []).map(decodeRun));
  }

  /**
   * Returns {entries: Map run -> /health entry, error}, or null when a newer call began meanwhile.
   *
   * A failing /health is reported in `error`, not thrown: runs and charts remain useful without
   * the diagnosis (which is also the slowest route, so it is not waited for).
   */
  health() {
    return this._latestOnly('health', async () => {
      let body = null;
      let error = null;
      try {
        body = await getJson('health');
      } catch (caught) {
        error = caught;
      }
      const entries = new Map();
      for (const entry of body?.runs || []) entries.set(String(entry.run), entry);
      return {entries, error};
    });
  }

  /**
   * Returns a Map run -> decoded series or RequestError, or null when a newer call of `channel` began meanwhile.
   *
   * `maxPoints` is the route's `max_points` (steps per series; the server keeps every extreme
   * and non-finite step beyond it). With `fresh`, cached series are fetched again; a series whose
   * signature did not change keeps its cached object, so views can tell by identity that there is
   * nothing to redraw. Per-layer statistics and run-level ones (the loss) load on channels of
   * their own, so neither drops the other.
   */
  series(runs, stat, maxPoints, fresh, channel = 'series') {
    return this._latestOnly(channel, async () => {
      // Series of another resolution will not be asked for again until the view changes back.
      if (maxPoints !== this._maxPoints) this._series.clear();
      this._maxPoints = maxPoints;
      const results = await Promise.all(
        runs.map((run) => this._oneSeries(run, stat, maxPoints, fresh).catch((error) => error)),
      );
      return new Map(runs.map((run, i) => [run, results[i]]));
    });
  }

  async _oneSeries(run, stat, maxPoints, fresh) {
    const key = JSON.stringify([run, stat, maxPoints]);
    const cached = this._series.get(key);
    if (cached && !fresh) return cached;
    const params = {run, stat, max_points: String(maxPoints)};
    // A series the server sent whole can grow by its new steps alone; it says whether it could (`partial`).
    const growing = cached && cached.steps.length === cached.totalSteps && cached.steps.length > 0;
    if (growing) params.after_step = String(cached.steps[cached.steps.length - 1]);
    const body = await getJson('series', params);
    let decoded;
    if (growing && body.partial === true) {
      // New layers (another layer set) or rows that do not follow on: fetch it whole.
      const rows = decodeSeries(body);
      decoded = rows.layers.length === cached.layers.length && rows.layers.every((name, j) => name === cached.layers[j]) ? appendSeries(cached, rows) : null;
      if (decoded === null) decoded = decodeSeries(await getJson('series', {run, stat, max_points: String(maxPoints)}));
    } else {
      decoded = decodeSeries(body);
    }
    if (cached && cached.signature === decoded.signature) return cached;
    this._series.set(key, decoded);
    return decoded;
  }
}

/**
 * Returns `series` followed by `rows` (a partial /series answer: the same layers, later steps) as one new series.
 *
 * `rows` steps not after the last of `series` are dropped (the server sends steps > after_step).
 */
export function appendSeries(series, rows) {
  const n = series.steps.length;
  const last = n ? series.steps[n - 1] : -Infinity;
  const skip = rows.steps.findIndex((step) => step > last);
  const m = skip < 0 ? 0 : rows.steps.length - skip;
  if (m === 0) return series;
  const total = n + m;
  const layers = series.layers.length;
  const values = new Float64Array(layers * total);
  const missing = series.missing || rows.missing ? new Uint8Array(layers * total) : null;
  for (let j = 0; j < layers; j++) {
    values.set(series.values.subarray(j * n, (j + 1) * n), j * total);
    values.set(rows.values.subarray(j * rows.steps.length + skip, (j + 1) * rows.steps.length), j * total + n);
    if (missing && series.missing) missing.set(series.missing.subarray(j * n, (j + 1) * n), j * total);
    if (missing && rows.missing) missing.set(rows.missing.subarray(j * rows.steps.length + skip, (j + 1) * rows.steps.length), j * total + n);
  }
  const steps = new Float64Array(total);
  steps.set(series.steps);
  steps.set(rows.steps.subarray(skip), n);
  const wallTimes = new Float64Array(total);
  wallTimes.set(series.wallTimes);
  wallTimes.set(rows.wallTimes.subarray(skip), n);
  return {
    ...series,
    steps,
    wallTimes,
    values,
    missing,
    nonFinite: [...series.nonFinite, ...rows.nonFinite.filter((i) => i >= skip).map((i) => i - skip + n)],
    totalSteps: Math.max(total, rows.totalSteps),
    problems: rows.problems,
    notices: rows.notices,
    finiteMin: Math.min(series.finiteMin, rows.finiteMin),
    finiteMax: Math.max(series.finiteMax, rows.finiteMax),
    positiveMin: Math.min(series.positiveMin, rows.positiveMin),
    signature: `${total}:${steps[total - 1]}:${wallTimes[total - 1]}`,
    // Views that drew `series` may draw only what was added.
    grownFrom: series.signature,
  };
}
