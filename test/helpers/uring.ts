// The kernel's FUSE-over-io_uring switch, set for a test and put back after.
import type { ExecutionContext } from 'ava';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';

export const ENABLE_URING = '/sys/module/fuse/parameters/enable_uring';

/** Whether this kernel has FUSE-over-io_uring at all. */
export const kernelHasUring = existsSync(ENABLE_URING);

/** Sets enable_uring to 'Y' or 'N'; returns what puts the previous value back. */
export function switchUring(value: 'Y' | 'N'): () => void {
  const previous = readFileSync(ENABLE_URING, 'utf8').trim();
  writeFileSync(ENABLE_URING, value);
  return () => writeFileSync(ENABLE_URING, previous);
}

/** Sets enable_uring to 'Y' or 'N' until the test ends. */
export function setUring(t: ExecutionContext, value: 'Y' | 'N'): void {
  t.teardown(switchUring(value));
}

