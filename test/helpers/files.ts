// Temporary directories and images. These touch only backing files, never
// a mounted path, so plain fs calls are safe here.
import { closeSync, mkdtempSync, openSync, readSync, rmSync, statSync, writeFileSync, chmodSync, chownSync } from 'node:fs';
import { writeSync, ftruncateSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { ExecutionContext } from 'ava';
import { forceUnmountUnder } from './mounts.js';

export const KiB = 1024;
export const MiB = 1024 * 1024;

/**
 * A fresh directory under os.tmpdir(), removed in teardown (after anything
 * still mounted inside it was detached). `owner` chowns it (for tests that
 * run the exporter as another user); it is always world-traversable.
 * `under` picks the file system (/dev/shm for tmpfs).
 */
export function tmpDir(
  t: ExecutionContext,
  { owner, under = tmpdir() }: { owner?: { uid: number; gid: number }; under?: string } = {},
): string {
  const dir = mkdtempSync(join(under, 'fuse-export-test-'));
  chmodSync(dir, 0o755);
  if (owner) chownSync(dir, owner.uid, owner.gid);
  t.teardown(() => {
    forceUnmountUnder(dir);
    rmSync(dir, { recursive: true, force: true });
  });
  return dir;
}

/** Deterministic, position-dependent bytes: pattern(n, seed) never repeats a 4 KiB block. */
export function pattern(length: number, seed = 1): Buffer {
  const buf = Buffer.alloc(length);
  let x = (seed * 2654435761) >>> 0 || 1;
  for (let i = 0; i < length; i++) {
    // xorshift32
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    buf[i] = x & 0xff;
  }
  return buf;
}

/**
 * Creates a sparse image of `size` bytes with `extents`: [[offset, Buffer], ...]
 * written at their offsets (everything else a hole). Returns its path.
 */
/** [offset, bytes] to write into an image. */
export type Extent = [number, Buffer];

export function makeImage(
  dir: string,
  name: string,
  size: number,
  extents: Extent[] = [],
  { mode }: { mode?: number } = {},
): string {
  const path = join(dir, name);
  const fd = openSync(path, 'w', mode ?? 0o644);
  try {
    ftruncateSync(fd, size);
    for (const [offset, data] of extents) writeSync(fd, data, 0, data.length, offset);
  } finally {
    closeSync(fd);
  }
  if (mode !== undefined) chmodSync(path, mode);
  return path;
}

/** An empty regular file to mount on. */
export function makeMountpoint(dir: string, name = 'mnt'): string {
  const path = join(dir, name);
  writeFileSync(path, '');
  return path;
}

/** Bytes of a backing file (not a mount!). */
export function readFile(path: string, offset: number, length: number): Buffer {
  const fd = openSync(path, 'r');
  try {
    const buf = Buffer.alloc(length);
    const n = readSync(fd, buf, 0, length, offset);
    return buf.subarray(0, n);
  } finally {
    closeSync(fd);
  }
}

/** size and 512-byte blocks of a backing file. */
export function fileStat(path: string): { size: number; blocks: number; mode: number } {
  const st = statSync(path);
  return { size: st.size, blocks: st.blocks, mode: st.mode };
}

/**
 * Asserts two byte buffers are equal (fast for megabytes, unlike deepEqual);
 * on a difference says where the first one is.
 */
export function assertBytes(t: ExecutionContext, actual: Buffer, expected: Buffer, message = 'bytes match'): void {
  if (Buffer.compare(actual, expected) === 0) {
    t.pass(message);
    return;
  }
  let at = 0;
  while (at < actual.length && at < expected.length && actual[at] === expected[at]) at++;
  const show = (b: Buffer) => b.subarray(at, at + 16).toString('hex');
  t.fail(
    `${message}: lengths ${actual.length} / ${expected.length}, first difference at offset ${at}: ` +
      `actual ${show(actual)} expected ${show(expected)}`,
  );
}
