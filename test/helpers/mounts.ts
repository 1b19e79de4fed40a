// The mount table, read from /proc/self/mountinfo: the one look at a mount
// that cannot hang on its FUSE server.
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import type { ExecutionContext } from 'ava';

/** One line of /proc/self/mountinfo. */
export interface MountEntry {
  id: string;
  device: string;
  mountpoint: string;
  mountOptions: string[];
  fsType: string;
  source: string;
  superOptions: string[];
}

const unescape = (field: string): string => field.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));

export function mountTable(): MountEntry[] {
  const entries: MountEntry[] = [];
  for (const line of readFileSync('/proc/self/mountinfo', 'utf8').split('\n')) {
    const fields = line.split(' ');
    const dash = fields.indexOf('-');
    if (dash < 6) continue;
    entries.push({
      id: fields[0],
      device: fields[2],
      mountpoint: unescape(fields[4]),
      mountOptions: fields[5].split(','),
      fsType: fields[dash + 1],
      source: unescape(fields[dash + 2]),
      superOptions: (fields[dash + 3] ?? '').split(','),
    });
  }
  return entries;
}

/** The topmost mount on exactly `path`, or undefined. */
export function mountOn(path: string): MountEntry | undefined {
  return mountTable()
    .filter((e) => e.mountpoint === path)
    .at(-1);
}

export function isMounted(path: string): boolean {
  return mountOn(path) !== undefined;
}

/** Asserts that nothing at all is mounted on `path`. */
export function assertUnmounted(t: ExecutionContext, path: string, message = `nothing is left mounted on ${path}`) {
  const left = mountTable().filter((e) => e.mountpoint === path);
  t.deepEqual(left, [], message);
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
