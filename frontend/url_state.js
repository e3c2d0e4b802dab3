// The part of the view state kept in the URL: what the user chose, as short strings, and back.

const GROUPINGS = ['path', 'kind', 'none'];
const ROW_ZOOMS = ['fit', 'rows'];

function list(text) {
  try {
    const value = JSON.parse(text);
    return Array.isArray(value) ? value.map(String) : null;
  } catch {
    return null;
  }
}

function number(text) {
  const value = Number(text);
  return text !== '' && Number.isFinite(value) ? value : null;
}

/** Returns the URL data ({key: string}) of what the user chose in `state`; defaults are left out. */
export function encodeView(state) {
  const data = {};
  if (state.selectionInitialized) data.runs = JSON.stringify(state.selected);
  data.stat = state.stat;
  if (!state.logY) data.log = '0';
  if (state.smoothing) data.smoothing = String(state.smoothing);
  if (state.xRange) data.steps = `${state.xRange[0]}:${state.xRange[1]}`;
  if (state.step !== null) data.step = String(state.step);
  if (state.filter) data.filter = state.filter;
  if (state.focus !== null) data.layer = state.focus;
  if (state.groupBy !== 'path') data.group = state.groupBy;
  if (state.collapsed.size) data.collapsed = JSON.stringify([...state.collapsed]);
  if (state.kind) data.kind = state.kind;
  if (state.rowZoom !== 'fit') data.rows = state.rowZoom;
  if (state.hiddenLayers.size) data.hidden = JSON.stringify([...state.hiddenLayers]);
  return data;
}

/**
 * Returns the view state patch that URL data ({key: string}) asks for; what does not parse is left as it is.
 *
 * Runs and statistics are checked against the data once it loads (a link may name a run that is gone).
 */
export function decodeView(data) {
  const patch = {};
  const runs = data.runs === undefined ? null : list(data.runs);
  if (runs) {
    patch.selected = runs;
    patch.selectionInitialized = true;
  }
  if (typeof data.stat === 'string' && data.stat) patch.stat = data.stat;
  if (data.log === '0') patch.logY = false;
  const smoothing = number(data.smoothing ?? '');
  if (smoothing !== null && smoothing >= 0 && smoothing < 1) patch.smoothing = smoothing;
  const [low, high] = String(data.steps ?? '').split(':').map(number);
  if (low !== null && high !== null && low !== undefined && high !== undefined && high > low) patch.xRange = [low, high];
  const step = number(data.step ?? '');
  if (step !== null) patch.step = step;
  if (typeof data.filter === 'string') patch.filter = data.filter;
  if (typeof data.layer === 'string' && data.layer) patch.focus = data.layer;
  if (GROUPINGS.includes(data.group)) patch.groupBy = data.group;
  const collapsed = data.collapsed === undefined ? null : list(data.collapsed);
  if (collapsed) patch.collapsed = new Set(collapsed);
  if (typeof data.kind === 'string' && data.kind) patch.kind = data.kind;
  if (ROW_ZOOMS.includes(data.rows)) patch.rowZoom = data.rows;
  const hidden = data.hidden === undefined ? null : list(data.hidden);
  if (hidden) patch.hiddenLayers = new Set(hidden);
  return patch;
}
