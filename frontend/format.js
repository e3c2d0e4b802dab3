// Pure helpers of the tab: decoding the routes' numbers, formatting, smoothing and labels (no DOM, no network).

// http_util.Respond writes non-finite floats as these strings (JSON has no NaN).
const NON_FINITE_STRINGS = {NaN: NaN, Infinity: Infinity, '-Infinity': -Infinity};

const STAT_LABELS = {
  grad_norm: 'Gradient norm (L2, per layer)',
  grad_norm_max: 'Largest gradient norm since the previous logged step',
  grad_max_abs: 'Largest |gradient| element',
  nonfinite: 'Non-finite gradient elements (count)',
  weight_norm: 'Weight norm (L2)',
  update_ratio: 'Update ratio ||Δw|| / ||w||',
};

export const VERDICT_LABELS = {
  healthy: 'Healthy',
  vanishing: 'Vanishing',
  exploding: 'Exploding',
  nonfinite: 'Non-finite',
  dead: 'Dead layers',
  unreadable: 'Unreadable',
};

/** Returns the number a route sent: a JSON number, or one of "NaN", "Infinity", "-Infinity". */
export function decodeNumber(value) {
  if (typeof value === 'number') return value;
  if (typeof value === 'string' && value in NON_FINITE_STRINGS) return NON_FINITE_STRINGS[value];
  return NaN;
}

/** Returns a short human reading of a value: NaN, +Inf, -Inf, 0 or 3 significant digits. */
export function formatValue(value) {
  if (value === null || value === undefined) return '–';
  if (Number.isNaN(value)) return 'NaN';
  if (value === Infinity) return '+Inf';
  if (value === -Infinity) return '−Inf';
  if (value === 0) return '0';
  const magnitude = Math.abs(value);
  if (magnitude >= 1e4 || magnitude < 1e-3) return value.toExponential(2).replace('e+', 'e');
  return String(Number(value.toPrecision(3)));
}

/** Returns a power of ten as a compact axis label, e.g. 1e-3, 0.01, 1, 100, 1e4. */
export function formatPowerOfTen(exponent) {
  if (exponent >= -2 && exponent <= 3) return String(10 ** exponent);
  return '1e' + exponent;
}

/** Returns a step number with thousands separators. */
export function formatStep(step) {
  return Number(step).toLocaleString('en-US');
}

/** Returns the readable label of a statistic; user-defined ones keep their name. */
export function statLabel(stat) {
  return STAT_LABELS[stat] || stat;
}

/** Returns the label of a verdict or finding kind. */
export function verdictLabel(verdict) {
  return VERDICT_LABELS[verdict] || verdict;
}

/**
 * Returns `values` smoothed by a debiased exponential moving average (TensorBoard's scalar smoothing).
 *
 * Non-finite values are skipped (their output is null, so the line breaks there and the
 * non-finite marks stay visible). With `logSpace`, positive values are averaged as log10 so a
 * spike of several orders of magnitude does not flatten everything after it; non-positive values
 * then have no place on the axis and come out as null.
 */
export function smooth(values, weight, logSpace) {
  const out = new Array(values.length);
  let last = 0;
  let count = 0;
  for (let i = 0; i < values.length; i++) {
    const raw = values[i];
    const usable = Number.isFinite(raw) && (!logSpace || raw > 0);
    if (!usable) {
      out[i] = null;
      continue;
    }
    const x = logSpace ? Math.log10(raw) : raw;
    if (weight <= 0) {
      out[i] = raw;
      continue;
    }
    last = last * weight + (1 - weight) * x;
    count++;
    const debiased = last / (1 - weight ** count);
    out[i] = logSpace ? 10 ** debiased : debiased;
  }
  return out;
}

/** Returns the index of the last element of the sorted `array` that is <= `value`, or -1. */
export function lastIndexAtOrBefore(array, value) {
  let lo = 0;
  let hi = array.length - 1;
  let found = -1;
  while (lo <= hi) {
    const mid = (lo + hi) >> 1;
    if (array[mid] <= value) {
      found = mid;
      lo = mid + 1;
    } else {
      hi = mid - 1;
    }
  }
  return found;
}

/** Returns the index of the element of the sorted `array` nearest to `value`, or -1 if empty. */
export function nearestIndex(array, value) {
  if (array.length === 0) return -1;
  const before = lastIndexAtOrBefore(array, value);
  if (before < 0) return 0;
  if (before === array.length - 1) return before;
  return value - array[before] <= array[before + 1] - value ? before : before + 1;
}

/** Returns the note of a series the server downsampled (`shown` of `total` steps), or null when it sent every step. */
export function reductionNote(shown, total) {
  if (!(shown < total)) return null;
  return `${formatStep(shown)} of ${formatStep(total)} steps shown; each layer's extremes and every NaN/Inf step are kept`;
}

// PageUp / PageDown move the picked step by this share of the logged steps.
const PAGE_FRACTION = 0.1;

/**
 * Returns the step a key picks from `current` among the sorted `steps`, or null for a key that picks none.
 *
 * Arrows go to the previous or next logged step, PageUp/PageDown a tenth of them further, Home
 * and End to the first and the last.
 */
export function stepForKey(key, steps, current) {
  const n = steps.length;
  if (n === 0) return null;
  const at = current === null || current === undefined ? n - 1 : Math.max(0, lastIndexAtOrBefore(steps, current));
  const page = Math.max(1, Math.round(n * PAGE_FRACTION));
  const moves = {ArrowLeft: -1, ArrowDown: -1, ArrowRight: 1, ArrowUp: 1, PageDown: -page, PageUp: page};
  if (key === 'Home') return steps[0];
  if (key === 'End') return steps[n - 1];
  if (!(key in moves)) return null;
  return steps[Math.min(n - 1, Math.max(0, at + moves[key]))];
}
