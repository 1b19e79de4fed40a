// What is mounted where, read from /proc/self/mountinfo: the only look at a
// mountpoint that cannot hang on a FUSE server (ours included).
import { readFileSync } from 'node:fs';

export interface MountEntry {
  mountpoint: string;
  fsType: string;
  source: string;
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
      device: fields[2],
      mountpoint: unescape(fields[4]),
      fsType: fields[separator + 1],
      source: unescape(fields[separator + 2]),
    });
  }
  return entries;
}

/** The topmost mount on `path`, if any. */
export function mountOn(path: string, mountinfo = '/proc/self/mountinfo'): MountEntry | undefined {
  const entries = parseMountinfo(readFileSync(mountinfo, 'utf8'));
  return entries.filter((entry) => entry.mountpoint === path).at(-1);
}

export const OUR_FS_TYPE = 'fuse.fuse-export';

export function isFuse(entry: MountEntry): boolean {
  return entry.fsType === 'fuse' || entry.fsType.startsWith('fuse.');
}
