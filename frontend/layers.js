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
// Layers kept per ranking of how far they moved: more than any view shows.
const MOVERS_KEPT = 10;

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

/** Returns the median of `values[0..count)` (the mean of the two middle ones for an even count; reorders them), or NaN. */
function median(values, count) {
  if (count === 0) return NaN;
  if (count % 2) return select(values, count, count >> 1);
  return (select(values, count, count / 2 - 1) + select(values, count, count / 2)) / 2;
}

/**
 * Returns the spread over `layerIndices` of `series` per step: {min, median, max}, arrays with null where no value counts.
 *
 * Only finite recorded values count; with `positiveOnly` (a log scale) only positive ones. With
 * `from`, the arrays cover the step indices from there on (the new steps of a grown series).
 */
export function spread(series, layerIndices, positiveOnly, from = 0) {
  const n = series.steps.length;
  const {values, missing} = series;
  const min = new Array(n - from).fill(null);
  const middle = new Array(n - from).fill(null);
  const max = new Array(n - from).fill(null);
  const scratch = new Float64Array(layerIndices.length);
  for (let i = from; i < n; i++) {
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
    min[i - from] = lo;
    max[i - from] = hi;
    middle[i - from] = median(scratch, count);
  }
  return {min, median: middle, max};
}

// What `movers` and `nonFiniteOnsets` found per series: several views ask for them.
const movedOf = new WeakMap();
const onsetsOf = new WeakMap();

/**
 * Returns the layers that moved the most: {byMagnitude, byGrowth}, each [{j, change}], largest first.
 *
 * A layer's change is log10 of its level over the last tenth of the steps against the first tenth
 * (levels are medians of the positive finite values; layers without such values at both ends are
 * left out). `byMagnitude` ranks by |change|, `byGrowth` the layers that grew, by change; at most
 * MOVERS_KEPT each.
 */
export function movers(series) {
  if (!movedOf.has(series)) movedOf.set(series, findMovers(series));
  return movedOf.get(series);
}

function findMovers(series) {
  const n = series.steps.length;
  const edge = Math.max(1, Math.round(n * MOVER_END_FRACTION));
  const scratch = new Float64Array(edge);
  const level = (j, from, to) => {
    let count = 0;
    for (let i = from; i < to; i++) {
      const value = series.values[j * n + i];
      if (Number.isFinite(value) && value > 0) scratch[count++] = value;
    }
    return median(scratch, count);
  };
  const changes = new Float64Array(series.layers.length);
  for (let j = 0; j < series.layers.length; j++) changes[j] = Math.log10(level(j, n - edge, n) / level(j, 0, edge));
  // Only the largest few are ever shown: kept as they come, not sorted whole.
  const magnitude = largest(changes, (change) => Math.abs(change), MOVERS_KEPT);
  const growth = largest(changes, (change) => change, MOVERS_KEPT).filter((j) => changes[j] > 0);
  return {byMagnitude: magnitude.map((j) => ({j, change: changes[j]})), byGrowth: growth.map((j) => ({j, change: changes[j]}))};
}

/** Returns the indices of the `count` largest finite `score(values[j])`, largest first (ties: lower index first). */
function largest(values, score, count) {
  const kept = [];
  for (let j = 0; j < values.length; j++) {
    const s = score(values[j]);
    if (!Number.isFinite(s)) continue;
    if (kept.length === count && s <= score(values[kept[kept.length - 1]])) continue;
    let at = kept.length;
    while (at > 0 && score(values[kept[at - 1]]) < s) at--;
    kept.splice(at, 0, j);
    if (kept.length > count) kept.pop();
  }
  return kept;
}

/** Returns [{j, step}] of the layers with a NaN/Inf recorded value: the step it first has one, earliest first. */
export function nonFiniteOnsets(series) {
  if (!onsetsOf.has(series)) onsetsOf.set(series, findOnsets(series));
  return onsetsOf.get(series);
}

