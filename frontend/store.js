// The tab's one view state: changed only by update(), after which every subscriber renders from it.

/**
 * Holds one frozen state object; `update(patch)` is the only way to change it.
 *
 * Subscribers get `(state, prev)` and compare by identity to see what changed, so values in the
 * state are replaced, never mutated. An update made while subscribers run is applied once they
 * are done, so every subscriber sees every change in order.
 */
export class Store {
  constructor(initial) {
    this._state = Object.freeze({...initial});
    this._subscribers = [];
    this._queue = [];
    this._notifying = false;
  }

  get state() {
    return this._state;
  }

  /** Calls `subscriber(state, prev)` after every change. */
  subscribe(subscriber) {
    this._subscribers.push(subscriber);
  }

  /** Replaces the keys of `patch` (those whose value is not the same) and tells the subscribers. */
  update(patch) {
    this._queue.push(patch);
    if (this._notifying) return;
    this._notifying = true;
    try {
      while (this._queue.length) {
        const prev = this._state;
        const next = {...prev};
        let changed = false;
        for (const [key, value] of Object.entries(this._queue.shift())) {
          if (Object.is(prev[key], value)) continue;
          next[key] = value;
          changed = true;
        }
        if (!changed) continue;
        this._state = Object.freeze(next);
        for (const subscriber of this._subscribers) subscriber(this._state, prev);
      }
    } finally {
      this._notifying = false;
      this._queue = [];
    }
  }
}

/** Returns whether any of `keys` differs (by identity) between `state` and `prev`. */
export function changed(state, prev, ...keys) {
  return keys.some((key) => !Object.is(state[key], prev[key]));
}
