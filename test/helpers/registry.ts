// The exports each test started, so that a test can end by stopping the
// ones still running and checking that they went away cleanly.
import type { ExecutionContext } from 'ava';

type Stop = (t: ExecutionContext) => Promise<void>;
const started = new WeakMap<ExecutionContext, Stop[]>();

/** Records `stop` (async (t) => void, asserting) for the export a test started. */
export function register(t: ExecutionContext, stop: Stop): void {
  const stops = started.get(t) ?? [];
  started.set(t, stops);
  stops.push(stop);
}

/** Stops, with assertions, every export `t` started that is still running. */
export async function stopLeftovers(t: ExecutionContext): Promise<void> {
  for (const stop of (started.get(t) ?? []).reverse()) await stop(t);
}
