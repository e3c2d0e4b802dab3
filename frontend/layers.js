// What a run's many layers reduce to for the charts: the spread over layers per step, and the layers worth a line.

// Up to this many layers, every layer is drawn as a line (no spread band): they stay readable.
export const ALL_LINES_MAX = 12;
// Never more lines than this in one chart, whatever the filter matches: hovering stays quick and the lines legible.
export const MAX_LINES = 40;
// Layers that moved the most (see `movers`) drawn by default next to the first and last layer.
const DEFAULT_MOVERS = 3;
// Layers with NaN/Inf drawn by default, earliest onset first.
const DEFAULT_NONFINITE = 3;
// The share of a layer's recorded steps at each end compared to tell how far it moved.
const MOVER_END_FRACTION = 0.1;

/** Returns the k-th smallest of `values[0..count)` (reorders them; Hoare's selection, linear on average). */
function select(values, count, k) {
  let lo = 0;
  let hi = count - 1;
  while (lo < hi) {
    const pivot = values[(lo + hi) >> 1];
    let i = lo;
    let j = hi;
    while (i <= j) {
      while (values[i] < pivot) i++;
      while (values[j] > pivot) j--;
      if (i <= j) {
        const swap = values[i];
        values[i] = values[j];
        values[j] = swap;
        i++;
        j--;
      }
    }
    if (k <= j) hi = j;
    else if (k >= i) lo = i;
    else return values[k];
  }
  return values[k];
}

/**
 * Returns the spread over `layerIndices` of `series` per step: {min, median, max}, arrays with null where no value counts.
 *
 * Only finite recorded values count; with `positiveOnly` (a log scale) only positive ones.
 */
export function spread(series, layerIndices, positiveOnly) {
  const n = series.steps.length;
  const {values, missing} = series;
  const min = new Array(n).fill(null);
  const median = new Array(n).fill(null);
  const max = new Array(n).fill(null);
  const scratch = new Float64Array(layerIndices.length);
  for (let i = 0; i < n; i++) {
    let count = 0;
    let lo = Infinity;
    let hi = -Infinity;
    for (const j of layerIndices) {
      const at = j * n + i;
      const value = values[at];
      if (!Number.isFinite(value) || (missing !== null && missing[at]) || (positiveOnly && value <= 0)) continue;
      scratch[count++] = value;
      if (value < lo) lo = value;
      if (value > hi) hi = value;
    }
    if (count === 0) continue;
    min[i] = lo;
    max[i] = hi;
    median[i] = count % 2 ? select(scratch, count, count >> 1) : (select(scratch, count, count / 2 - 1) + select(scratch, count, count / 2)) / 2;
  }
  return {min, median, max};
}

/**
 * Returns every layer index with how far it moved: |log10| of its level over the last tenth of the steps
 * against the first tenth (levels are medians of the positive finite values; layers without such
 * values at both ends are left out), largest first.
 */
export function movers(series) {
  const n = series.steps.length;
  const edge = Math.max(1, Math.round(n * MOVER_END_FRACTION));
  const scratch = new Float64Array(edge);
  const level = (j, from, to) => {
    let count = 0;
    for (let i = from; i < to; i++) {
      const value = series.values[j * n + i];
      if (Number.isFinite(value) && value > 0) scratch[count++] = value;
    }
    return count ? select(scratch, count, count >> 1) : NaN;
  };
  const moved = [];
  for (let j = 0; j < series.layers.length; j++) {
    const change = Math.log10(level(j, n - edge, n) / level(j, 0, edge));
    if (Number.isFinite(change)) moved.push({j, change});
  }
  return moved.sort((a, b) => Math.abs(b.change) - Math.abs(a.change) || a.j - b.j);
}

/** Returns [{j, step}] of the layers with a NaN/Inf recorded value: the step it first has one, earliest first. */
export function nonFiniteOnsets(series) {
  const n = series.steps.length;
  const onsets = [];
  for (let j = 0; j < series.layers.length; j++) {
    for (let i = 0; i < n; i++) {
      const at = j * n + i;
      if (!Number.isFinite(series.values[at]) && (series.missing === null || !series.missing[at])) {
        onsets.push({j, step: series.steps[i]});
        break;
      }
    }
  }
  return onsets.sort((a, b) => a.step - b.step || a.j - b.j);
}

/**
 * Returns the lines a run's trend chart draws: [{j, reason}] in model order, at most MAX_LINES, and how many were asked for.
 *
 * `wanted` is [{j, reason}] of layers asked for by name (e.g. a filter's matches), drawn first;
 * without them, a run of up to ALL_LINES_MAX layers draws them all, a deeper one its first and
 * last layer, its layers with NaN/Inf and those that moved the most.
 */
export function linesToDraw(series, wanted = []) {
  const chosen = new Map();
  const add = (j, reason) => {
    if (!chosen.has(j)) chosen.set(j, reason);
  };
  for (const {j, reason} of wanted) add(j, reason);
  const count = series.layers.length;
  if (wanted.length === 0) {
    if (count <= ALL_LINES_MAX) {
      for (let j = 0; j < count; j++) add(j, 'layer');
    } else {
      add(0, 'first layer');
      add(count - 1, 'last layer');
      for (const {j} of nonFiniteOnsets(series).slice(0, DEFAULT_NONFINITE)) add(j, 'NaN/Inf');
      for (const {j} of movers(series).slice(0, DEFAULT_MOVERS)) add(j, 'moved most');
    }
  }
  const lines = [...chosen].slice(0, MAX_LINES).map(([j, reason]) => ({j, reason}));
  return {lines: lines.sort((a, b) => a.j - b.j), asked: chosen.size};
}
