// A file held open by another process across something (a stop, a server's
// restart), then used: how each call ended and how long it took.
import type { ExecutionContext } from 'ava';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { tmpDir } from './files.js';
import { FSOP, PYTHON, startChild } from './proc.js';

/** fsop.py `hold`: [call, errno or null, milliseconds]. */
export type HeldCall = [string, string | null, number];

/**
 * Opens `path` in a child (and writes a block through it); resolves once it
 * is open. `release()` then makes `calls` (statfs, read, fsync, close) on
 * that descriptor and resolves with their outcomes.
 */
export async function holdOpen(t: ExecutionContext, path: string, calls: string[]): Promise<{ release: () => Promise<HeldCall[]> }> {
  const trigger = join(tmpDir(t), 'release');
  const holder = startChild(t, [PYTHON, FSOP, 'hold', path, trigger, calls.join(',')]);
  await holder.waitFor(/opened/);
  return {
    async release() {
      writeFileSync(trigger, '');
      await holder.wait(20_000);
      return JSON.parse(holder.output().trim().split('\n').at(-1)!).ok as HeldCall[];
    },
  };
}
