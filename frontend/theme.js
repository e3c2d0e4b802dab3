// Colours and fonts for the canvases, read from the CSS variables that style the HTML, so both follow the theme.

// Canvas colour -> the CSS variable (style.css) that holds it in the current theme.
const COLOUR_VARIABLES = {
  text: '--text',
  muted: '--muted',
  label: '--label',
  grid: '--grid',
  tick: '--tick',
  axisLine: '--axis-line',
  plotBg: '--plot-bg',
  rowGap: '--card',
  marker: '--marker',
  markerHalo: '--marker-halo',
  band: '--band',
  median: '--median',
  nonfiniteText: '--nonfinite',
};

let current = null;

function read() {
  const style = getComputedStyle(document.documentElement);
  const palette = {};
  for (const [name, variable] of Object.entries(COLOUR_VARIABLES)) palette[name] = style.getPropertyValue(variable).trim();
  palette.fontFamily = style.getPropertyValue('--font-family').trim() || 'sans-serif';
  palette.smallFontPx = parseFloat(style.getPropertyValue('--font-size-small')) || 11;
  return palette;
}

/** Returns the current theme's canvas colours and fonts (read once per theme). */
export function palette() {
  if (current === null) current = read();
  return current;
}

/** Returns the canvas font of small text (axis labels, row names). */
export function smallFont() {
  const {smallFontPx, fontFamily} = palette();
  return `${smallFontPx}px ${fontFamily}`;
}

/** Switches the page to the dark or the light theme; canvases drawn afterwards use its colours. */
export function applyTheme(dark) {
  document.documentElement.dataset.theme = dark ? 'dark' : 'light';
  current = null;
}
