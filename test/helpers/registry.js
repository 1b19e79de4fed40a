// The exports each test started, so that a test can end by stopping the
// ones still running and checking that they went away cleanly.

const started = new WeakMap();

/** Records `stop` (async (t) => void, asserting) for the export a test started. */
export function register(t, stop) {
  if (!started.has(t)) started.set(t, []);
  started.get(t).push(stop);
}

/** Stops, with assertions, every export `t` started that is still running. */
export async function stopLeftovers(t) {
  for (const stop of (started.get(t) ?? []).reverse()) await stop(t);
}
