// The transports the transport-dependent tests run on: both, where the
// kernel has FUSE-over-io_uring (its switch is on for the 'on' runs).
import type { ExecutionContext, TestFn } from 'ava';
import { stopLeftovers } from './registry.js';
import { kernelHasUring, setUring } from './uring.js';

/** An `ioUring` switch a transport-dependent test runs with. */
export type IoUring = 'off' | 'on';

export const TRANSPORTS: IoUring[] = kernelHasUring ? ['off', 'on'] : ['off'];

/** The `transport` the ready event reports for an `ioUring` switch. */
export function transportFor(ioUring: IoUring): 'io_uring' | 'legacy' {
  return ioUring === 'on' ? 'io_uring' : 'legacy';
}

/** The stats counter that must move for requests served on `ioUring`. */
export function requestCounter(ioUring: IoUring): 'ringRequests' | 'legacyRequests' {
  return ioUring === 'on' ? 'ringRequests' : 'legacyRequests';
}

/**
 * Declares `title` once per transport: fn(t, ioUring). Exports the test left
 * running are then stopped with assertions (clean exit, nothing mounted).
 */
export function eachTransport(
  test: TestFn,
  title: string,
  fn: (t: ExecutionContext, ioUring: IoUring) => Promise<void>,
): void {
  for (const ioUring of TRANSPORTS) {
    test.serial(`[io-uring ${ioUring}] ${title}`, async (t) => {
      if (ioUring === 'on') setUring(t, 'Y');
      await fn(t, ioUring);
      await stopLeftovers(t);
    });
  }
}
