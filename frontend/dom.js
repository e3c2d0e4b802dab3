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

/** Returns `text` cut to fit `maxWidth` pixels in the context's font, ending in an ellipsis when cut. */
export function fitText(context, text, maxWidth) {
  if (context.measureText(text).width <= maxWidth) return text;
  let lo = 0;
  let hi = text.length;
  while (lo < hi) {
    const mid = (lo + hi + 1) >> 1;
    if (context.measureText(text.slice(0, mid) + '…').width <= maxWidth) lo = mid;
    else hi = mid - 1;
  }
  return text.slice(0, lo) + '…';
}
