// Every request of the tab: fetching the plugin's routes, decoding, caching, and dropping stale responses.

import {decodeNumber} from './format.js';

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
 * Routes are siblings of this module (`.../data/plugin/gradient_health/index.js`), so resolving
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
  } catch (error) {
    body = null;
  }
  if (!response.ok) {
    const detail = (body && body.error && body.error.message) || text.trim().slice(0, 300) || response.statusText;
    throw new RequestError(`/${route} failed (HTTP ${response.status}): ${detail}`, response.status);
  }
  if (body === null) throw new RequestError(`/${route} answered with something that is not JSON`, response.status);
  return body;
}

/**
 * Returns one statistic of one run in the form the views draw from.
 *
 * `columns[j][i]` is layer j at step i (NaN and ±Infinity restored from their JSON strings);
 * `nonFinite` lists the step indices where any layer is NaN or infinite; `totalSteps` is how many
 * steps the server holds (more than `steps.length` when it downsampled); `problems` lists what it
 * skipped reading this statistic.
 */
export function decodeSeries(body) {
  const layers = body.layers.map(String);
  const steps = Float64Array.from(body.steps);
  const columns = layers.map(() => new Float64Array(steps.length));
  const nonFinite = [];
  let finiteMin = Infinity;
  let finiteMax = -Infinity;
  let positiveMin = Infinity;
  for (let i = 0; i < steps.length; i++) {
    const row = body.values[i];
    let rowNonFinite = false;
    for (let j = 0; j < layers.length; j++) {
      const value = decodeNumber(row[j]);
      columns[j][i] = value;
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
  const last = steps.length - 1;
  return {
    run: String(body.run),
    stat: String(body.stat),
    layers,
    steps,
    wallTimes: Float64Array.from(body.wall_times),
    columns,
    nonFinite,
    totalSteps: Number.isFinite(body.total_steps) ? Math.max(steps.length, body.total_steps) : steps.length,
    problems: decodeProblems(body.problems),
    finiteMin,
    finiteMax,
    positiveMin,
    // Equal signatures mean nothing new arrived since the last fetch.
    signature: `${steps.length}:${last >= 0 ? steps[last] : ''}:${last >= 0 ? body.wall_times[last] : ''}`,
  };
}

/** Returns a route's `problems` list as [{tag, message}] of strings (an absent or odd list is empty). */
export function decodeProblems(problems) {
  if (!Array.isArray(problems)) return [];
  return problems
    .filter((problem) => problem && typeof problem === 'object')
    .map((problem) => ({tag: String(problem.tag ?? ''), message: String(problem.message ?? '')}));
}

/** Fetches and caches the tab's data; each view load gets a token, and loads overtaken by a newer one are dropped. */
export class Model {
  constructor() {
    this._generation = 0;
    this._series = new Map();
    this._maxPoints = null;
  }

  /** Starts a view load: every load begun earlier becomes stale. */
  begin() {
    this._generation += 1;
    return this._generation;
  }

  /** Whether `token` belongs to the newest load (otherwise its responses must not be shown). */
  isCurrent(token) {
    return token === this._generation;
  }

  /** Returns the /runs entries, or null when a newer load began meanwhile. */
  async runs(token) {
    const body = await getJson('runs');
    return this.isCurrent(token) ? body.runs || [] : null;
  }

  /**
   * Returns {entries: Map run -> /health entry, error}.
   *
   * Never throws: a failing /health is reported in `error`, since runs and charts remain useful
   * without the diagnosis (which is also the slowest route, so it is not waited for).
   */
  async health() {
    let body = null;
    let error = null;
    try {
      body = await getJson('health');
    } catch (caught) {
      error = caught;
    }
    const entries = new Map();
    for (const entry of (body && body.runs) || []) entries.set(String(entry.run), entry);
    return {entries, error};
  }

  /**
   * Returns a Map run -> decoded series or RequestError, or null when a newer load began meanwhile.
   *
   * `maxPoints` is the route's `max_points` (steps per series; the server keeps every extreme
   * and non-finite step beyond it). With `fresh`, cached series are fetched again; a series whose
   * signature did not change keeps its cached object, so views can tell by identity that there is
   * nothing to redraw.
   */
  async series(token, runs, stat, maxPoints, fresh) {
    // Series of another resolution will not be asked for again until the view changes back.
    if (maxPoints !== this._maxPoints) this._series.clear();
    this._maxPoints = maxPoints;
    const results = await Promise.all(
      runs.map((run) => this._oneSeries(run, stat, maxPoints, fresh).catch((error) => error)),
    );
    if (!this.isCurrent(token)) return null;
    return new Map(runs.map((run, i) => [run, results[i]]));
  }

  async _oneSeries(run, stat, maxPoints, fresh) {
    const key = JSON.stringify([run, stat, maxPoints]);
    const cached = this._series.get(key);
    if (cached && !fresh) return cached;
    const decoded = decodeSeries(await getJson('series', {run, stat, max_points: String(maxPoints)}));
    if (cached && cached.signature === decoded.signature) return cached;
    this._series.set(key, decoded);
    return decoded;
  }
}
