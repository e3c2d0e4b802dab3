// Colours of the tab: the value colour map (log10 scale), the special cells, and the per-layer line colours.

// Viridis (perceptually uniform, readable in grey and by most colour-blind readers),
// sampled at nine points and interpolated linearly in between.
const VIRIDIS = [
  [68, 1, 84], [71, 44, 122], [59, 81, 139], [44, 113, 142], [33, 144, 141],
  [39, 173, 129], [92, 200, 99], [170, 220, 50], [253, 231, 37],
];

// Non-finite cells must not be confused with any viridis colour: saturated red.
export const NONFINITE_RGB = [228, 26, 28];
// Exact zeros have no log10; a light grey reads as "nothing flowed here".
export const ZERO_RGB = [205, 205, 210];
export const NONFINITE_CSS = rgbCss(NONFINITE_RGB);
export const ZERO_CSS = rgbCss(ZERO_RGB);

// Distinct line colours for layers in model order (Tableau 10, then repeated darker).
const LAYER_COLOURS = [
  '#4e79a7', '#f28e2b', '#59a14f', '#e15759', '#76b7b2',
  '#edc948', '#b07aa1', '#ff9da7', '#9c755f', '#bab0ac',
];

/** Returns `[r, g, b]` for `t` in [0, 1] on the value colour map (clamped). */
export function viridis(t) {
  const clamped = Math.min(1, Math.max(0, Number.isFinite(t) ? t : 0));
  const position = clamped * (VIRIDIS.length - 1);
  const index = Math.min(VIRIDIS.length - 2, Math.floor(position));
  const fraction = position - index;
  const a = VIRIDIS[index];
  const b = VIRIDIS[index + 1];
  return [0, 1, 2].map((k) => Math.round(a[k] + (b[k] - a[k]) * fraction));
}

// The value colour map sampled at this many steps, for drawing many cells quickly (finer than the eye can tell).
const LUT_SIZE = 256;
const LUT = new Uint8Array(LUT_SIZE * 3);
for (let i = 0; i < LUT_SIZE; i++) LUT.set(viridis(i / (LUT_SIZE - 1)), i * 3);

/**
 * Writes the colour of a finite positive `value` on the shared scale into `pixels` at byte `offset` (r, g, b, then 255).
 *
 * The same colours as `valueRgb` to within one step of 256 along the map, with no allocation:
 * for images of many cells.
 */
export function writeValueColour(pixels, offset, value, lo, hi) {
  const span = hi - lo;
  const t = span > 0 ? (Math.log10(value) - lo) / span : 0.5;
  const i = 3 * Math.round(Math.min(1, Math.max(0, Number.isFinite(t) ? t : 0)) * (LUT_SIZE - 1));
  pixels[offset] = LUT[i];
  pixels[offset + 1] = LUT[i + 1];
  pixels[offset + 2] = LUT[i + 2];
  pixels[offset + 3] = 255;
}

/**
 * Returns the `[r, g, b]` of a value on the shared colour scale.
 *
 * @param {number} value the raw value
 * @param {number} lo log10 of the value at the bottom of the scale
 * @param {number} hi log10 of the value at the top of the scale
 */
export function valueRgb(value, lo, hi) {
  if (!Number.isFinite(value)) return NONFINITE_RGB;
  if (value <= 0) return ZERO_RGB;
  const span = hi - lo;
  return viridis(span > 0 ? (Math.log10(value) - lo) / span : 0.5);
}

/** Returns a CSS colour string of `[r, g, b]`. */
export function rgbCss(rgb) {
  return `rgb(${rgb[0]}, ${rgb[1]}, ${rgb[2]})`;
}

/** Returns the line colour of the layer at `index` in model order. */
export function layerColour(index) {
  return LAYER_COLOURS[index % LAYER_COLOURS.length];
}
