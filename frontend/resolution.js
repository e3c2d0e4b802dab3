// How many steps the tab asks /series for: about one per device pixel of the widest plot, no more.

// A plot never gets fewer points than this, even in a narrow or hidden frame: zooming in still shows detail.
export const MIN_REQUEST_POINTS = 512; // steps per series
// A 4K screen at twice the pixel density is under this wide; the server's own default is 10,000.
export const MAX_REQUEST_POINTS = 8192; // steps per series

/**
 * Returns the `max_points` for plots at most `cssWidth` CSS pixels wide at `pixelRatio` device pixels per CSS pixel.
 *
 * Rounded up to a power of two so small layout changes (a scroll bar, one more run side by side)
 * keep the same value, and with it every cached series.
 */
export function requestPoints(cssWidth, pixelRatio) {
  const pixels = Math.ceil(Math.max(0, cssWidth) * (pixelRatio > 0 ? pixelRatio : 1));
  const rounded = 2 ** Math.ceil(Math.log2(Math.max(1, pixels)));
  return Math.min(MAX_REQUEST_POINTS, Math.max(MIN_REQUEST_POINTS, rounded));
}
