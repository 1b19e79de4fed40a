// A file held open by another process across something (a stop, a halt,
// a server's restart), then used: how each call ended and how long it took.
import type { ExecutionContext } from 'ava';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { tmpDir } from './files.js';
import { FSOP, PYTHON, startChild } from './proc.js';

/** fsop.py `hold`: [call, errno or null, milliseconds]. */
export type HeldCall = [string, string | null, number];

/** The JSON answer fsop.py prints last. */
function lastAnswer(output: string) {
  return JSON.parse(output.trim().split('\n').at(-1)!).ok;
}

/** fsop.py `reads_through`: the reads made, the slowest, and how many failed with each errno. */
export interface ReadsThrough {
  calls: number;
  slowest_ms: number;
  errnos: Record<string, number>;
}

/**
 * A child that reads `path` block by block on one descriptor for `seconds`
 * (or until ENOTCONN), then closes it. `failing()` resolves at its first
 * failed read; `done()` once it has closed the file.
 */
export function readThrough(t: ExecutionContext, path: string, seconds: number) {
  const reader = startChild(t, [PYTHON, FSOP, 'reads_through', path, seconds]);
  return {
    failing: () => reader.waitFor(/"failing"/, 20_000),
    async done(): Promise<ReadsThrough> {
      await reader.wait(20_000);
      return lastAnswer(reader.output()) as ReadsThrough;
    },
  };
}

/** Every read came back within `ms`, and failed, if at all, with EIO or ENOTCONN only. */
export function assertAnsweredAtOnce(t: ExecutionContext, { calls, slowest_ms: slowest, errnos }: ReadsThrough, ms = 1000): void {
  t.log(`${calls} reads, the slowest ${slowest} ms, errors ${JSON.stringify(errnos)}`);
  t.true(slowest < ms, `every read returned within ${ms} ms: the slowest took ${slowest} ms`);
  t.deepEqual(Object.keys(errnos).filter((e) => e !== 'EIO' && e !== 'ENOTCONN'), [], 'no errno but EIO or ENOTCONN');
}

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
      return lastAnswer(holder.output()) as HeldCall[];
    },
  };
}
