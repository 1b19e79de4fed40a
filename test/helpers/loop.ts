// Loop mounts of files (an exported file, an image) for filesystem tests.
import type { ExecutionContext } from 'ava';
import { mkdirSync } from 'node:fs';
import { check, run } from './proc.js';

/** Loop devices backed by `file`. */
export async function loopsOf(file: string): Promise<string[]> {
  const { stdout } = await run(['losetup', '--noheadings', '--output', 'NAME', '--associated', file]);
  return stdout.split('\n').filter(Boolean);
}

/** A loop device backed by `file`; detached in teardown. */
export async function loopDevice(t: ExecutionContext, file: string): Promise<string> {
  const loop = (await check(['losetup', '--find', '--show', file])).stdout.trim();
  t.teardown(() => run(['losetup', '-d', loop]));
  return loop;
}

/** Mounts `source` (a file, through a loop device) on `target`; undone in teardown. */
export async function loopMount(t: ExecutionContext, source: string, target: string, options = 'loop'): Promise<void> {
  mkdirSync(target, { recursive: true });
  await check(['mount', '-o', options, source, target], { timeout: 60_000 });
  t.teardown(async () => {
    await run(['umount', '-l', target]);
    for (const loop of await loopsOf(source)) await run(['losetup', '-d', loop]);
  });
}
