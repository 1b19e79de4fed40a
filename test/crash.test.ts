// Crash consistency (issue 22): a few rounds of the crash loop
// (helpers/crash-loop.ts) per image format and transport, with fixed seeds;
// `npm run crash-loop` runs the long version. And the proof that its
// read-back catches a lost acknowledged write.
import test from 'ava';
import { closeSync, openSync, writeSync } from 'node:fs';
import { crashLoop, describeSummary, eachTransport, qemuWrite, tmpDir, type CrashFormat } from './helpers/index.js';

// About a second a round; `npm run crash-loop` runs 50.
const ROUNDS = 5;
const SEEDS: Record<CrashFormat, number> = { qcow2: 22_01, raw: 22_02 };
const DESCRIPTION: Record<CrashFormat, string> = { qcow2: 'qcow2', raw: 'raw, --cache writeback' };

for (const format of ['qcow2', 'raw'] as const) {
  eachTransport(
    test,
    `kill -9 in a random write load with fsyncs (${DESCRIPTION[format]}), ${ROUNDS} rounds: no corruption, every fsync'd marker reads back, the image exports again`,
    async (t, ioUring) => {
      const summary = await crashLoop({ format, ioUring, rounds: ROUNDS, seed: SEEDS[format], dir: tmpDir(t), log: (line) => t.log(line) });
      t.log(describeSummary(summary));
      t.deepEqual(summary.failures, []);
      t.is(summary.rounds, ROUNDS);
      t.true(summary.markersChecked > 0, "fsync'd markers were read back");
      t.true(summary.holesChecked > 0, "fsync'd punched or zeroed blocks were read back");
      if (format === 'qcow2') t.is(summary.checks!.clean + summary.checks!.leaksOnly, ROUNDS, 'qemu-img check passed every round');
    },
  );
}

/** Overwrites one block of the image under the export's feet: raw in place, qcow2 through qemu-io. */
async function clobber(image: string, format: CrashFormat, block: number): Promise<void> {
  if (format === 'qcow2') {
    await qemuWrite(image, [`write -P 0x5a ${block * 4096} 4k`]);
    return;
  }
  const fd = openSync(image, 'r+');
  try {
    writeSync(fd, Buffer.alloc(4096, 0x5a), 0, 4096, block * 4096);
  } finally {
    closeSync(fd);
  }
}

for (const format of ['qcow2', 'raw'] as const) {
  test.serial(`the crash loop fails a round whose fsync'd block does not read back (${DESCRIPTION[format]})`, async (t) => {
    let clobbered: number | undefined;
    const summary = await crashLoop({
      format,
      ioUring: 'off',
      rounds: 1,
      seed: SEEDS[format],
      dir: tmpDir(t),
      beforeReadBack: async (image, durable) => {
        clobbered = durable[0];
        await clobber(image, format, clobbered);
      },
    });
    t.not(clobbered, undefined, 'the round had an acknowledged block to clobber');
    t.is(summary.failedRounds, 1);
    t.regex(summary.failures.join('\n'), new RegExp(`block ${clobbered} .*acknowledged by an fsync, but it holds other bytes`));
  });
}
