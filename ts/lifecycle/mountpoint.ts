// Checking a mountpoint before we mount on it: our own exports, dead FUSE
// mounts left by a killed exporter, and the regular-file requirement.
import { constants } from 'node:fs';
import { open, realpath, stat } from 'node:fs/promises';
import { resolve } from 'node:path';
import { isFuse, mountOn, OUR_FS_TYPE } from './mountinfo.js';

export class SetupError extends Error {
  override name = 'SetupError';
}

/** Mountpoints this process exports right now. */
const active = new Set<string>();

export function claimMountpoint(path: string): void {
  active.add(path);
}

export function releaseMountpoint(path: string): void {
  active.delete(path);
}

export interface MountpointHooks {
  /** Lazily unmounts a dead mount. */
  detach(path: string): void;
  warn(message: string, fields: Record<string, unknown>): void;
}

/**
 * The path the kernel will mount on: mount(2) follows a symlink, so a
 * symlinked mountpoint is resolved to the file it names. A dead mount at the
 * path cannot be resolved (ENOTCONN); its path is taken as it is.
 */
async function canonical(path: string): Promise<string> {
  try {
    return await realpath(path);
  } catch {
    return path;
  }
}

/** What a FUSE mount whose server is gone answers (ECONNABORTED once aborted). */
const DEAD_CONNECTION = new Set(['ENOTCONN', 'ECONNABORTED']);

/**
 * Asks the mount's server itself: an OPEN always reaches it, where a stat
 * may still be answered from the kernel's attribute cache for a second
 * after the server died.
 */
async function connectionIsDead(path: string): Promise<boolean> {
  try {
    const handle = await open(path, constants.O_RDONLY | constants.O_NONBLOCK);
    await handle.close();
    return false;
  } catch (error) {
    return DEAD_CONNECTION.has(errnoOf(error) ?? '');
  }
}

function errnoOf(error: unknown): string | undefined {
  return (error as NodeJS.ErrnoException | undefined)?.code;
}

/** Node's message without its trailing ", stat '/the/path'" (we name the path ourselves). */
function withoutPath(error: unknown): string {
  return (error as Error).message.replace(/, \w+ '.*'$/s, '');
}

/** The path as a shell word, for a command the user may paste. */
function shellQuote(path: string): string {
  return /^[\w@%+=:,./-]+$/.test(path) ? path : `'${path.replace(/'/g, `'\\''`)}'`;
}

/**
 * Returns the absolute mountpoint once it is fit to mount on. Looks the
 * path up in the mount table *before* touching it: a stat of our own mount
 * from the thread that serves it would deadlock.
 */
export async function prepareMountpoint(path: string, hooks: MountpointHooks): Promise<string> {
  const mountpoint = await canonical(resolve(path));
  if (active.has(mountpoint)) {
    throw new SetupError(`There already is a FUSE export on ${mountpoint}`);
  }
  const mounted = mountOn(mountpoint);
  if (mounted && isFuse(mounted)) {
    if (await connectionIsDead(mountpoint)) {
      hooks.warn(`Found a dead FUSE mount on ${mountpoint} (its server is gone); unmounting it lazily`, {
        event: 'dead-mount',
        mountpoint,
        fsType: mounted.fsType,
      });
      try {
        hooks.detach(mountpoint);
      } catch (error) {
        throw new SetupError(
          `${mountpoint} carries a dead FUSE mount that could not be unmounted: ${(error as Error).message} ` +
            `(unmount it with: fusermount3 -u -z ${mountpoint})`,
        );
      }
    } else if (mounted.fsType === OUR_FS_TYPE) {
      throw new SetupError(`There already is a FUSE export on ${mountpoint}`);
    }
  }
  let info;
  try {
    info = await stat(mountpoint);
  } catch (error) {
    if (errnoOf(error) === 'ENOENT') {
      throw new SetupError(
        `Failed to stat ${mountpoint}: the mountpoint does not exist. ` +
          `Create it as an empty regular file first: touch ${shellQuote(mountpoint)}`,
      );
    }
    throw new SetupError(`Failed to stat ${mountpoint}: ${withoutPath(error)}`);
  }
  if (!info.isFile()) {
    throw new SetupError(`${mountpoint} is not a regular file (the mountpoint must be an existing regular file)`);
  }
  return mountpoint;
}
