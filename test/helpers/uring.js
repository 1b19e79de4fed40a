// The kernel's FUSE-over-io_uring switch, set for a test and put back after.
import { existsSync, readFileSync, writeFileSync } from 'node:fs';

export const ENABLE_URING = '/sys/module/fuse/parameters/enable_uring';

/** Whether this kernel has FUSE-over-io_uring at all. */
export const kernelHasUring = existsSync(ENABLE_URING);

/** Sets enable_uring to 'Y' or 'N' until the test ends. */
export function setUring(t, value) {
  const previous = readFileSync(ENABLE_URING, 'utf8').trim();
  writeFileSync(ENABLE_URING, value);
  t.teardown(() => writeFileSync(ENABLE_URING, previous));
}

/** The `--io-uring` switches a transport-dependent test runs with. */
export const SWITCHES = kernelHasUring ? ['off', 'on'] : ['off'];

/** Declares `title` once per transport (enable_uring on for 'on'): fn(t, ioUring). */
export function onEachTransport(test, title, fn) {
  for (const ioUring of SWITCHES) {
    test.serial(`[io-uring ${ioUring}] ${title}`, (t) => {
      if (ioUring === 'on') setUring(t, 'Y');
      return fn(t, ioUring);
    });
  }
}
