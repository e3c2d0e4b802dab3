// The scales shared by every selected run, so that runs side by side compare at a glance.

// Fallback scales when no selected value is finite and positive.
const FALLBACK_LOG_RANGE = [1e-3, 1];
const FALLBACK_LINEAR_RANGE = [0, 1];
// Linear value axes leave this much room above the largest value.
const LINEAR_HEADROOM = 1.05;

/** Returns the scales every selected run is drawn on: steps, values (y) and colours (log10). */
export function sharedScales(seriesList, logY) {
  let minStep = Infinity;
  let maxStep = -Infinity;
  let finiteMin = Infinity;
  let finiteMax = -Infinity;
  let positiveMin = Infinity;
  for (const s of seriesList) {
    if (s.steps.length) {
      minStep = Math.min(minStep, s.steps[0]);
      maxStep = Math.max(maxStep, s.steps[s.steps.length - 1]);
    }
    finiteMin = Math.min(finiteMin, s.finiteMin);
    finiteMax = Math.max(finiteMax, s.finiteMax);
    positiveMin = Math.min(positiveMin, s.positiveMin);
  }
  const x = Number.isFinite(minStep) ? [minStep, maxStep > minStep ? maxStep : minStep + 1] : [0, 1];
  const hasPositive = Number.isFinite(positiveMin) && finiteMax > 0;
  const colour = hasPositive
    ? {lo: Math.log10(positiveMin), hi: Math.log10(finiteMax)}
    : {lo: Math.log10(FALLBACK_LOG_RANGE[0]), hi: Math.log10(FALLBACK_LOG_RANGE[1])};
  if (colour.hi - colour.lo < 1e-9) colour.hi = colour.lo + 1;
  let y;
  if (logY) {
    if (hasPositive) {
      const lo = Math.floor(Math.log10(positiveMin));
      const hi = Math.max(lo + 1, Math.ceil(Math.log10(finiteMax)));
      y = [10 ** lo, 10 ** hi];
    } else {
      y = FALLBACK_LOG_RANGE;
    }
  } else if (Number.isFinite(finiteMin)) {
    const lo = Math.min(0, finiteMin);
    const hi = finiteMax > lo ? finiteMax * LINEAR_HEADROOM : lo + 1;
    y = [lo, hi];
  } else {
    y = FALLBACK_LINEAR_RANGE;
  }
  return {x, y, colour};
}
