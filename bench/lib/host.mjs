// What the run changes on the machine and undoes whatever way it ends: the
// exports and fio it started, the mounts and directories it made, the
// FUSE-over-io_uring switch it turned on. Ctrl-C stops in order; a second
// one (or a crash) kills at once.
import { existsSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { release } from 'node:os';
import { say } from './log.mjs';
import { killGroup } from '../../test/helpers/run.mjs';
import { isMounted, liveChildren, umountLazy } from './proc.mjs';

export const URING_PARAM = '/sys/module/fuse/parameters/enable_uring';

/** Everything to undo. */
export const state = {
  servers: [],
  mountpoints: [],
  dirs: [],
  uring: undefined, // { previous, restored }
  fio: undefined,
  aborting: false,
};
let cleaning;

/** Thrown by the matrix when a signal asked it to stop: the handler exits. */
export class Aborted extends Error {}

function restoreUring() {
  if (!state.uring || state.uring.restored) return;
  try {
    writeFileSync(URING_PARAM, state.uring.previous);
    state.uring.restored = true;
    say(`restored ${URING_PARAM} to ${state.uring.previous}`);
  } catch (error) {
    say(`could not restore ${URING_PARAM} to ${state.uring.previous}: ${error.message}`);
  }
}

const unmountUnder = (dir) => {
  for (const mp of state.mountpoints.filter((m) => m.startsWith(`${dir}/`))) if (isMounted(mp)) umountLazy(mp);
};

/** Removes `dir` (one of state.dirs), never walking into a mount: whatever is still mounted under it goes first. */
export function removeDir(dir) {
  state.dirs = state.dirs.filter((d) => d !== dir);
  unmountUnder(dir);
  try {
    rmSync(dir, { recursive: true, force: true });
  } catch (error) {
    say(`could not remove ${dir}: ${error.message}`);
  }
}

function unmountAll() {
  for (const mp of state.mountpoints) if (isMounted(mp)) umountLazy(mp);
}

/** The orderly clean-up: stop fio and the exports, restore, remove. Idempotent. */
export function cleanup() {
  cleaning ??= (async () => {
    if (state.fio) killGroup(state.fio.pid, 'SIGKILL');
    await Promise.all(state.servers.filter((s) => s.alive).map((s) => s.stop()));
    unmountAll();
    restoreUring();
    for (const dir of [...state.dirs]) removeDir(dir);
  })();
  return cleaning;
}

/** The last resort when the process exits anyway (second Ctrl-C, crash). */
function cleanupSync() {
  for (const pid of liveChildren) {
    killGroup(pid, 'SIGKILL');
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // Gone.
    }
  }
  unmountAll();
  restoreUring();
  for (const dir of [...state.dirs]) removeDir(dir);
}

export function installHandlers() {
  const onSignal = (signal) => {
    if (!state.aborting) {
      state.aborting = true;
      say(`${signal}: stopping the exports and cleaning up (again to force)`);
      if (state.fio) killGroup(state.fio.pid, 'SIGKILL');
      cleanup().finally(() => process.exit(130));
    } else {
      say(`${signal} again: killing everything`);
      cleanupSync();
      process.exit(130);
    }
  };
  for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP']) process.on(signal, onSignal);
  process.on('exit', cleanupSync);
  const crash = (error) => {
    say(`internal error: ${error?.stack ?? error}`);
    cleanup().finally(() => process.exit(1));
  };
  process.on('uncaughtException', crash);
  process.on('unhandledRejection', crash);
}

/**
 * Turns FUSE-over-io_uring on; false when the kernel cannot. Called at the
 * start and again right before each io_uring export starts, because other
 * users of the machine (test suites) may switch it off meanwhile; the value
 * restored at the end is the one found the first time it had to be changed.
 */
export function enableUring(notes) {
  if (!existsSync(URING_PARAM)) {
    notes.push(`${URING_PARAM} does not exist on kernel ${release()}: the io_uring target is skipped`);
    return false;
  }
  const previous = readFileSync(URING_PARAM, 'utf8').trim();
  if (previous === 'Y') return true;
  try {
    writeFileSync(URING_PARAM, 'Y');
    if (state.uring) {
      state.uring.restored = false;
      notes.push(`${URING_PARAM} had been switched back to ${previous} during the run (by another user of the machine?): set to Y again`);
    } else {
      state.uring = { previous, restored: false };
    }
    say(`${URING_PARAM}: ${previous} -> Y for the run`);
    return true;
  } catch (error) {
    notes.push(`could not write Y to ${URING_PARAM} (${error.message}): the io_uring target is skipped`);
    return false;
  }
}
