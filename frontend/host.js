// Where the tab lives: inside TensorBoard's page (its reload, its dark mode, its URL) or opened on its own.

// TensorBoard's plugin host protocol (tensorboard/components/experimental/plugin_util): the
// iframe posts this string with a MessagePort to its parent; messages {type, id, payload, error,
// isReply} then come through the port, and each gets a reply with its id.
const BOOTSTRAP_MESSAGE = 'experimental.bootstrap';
const DATA_RELOADED = 'experimental.DataReloaded';
// TensorBoard keeps a plugin's URL data in its own URL's hash as `p.<plugin>.<key>=<value>`.
const URL_DATA_PREFIX = 'p.gradient_health.';
// TensorBoard marks its dark mode with this class on its page's body.
const DARK_MODE_CLASS = 'dark-mode';
// Browsers refuse too many history changes in a burst: URL writes wait for the view to settle.
const URL_WRITE_DELAY_MS = 250;

/** Returns `hash` (without '#') as a Map of its `&`-separated `key=value` pairs, decoded. */
function parseHash(hash) {
  const pairs = new Map();
  for (const part of hash.replace(/^#/, '').split('&')) {
    const at = part.indexOf('=');
    if (at < 0) {
      if (part) pairs.set(part, null);
      continue;
    }
    try {
      pairs.set(decodeURIComponent(part.slice(0, at)), decodeURIComponent(part.slice(at + 1)));
    } catch {
      // A pair that does not decode is not ours to read.
    }
  }
  return pairs;
}

/** Returns `pairs` as a hash (without '#'); a key without a value (TensorBoard's tab name) stays bare. */
function formatHash(pairs) {
  return [...pairs].map(([key, value]) => (value === null ? encodeURIComponent(key) : `${encodeURIComponent(key)}=${encodeURIComponent(value)}`)).join('&');
}

/** Returns the page of TensorBoard around the tab, or null outside it (or when a foreign page frames the tab). */
function tensorBoardWindow() {
  if (window.parent === window) return null;
  try {
    // Reading the parent's document throws unless the parent is of our own origin.
    return window.parent.document ? window.parent : null;
  } catch {
    return null;
  }
}

/**
 * The page the tab runs in.
 *
 * Inside TensorBoard: its reload refreshes the tab, its dark mode is the tab's, and the view
 * state is kept in TensorBoard's own URL (`#gradient_health&p.gradient_health.stat=...`), where
 * TensorBoard keeps plugins' URL data, so a reload or a shared link restores it. The tab reads and
 * writes those keys itself (it is served from TensorBoard's origin): the plugin host offers no
 * call to write them, and its call to read them (`experimental.GetURLPluginData`) answers from
 * what it parsed at the last change of the hash, which is nothing after a fresh page load.
 * Opened on its own: the browser's colour scheme, and the tab's own URL hash.
 */
export class Host {
  constructor() {
    this._parent = tensorBoardWindow();
    this.insideTensorBoard = this._parent !== null;
    this._port = null;
    this._onReload = () => {};
    this._writeTimer = null;
    if (this.insideTensorBoard) this._connect();
  }

  _connect() {
    const channel = new MessageChannel();
    this._port = channel.port1;
    this._port.onmessage = (event) => {
      let message;
      try {
        message = JSON.parse(event.data);
      } catch {
        return;
      }
      if (!message || message.isReply) return;
      if (message.type === DATA_RELOADED) this._onReload();
      this._port.postMessage(JSON.stringify({type: message.type, id: message.id, payload: null, error: null, isReply: true}));
    };
    // Only a parent of our own origin is addressed, so the port never goes to a foreign page.
    this._parent.postMessage(BOOTSTRAP_MESSAGE, window.location.origin, [channel.port2]);
  }

  /** Calls `onReload` whenever TensorBoard reloads its data (never outside TensorBoard). */
  onReload(onReload) {
    this._onReload = onReload;
  }

  /** Returns the view state kept in the URL, as {key: string}. */
  urlData() {
    const target = this.insideTensorBoard ? this._parent : window;
    const prefix = this.insideTensorBoard ? URL_DATA_PREFIX : '';
    const data = {};
    for (const [key, value] of parseHash(target.location.hash)) if (value !== null && key.startsWith(prefix)) data[key.slice(prefix.length)] = value;
    return data;
  }

  /** Keeps `data` ({key: string}) in the URL, replacing what the tab kept there before (no new history entry). */
  writeUrlData(data) {
    clearTimeout(this._writeTimer);
    this._writeTimer = setTimeout(() => {
      const target = this.insideTensorBoard ? this._parent : window;
      const prefix = this.insideTensorBoard ? URL_DATA_PREFIX : '';
      const pairs = parseHash(target.location.hash);
      for (const key of [...pairs.keys()]) if (key.startsWith(prefix) && pairs.get(key) !== null) pairs.delete(key);
      for (const [key, value] of Object.entries(data)) pairs.set(prefix + key, value);
      const url = new URL(target.location.href);
      url.hash = formatHash(pairs);
      if (url.href !== target.location.href) target.history.replaceState(target.history.state, '', url.href);
    }, URL_WRITE_DELAY_MS);
  }

  /** Calls `onTheme(dark)` now and whenever the theme changes: TensorBoard's dark mode, or the browser's colour scheme. */
  watchTheme(onTheme) {
    if (this.insideTensorBoard) {
      const body = this._parent.document.body;
      const report = () => onTheme(body.classList.contains(DARK_MODE_CLASS));
      new MutationObserver(report).observe(body, {attributes: true, attributeFilter: ['class']});
      report();
      return;
    }
    const scheme = window.matchMedia('(prefers-color-scheme: dark)');
    scheme.addEventListener('change', () => onTheme(scheme.matches));
    onTheme(scheme.matches);
  }
}
