// Hostile qcow2 images from the outside: a real image made by qemu-img with
// small clusters (so that there are many L2 tables and refcount blocks),
// then 40 copies with bits flipped in its header, L1 table, L2 tables,
// refcount table and refcount blocks (fixed seeds). Each copy is exported
// read-only through the CLI: it either exits 1 with a message, or serves,
// and then every read of it through the mount returns bytes or EIO. Never
// a signal death, a hang, or a change to the file.
import test, { type ExecutionContext } from 'ava';
import { copyFileSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import {
  cliOptions,
  digest,
  errorText,
  fsopOk,
  KiB,
  makeMountpoint,
  makeQcow2,
  MiB,
  qemuWrite,
  startCli,
  stopExport,
  tmpDir,
} from './helpers/index.js';

const IMAGES = 40;
const CLUSTER = 1 * KiB;
const SIZE = 8 * MiB;
/** The reader: every 64 KiB block of the first 8 MiB, then 16 spread over any larger size. */
const SCAN = [64 * KiB, 8 * MiB, 16];

/** xorshift32: the same flips on every run. */
function random(seed: number): () => number {
  let state = seed >>> 0 || 1;
  return () => {
    state ^= state << 13;
    state ^= state >>> 17;
    state ^= state << 5;
    return (state >>> 0) / 2 ** 32;
  };
}

/** [start, length] of the image's metadata: header, L1, L2 tables, refcount table and blocks. */
function metadataSpans(image: Buffer): [number, number][] {
  const l1 = Number(image.readBigUInt64BE(40));
  const l1Entries = image.readUInt32BE(36);
  const refcounts = Number(image.readBigUInt64BE(48));
  const refcountBytes = image.readUInt32BE(56) * CLUSTER;
  const named = (table: number, bytes: number) =>
    Array.from({ length: bytes / 8 }, (_, n) => Number(image.readBigUInt64BE(table + 8 * n) & 0x00ff_ffff_ffff_fe00n))
      .filter((offset) => offset !== 0)
      .map((offset): [number, number] => [offset, CLUSTER]);
  return [[0, 104], [l1, l1Entries * 8], [refcounts, refcountBytes], ...named(l1, l1Entries * 8), ...named(refcounts, refcountBytes)];
}

/** A copy of `original` with 1 to 3 bits flipped in its metadata. */
function flipped(original: Buffer, spans: [number, number][], next: () => number): Buffer {
  const bytes = Buffer.from(original);
  for (let flips = 1 + Math.floor(next() * 3); flips > 0; flips--) {
    const [start, length] = spans[Math.floor(next() * spans.length)]!;
    bytes[start + Math.floor(next() * length)]! ^= 1 << Math.floor(next() * 8);
  }
  return bytes;
}

/** Exports `image` read-only: 'refused' (exit 1 with a message) or the counts of the reader's outcomes. */
async function exportAndScan(t: ExecutionContext, image: string, mnt: string): Promise<'refused' | Record<string, number>> {
  const exp = startCli(t, [...cliOptions({ ioUring: 'off', format: 'qcow2' }), image, mnt]);
  const ready = await exp.event('ready').then(
    () => true,
    () => false,
  );
  if (!ready) {
    const { code, signal } = await exp.wait();
    t.deepEqual({ code, signal }, { code: 1, signal: null }, `${image}: refused with exit 1, not killed:\n${exp.stderr()}`);
    t.regex(errorText({ code, signal, stdout: '', stderr: exp.stderr(), lines: exp.lines, timedOut: false }), /\S/, `${image}: a message`);
    return 'refused';
  }
  const counts: Record<string, number> = await fsopOk('scan', [mnt, ...SCAN]);
  await stopExport(t, exp);
  return counts;
}

test.serial('40 qcow2 images with flipped bits in their metadata: each is refused with exit 1 or serves bytes or EIO; none dies, hangs or changes', async (t) => {
  const dir = tmpDir(t);
  const original = await makeQcow2(dir, 'original.qcow2', SIZE, { options: `cluster_size=${CLUSTER}` });
  await qemuWrite(original, ['write -P 0x11 0 256k', 'write -P 0x22 1M 64k', 'write -P 0x33 3M 512k', 'write -z 5M 64k', 'write -c -P 0x44 6M 64k']);
  const bytes = readFileSync(original);
  const spans = metadataSpans(bytes);
  const mnt = makeMountpoint(dir);
  const image = join(dir, 'flipped.qcow2');
  const outcomes = { refused: 0, served: 0, eio: 0 };
  for (let seed = 1; seed <= IMAGES; seed++) {
    writeFileSync(image, flipped(bytes, spans, random(seed)));
    const before = digest(image);
    const outcome = await exportAndScan(t, image, mnt);
    if (outcome === 'refused') {
      outcomes.refused++;
    } else {
      outcomes.served++;
      const { bytes: read = 0, EIO: eio = 0, ...others } = outcome;
      t.deepEqual(others, {}, `seed ${seed}: every read returns bytes or EIO`);
      t.true(read + eio > 0, `seed ${seed}: the reader read`);
      if (eio > 0) outcomes.eio++;
    }
    if (digest(image) !== before) {
      copyFileSync(image, join(dir, `changed-${seed}.qcow2`));
      t.fail(`seed ${seed}: the read-only export changed its image`);
    }
  }
  t.log(`${outcomes.refused} refused, ${outcomes.served} served (${outcomes.eio} with EIO)`);
  // The flips reach both outcomes, or they miss the metadata.
  t.true(outcomes.refused > 0 && outcomes.served > 0, JSON.stringify(outcomes));
});
