// What is mounted where, read from /proc/self/mountinfo: the only look at a
// mountpoint that cannot hang on a FUSE server (ours included). The tests
// and the benchmark read the mount table through this module too.
import { readFileSync } from 'node:fs';

/** One line of /proc/self/mountinfo. */
export interface MountEntry {
  /** The mount's id (the first field). */
  id: string;
  mountpoint: string;
  /** Per-mount options (ro, nosuid, ...). */
  mountOptions: string[];
  fsType: string;
  source: string;
  /** Per-superblock options (for FUSE: user_id, allow_other, ...). */
  superOptions: string[];
  /** "major:minor"; for FUSE the minor names /sys/fs/fuse/connections/N. */
  device: string;
}

/** Undoes the kernel's octal escapes (\040 for a space, ...). */
function unescape(field: string): string {
  return field.replace(/\\([0-7]{3})/g, (_, octal: string) => String.fromCharCode(parseInt(octal, 8)));
}

export function parseMountinfo(text: string): MountEntry[] {
  const entries: MountEntry[] = [];
  for (const line of text.split('\n')) {
    const fields = line.split(' ');
    const separator = fields.indexOf('-');
    if (separator < 6 || fields.length < separator + 3) {
      continue;
    }
    entries.push({
      id: fields[0],
      device: fields[2],
      mountpoint: unescape(fields[4]),
      mountOptions: fields[5].split(','),
      fsType: fields[separator + 1],
      source: unescape(fields[separator + 2]),
      superOptions: (fields[separator + 3] ?? '').split(','),
    });
  }
  return entries;
}

/** Every mount, in the kernel's order (a mount over another comes after it). */
export function mountTable(mountinfo = '/proc/self/mountinfo'): MountEntry[] {
  return parseMountinfo(readFileSync(mountinfo, 'utf8'));
}

/** Every mount on exactly `path`, the topmost last. */
export function mountsOn(path: string, mountinfo = '/proc/self/mountinfo'): MountEntry[] {
  return mountTable(mountinfo).filter((entry) => entry.mountpoint === path);
}

/** The topmost mount on `path`, if any. */
export function mountOn(path: string, mountinfo = '/proc/self/mountinfo'): MountEntry | undefined {
  return mountsOn(path, mountinfo).at(-1);
}

export const OUR_FS_TYPE = 'fuse.fuse-export';

export function isFuse(entry: MountEntry): boolean {
  return entry.fsType === 'fuse' || entry.fsType.startsWith('fuse.');
}
