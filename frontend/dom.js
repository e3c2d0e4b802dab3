// Building DOM nodes safely: every string becomes a text node, never markup.

/**
 * Returns a new element.
 *
 * @param {string} tag element name
 * @param {object} [props] `class`, `text` (set as textContent), `title`, `data` (dataset),
 *     `style` (style properties), `attrs` (setAttribute), `on` (event listeners); anything else is
 *     assigned as a property.
 * @param {Array<Node|string|null>} [children] nodes or strings (strings become text nodes)
 */
export function el(tag, props = {}, children = []) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === undefined || value === null) continue;
    if (key === 'class') node.className = value;
    else if (key === 'text') node.textContent = String(value);
    else if (key === 'title') node.title = String(value);
    else if (key === 'data') Object.assign(node.dataset, value);
    else if (key === 'style') Object.assign(node.style, value);
    else if (key === 'attrs') for (const [name, v] of Object.entries(value)) node.setAttribute(name, String(v));
    else if (key === 'on') for (const [name, listener] of Object.entries(value)) node.addEventListener(name, listener);
    else node[key] = value;
  }
  append(node, children);
  return node;
}

/** Appends nodes and strings (as text) to `parent`, skipping null and false. */
function append(parent, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    parent.appendChild(typeof child === 'string' ? document.createTextNode(child) : child);
  }
  return parent;
}

/** Sizes a canvas for crisp drawing at the device pixel ratio; returns its 2-D context in CSS pixels. */
export function setupCanvas(canvas, width, height) {
  const ratio = window.devicePixelRatio || 1;
  canvas.width = Math.max(1, Math.round(width * ratio));
  canvas.height = Math.max(1, Math.round(height * ratio));
  canvas.style.width = width + 'px';
  canvas.style.height = height + 'px';
  const context = canvas.getContext('2d');
  context.setTransform(ratio, 0, 0, ratio, 0, 0);
  return context;
}

// Unicode's first-strong isolate and its end: a name drawn between them keeps its writing direction to itself.
const ISOLATE = '\u2068';
const END_ISOLATE = '\u2069';
// A character is at least this wide (CSS pixels): more characters than fit are cut before measuring.
const MIN_CHAR_PX = 2;

/**
 * Returns `text` cut to fit `maxWidth` pixels in the context's font (ending in an ellipsis when cut), isolated.
 *
 * The result is wrapped in a Unicode isolate, so right-to-left or direction-override characters
 * in a name never reorder the text drawn around it.
 */
export function fitText(context, text, maxWidth) {
  let shown = text.length > maxWidth / MIN_CHAR_PX ? text.slice(0, Math.ceil(maxWidth / MIN_CHAR_PX)) : text;
  if (shown === text && context.measureText(text).width <= maxWidth) return ISOLATE + text + END_ISOLATE;
  let lo = 0;
  let hi = shown.length;
  while (lo < hi) {
    const mid = (lo + hi + 1) >> 1;
    if (context.measureText(shown.slice(0, mid) + '…').width <= maxWidth) lo = mid;
    else hi = mid - 1;
  }
  shown = shown.slice(0, lo) + '…';
  return ISOLATE + shown + END_ISOLATE;
}