function findOnsets(series) {
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
 * `wanted` is [{j, reason}] of layers asked for by name (the selected layer, a filter's matches,
 * the layers of findings), drawn first. With `defaults`, a run of up to ALL_LINES_MAX layers
 * draws them all, a deeper one its first and last layer, its layers with NaN/Inf and those that
 * moved the most.
 */
export function linesToDraw(series, wanted = [], defaults = true) {
  const chosen = new Map();
  const add = (j, reason) => {
    if (!chosen.has(j)) chosen.set(j, reason);
  };
  for (const {j, reason} of wanted) add(j, reason);
  const count = series.layers.length;
  if (defaults) {
    if (count <= ALL_LINES_MAX) {
      for (let j = 0; j < count; j++) add(j, 'layer');
    } else {
      add(0, 'first layer');
      add(count - 1, 'last layer');
      for (const {j} of nonFiniteOnsets(series).slice(0, DEFAULT_NONFINITE)) add(j, 'NaN/Inf');
      for (const {j} of movers(series).byMagnitude.slice(0, DEFAULT_MOVERS)) add(j, 'moved most');
    }
  }
  const lines = [...chosen].slice(0, MAX_LINES).map(([j, reason]) => ({j, reason}));
  return {lines: lines.sort((a, b) => a.j - b.j), asked: chosen.size};
}

// ------------------------------------------------------------ non-finite runs

// After its first NaN/Inf step the onset zoom shows half as many steps again as before it, and at least this many logged steps.
const ONSET_AFTER_FRACTION = 0.5;
const ONSET_AFTER_STEPS = 3;
// A run whose finite values end within this share of the steps shown opens zoomed to its onset.
const CUT_SHORT_FRACTION = 0.25;

/** Returns the last step at which some layer of `series` has a finite value, or null. */
export function lastFiniteStep(series) {
  const n = series.steps.length;
  for (let i = n - 1; i >= 0; i--) {
    for (let j = 0; j < series.layers.length; j++) {
      const at = j * n + i;
      if (Number.isFinite(series.values[at]) && (series.missing === null || !series.missing[at])) return series.steps[i];
    }
  }
  return null;
}

/** Returns the steps [from, to] around the first NaN/Inf step of `series` (its finite part and a little after), or null without one. */
export function onsetRange(series) {
  if (series.nonFinite.length === 0) return null;
  const steps = series.steps;
  const onset = series.nonFinite[0];
  const first = steps[0];
  const after = Math.min(steps.length - 1, onset + ONSET_AFTER_STEPS);
  const to = Math.min(steps[steps.length - 1], Math.max(steps[after], steps[onset] + (steps[onset] - first) * ONSET_AFTER_FRACTION));
  return [first, to > first ? to : first + 1];
}

/** Returns whether every run of `seriesList` turned non-finite and stopped having finite values early in [x0, x1]. */
export function cutShort(seriesList, [x0, x1]) {
  return (
    seriesList.length > 0 &&
    seriesList.every((series) => {
      if (series.nonFinite.length === 0) return false;
      const last = lastFiniteStep(series);
      return last === null || last - x0 < CUT_SHORT_FRACTION * (x1 - x0);
    })
  );
}

// ------------------------------------------------------------ depth: groups of layers, rows, filters, ranking

// The kinds of layer the data contract names, in the order their groups are listed.
export const LAYER_KINDS = ['dense', 'conv', 'normalization', 'embedding', 'attention', 'recurrent', 'other'];
// Layers listed per ranking of the "layers to look at" table.
export const RANKED = 5;
// The share of the steps at the end over which a layer's level is taken for the ranking.
const LEVEL_END_FRACTION = 0.1;
// A kind with fewer layers than this has no median of its own worth comparing with: its layers are compared with all layers.
const KIND_PEERS_MIN = 3;

/**
 * Returns the path of a layer name: its prefixes from the outermost group to the whole name.
 *
 * Names with `/` or `.` (Keras nested layers, PyTorch modules) split there; flat names such as
 * Keras's `block_3_expand_BN` or `conv2_block1_1_conv` split after each part with a digit, so
 * `block_3_expand_BN` is in group `block_3`.
 */
export function namePath(name) {
  const prefixes = [];
  if (/[/.]/.test(name)) {
    const pattern = /[/.]/g;
    let match;
    while ((match = pattern.exec(name)) !== null) if (match.index > 0) prefixes.push(name.slice(0, match.index));
  } else {
    const pattern = /_/g;
    let match;
    let from = 0;
    while ((match = pattern.exec(name)) !== null) {
      if (/\d/.test(name.slice(from, match.index))) prefixes.push(name.slice(0, match.index));
      from = match.index + 1;
    }
  }
  prefixes.push(name);
  return prefixes;
}

/** Returns each layer's kind of `series` (from the series itself or the run's /runs entry), or null when none was recorded. */
export function layerKinds(series, info) {
  if (series.kinds && series.kinds.length === series.layers.length) return series.kinds;
  if (!info?.kinds) return null;
  const byName = new Map(info.layers.map((name, j) => [name, info.kinds[j]]));
  return series.layers.map((name) => byName.get(name) ?? 'other');
}

/**
 * Returns the rows a run's heatmap and profile show, and the groups around them.
 *
 * `groupBy` is 'path' (contiguous layers sharing a name prefix), 'kind' (one group per kind of
 * layer, when `kinds` are known) or 'none'; a group whose key is in `collapsed` is one row over all
 * its layers. `kind` keeps only the layers of that kind. Returns {rows: [{layers, name, group}],
 * spans: [{key, from, to, depth, count}]}: `group` is set on a collapsed group's row ({key,
 * count}); `spans` are the expanded groups: their row ranges [from, to) and their layers.
 */
export function layerRows(layers, kinds, {groupBy = 'path', collapsed = new Set(), kind = null} = {}) {
  let indices = layers.map((name, j) => j);
  if (kind && kinds) indices = indices.filter((j) => kinds[j] === kind);
  // Without recorded kinds, grouping by kind groups by name path.
  const mode = groupBy === 'kind' && !kinds ? 'path' : groupBy;
  const rows = [];
  const spans = [];
  const leaf = (j) => rows.push({layers: [j], name: layers[j], group: null});
  const group = (key, label, members, depth, inside) => {
    if (collapsed.has(key)) {
      rows.push({layers: members, name: label, group: {key, count: members.length}});
      return;
    }
    const from = rows.length;
    inside();
    spans.push({key, label, from, to: rows.length, depth, layers: members});
  };
  if (mode === 'kind') {
    for (const each of LAYER_KINDS) {
      const members = indices.filter((j) => (LAYER_KINDS.includes(kinds[j]) ? kinds[j] : 'other') === each);
      if (members.length) group(`kind:${each}`, each, members, 0, () => members.forEach(leaf));
    }
    return {rows, spans};
  }
  if (mode !== 'path') {
    indices.forEach(leaf);
    return {rows, spans};
  }
  const paths = layers.map(namePath);
  const walk = (members, level, depth) => {
    let k = 0;
    while (k < members.length) {
      const j = members[k];
      // A name whose path ended above this level is a layer of its own here.
      if (paths[j].length <= level) {
        leaf(j);
        k++;
        continue;
      }
      const key = paths[j][level];
      let end = k + 1;
      while (end < members.length && paths[members[end]].length > level && paths[members[end]][level] === key) end++;
      const grouped = members.slice(k, end);
      k = end;
      if (grouped.length === 1) {
        leaf(j);
        continue;
      }
      // A group with one sub-group only is that sub-group: no level of nesting that tells nothing.
      let deepest = level;
      while (grouped.every((m) => paths[m].length > deepest + 2 && paths[m][deepest + 1] === paths[grouped[0]][deepest + 1])) deepest++;
      const groupKey = paths[j][deepest];
      group(groupKey, groupKey, grouped, depth, () => walk(grouped, deepest + 1, depth + 1));
    }
  };
  walk(indices, 0, 0);
  return {rows, spans};
}

/** Returns the keys of the outermost groups of `layers` (what "collapse all" collapses). */
export function topGroups(layers, kinds, groupBy) {
  return layerRows(layers, kinds, {groupBy}).spans.filter((span) => span.depth === 0).map((span) => span.key);
}

/** Returns the keys of the groups that hold layer `j` (to expand them all when it is selected). */
export function groupsHolding(layers, kinds, groupBy, j) {
  return layerRows(layers, kinds, {groupBy}).spans.filter((span) => span.layers.includes(j)).map((span) => span.key);
}

/**
 * Returns a filter of layer names from what the user typed, or null when there is nothing to filter.
 *
 * `/pattern/` is a regular expression (case-insensitive); anything else a substring, any case.
 * Returns {test(name), error}: `error` (a message) when the expression does not compile.
 */
export function layerFilter(text) {
  const typed = text.trim();
  if (!typed) return null;
  const regex = typed.length > 2 && typed.startsWith('/') && typed.endsWith('/');
  if (regex) {
    try {
      const pattern = new RegExp(typed.slice(1, -1), 'i');
      return {test: (name) => pattern.test(name), error: null};
    } catch (error) {
      return {test: () => false, error: error.message};
    }
  }
  const lower = typed.toLowerCase();
  return {test: (name) => name.toLowerCase().includes(lower), error: null};
}

/**
 * Returns each layer's level over the last tenth of the steps of `series`: the median of its
 * recorded finite values there that are not negative (a layer with no gradient has level 0), or
 * NaN when it has none (e.g. not recorded at the end).
 */
export function endLevels(series) {
  const n = series.steps.length;
  const edge = Math.max(1, Math.round(n * LEVEL_END_FRACTION));
  const scratch = new Float64Array(edge);
  return Float64Array.from(series.layers, (name, j) => {
    let count = 0;
    for (let i = n - edge; i < n; i++) {
      const value = series.values[j * n + i];
      if (Number.isFinite(value) && value >= 0) scratch[count++] = value;
    }
    return median(scratch, count);
  });
}

/**
 * Returns the layers of a run worth a look, ranked: {smallest, growth, nonfinite}, at most RANKED each.
 *
 * `smallest`: the lowest level (`endLevels`) relative to the median positive level of the layers
 * of the same kind, as [{j, ratio}]: convolutions are compared with convolutions, normalisation
 * layers with normalisation layers, since their gradients differ by kind rather than by health.
 * A kind of fewer than KIND_PEERS_MIN layers with a positive level, and every layer when kinds are
 * unknown, is compared with the median of all layers. `growth`: the largest rise from the first
 * to the last tenth, as [{j, factor}]; `nonfinite`: the earliest NaN/Inf, as [{j, step}].
 */
export function ranking(series, kinds) {
  const levels = endLevels(series);
  const medianOf = (indices) => {
    const found = Float64Array.from(indices.filter((j) => levels[j] > 0), (j) => levels[j]);
    return {count: found.length, median: median(found, found.length)};
  };
  const all = medianOf(series.layers.map((name, j) => j));
  const reference = new Float64Array(series.layers.length).fill(all.median);
  if (kinds) {
    for (const kind of new Set(kinds)) {
      const members = series.layers.map((name, j) => j).filter((j) => kinds[j] === kind);
      const peers = medianOf(members);
      if (peers.count >= KIND_PEERS_MIN) for (const j of members) reference[j] = peers.median;
    }
  }
  const ratios = Float64Array.from(levels, (level, j) => level / reference[j]);
  const smallest = largest(ratios, (ratio) => -ratio, RANKED).map((j) => ({j, ratio: ratios[j]}));
  const growth = movers(series)
    .byGrowth.slice(0, RANKED)
    .map(({j, change}) => ({j, factor: 10 ** change}));
  return {smallest, growth, nonfinite: nonFiniteOnsets(series).slice(0, RANKED)};
}
