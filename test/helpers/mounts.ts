// The mount table, as the product reads it (ts/lifecycle/mountinfo.ts), and
// what the tests assert and clean up with it.
import { spawnSync } from 'node:child_process';
import type { ExecutionContext } from 'ava';
import { mountOn, mountsOn, mountTable } from '../../ts/lifecycle/mountinfo.js';

export { mountOn, mountTable, type MountEntry } from '../../ts/lifecycle/mountinfo.js';

export function isMounted(path: string): boolean {
  return mountOn(path) !== undefined;
}

/** Asserts that nothing at all is mounted on `path`. */
export function assertUnmounted(t: ExecutionContext, path: string, message = `nothing is left mounted on ${path}`) {
  t.deepEqual(mountsOn(path), [], message);
}

/** Teardown safety net: lazily detaches whatever is mounted at or under `dir`. */
export function forceUnmountUnder(dir: string): void {
  const under = mountTable()
    .filter((e) => e.mountpoint === dir || e.mountpoint.startsWith(`${dir}/`))
    .reverse();
  for (const entry of under) {
    spawnSync('umount', ['-l', entry.mountpoint], { timeout: 10_000, stdio: 'ignore' });
  }
}
