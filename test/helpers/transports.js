// The transports the transport-dependent tests run on. Add 'on' here once
// the FUSE-over-io_uring transport is in: every such test then runs twice.
import { stopLeftovers } from './registry.js';

export const TRANSPORTS = ['off'];

/** The `transport` the ready event reports for an `ioUring` switch. */
export function transportFor(ioUring) {
  return ioUring === 'on' ? 'io_uring' : 'legacy';
}

/** The stats counter that must move for requests served on `ioUring`. */
export function requestCounter(ioUring) {
  return ioUring === 'on' ? 'ringRequests' : 'legacyRequests';
}

/**
 * Declares `title` once per transport: fn(t, ioUring). Exports the test left
 * running are then stopped with assertions (clean exit, nothing mounted).
 */
export function eachTransport(test, title, fn) {
  for (const ioUring of TRANSPORTS) {
    test.serial(`[io-uring ${ioUring}] ${title}`, async (t) => {
      await fn(t, ioUring);
      await stopLeftovers(t);
    });
  }
}
