// The soak: for each transport, export a fresh image and run fio randrw
// with crc32c verification (4 jobs) against it for --duration seconds.
// Exits non-zero when fio finds corruption or the export misbehaves.
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';

const { values } = parseArgs({
  options: {
    duration: { type: 'string', default: '600' },
    transports: { type: 'string', default: 'io_uring,legacy' },
    'image-size-mb': { type: 'string', default: '1024' },
  },
});
const duration = Number(values.duration);
const JOBS = 4;
const ENABLE_URING = '/sys/module/fuse/parameters/enable_uring';

function readEvents(text) {
  return text.split('\n').filter(Boolean).flatMap((line) => {
    try {
      return [JSON.parse(line)];
    } catch {
      return [];
    }
  });
}

async function waitFor(predicate, ms, what) {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    if (predicate()) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`timed out waiting for ${what}`);
}

/** What an interrupted soak must clean up: the export, its mount, its files. */
const live = new Set();

function cleanUp({ server, mountpoint, dir }) {
  if (server.exitCode === null) server.kill('SIGKILL');
  spawnSync('umount', ['-l', mountpoint], { stdio: 'ignore' });
  rmSync(dir, { recursive: true, force: true });
}

for (const signal of ['SIGINT', 'SIGTERM']) {
  process.on(signal, () => {
    for (const run of live) cleanUp(run);
    if (previousSwitch !== undefined) writeFileSync(ENABLE_URING, previousSwitch);
    process.exit(130);
  });
}

async function soak(transport) {
  const dir = mkdtempSync(join(tmpdir(), 'fuse-export-soak-'));
  const image = join(dir, 'image.raw');
  const mountpoint = join(dir, 'disk');
  const log = join(dir, 'export.log');
  spawnSync('truncate', ['-s', `${values['image-size-mb']}M`, image]);
  writeFileSync(mountpoint, '');
  const args = ['dist/cli/main.js', '--writable', '--io-uring', transport === 'io_uring' ? 'on' : 'off',
    '--log-format', 'json', image, mountpoint];
  let stderr = '';
  const server = spawn('node', args, { stdio: ['ignore', 'ignore', 'pipe'] });
  const run = { server, mountpoint, dir };
  live.add(run);
  server.stderr.on('data', (chunk) => (stderr += chunk));
  const exited = new Promise((r) => server.on('exit', (code) => r(code)));
  try {
    await waitFor(() => readEvents(stderr).some((e) => e.event === 'ready' || e.event === 'failed'), 30_000, 'ready');
    const ready = readEvents(stderr).find((e) => e.event === 'ready');
    if (!ready) throw new Error(`the export did not start: ${stderr}`);
    const perJob = Math.floor(Number(values['image-size-mb']) / JOBS);
    // A time-based verify job would leave local-soak-*-verify.state in the working directory.
    const fio = spawnSync('fio', [
      '--verify_state_save=0', '--name=soak', `--filename=${mountpoint}`, '--rw=randrw', '--rwmixread=50', '--bs=4k',
      `--size=${perJob}M`, `--offset_increment=${perJob}M`, `--numjobs=${JOBS}`, '--iodepth=16',
      '--ioengine=io_uring', '--direct=1', '--verify=crc32c', '--verify_backlog=256', '--verify_fatal=1',
      '--time_based', `--runtime=${duration}`, '--group_reporting', '--output-format=json',
    ], { encoding: 'utf8', timeout: (duration + 120) * 1000, maxBuffer: 64 << 20 });
    server.kill('SIGTERM');
    const code = await Promise.race([exited, new Promise((r) => setTimeout(() => r('timeout'), 30_000))]);
    const stopped = readEvents(stderr).find((e) => e.event === 'stopped');
    let job = {};
    try {
      job = JSON.parse(fio.stdout.slice(fio.stdout.indexOf('{'))).jobs[0];
    } catch {
      // fio printed no JSON: its stderr says why.
    }
    const writes = job.write?.io_bytes ?? 0;
    return {
      transport: ready.transport,
      seconds: duration,
      fioStatus: fio.status,
      fioErrors: job.error ?? null,
      verifyFailed: fio.status !== 0 || /verify|bad magic|crc32c/i.test(fio.stderr ?? ''),
      ios: (job.read?.total_ios ?? 0) + (job.write?.total_ios ?? 0),
      bytesVerified: writes,
      exitCode: code,
      requests: (stopped?.legacyRequests ?? 0) + (stopped?.ringRequests ?? 0),
      ringRequests: stopped?.ringRequests ?? 0,
      exportErrors: stopped?.errors ?? null,
      fioMessage: fio.status !== 0 ? (fio.stderr ?? '').slice(-2000) : undefined,
    };
  } finally {
    live.delete(run);
    cleanUp(run);
  }
}

let previousSwitch;
try {
  previousSwitch = readFileSync(ENABLE_URING, 'utf8').trim();
} catch {
  previousSwitch = undefined;
}
const results = [];
try {
  for (const transport of values.transports.split(',')) {
    if (transport === 'io_uring') {
      if (previousSwitch === undefined) {
        console.log('io_uring: this kernel has no FUSE-over-io_uring; skipped');
        continue;
      }
      writeFileSync(ENABLE_URING, 'Y');
    }
    const result = await soak(transport);
    results.push(result);
    const mib = (result.bytesVerified / 1048576).toFixed(0);
    console.log(
      `${transport}: ${result.seconds}s, ${result.requests} requests served (${result.ringRequests} over the ring), ` +
        `${result.ios} fio I/Os, ${mib} MiB written and verified (crc32c), export errors ${result.exportErrors}, ` +
        `fio status ${result.fioStatus}, export exit ${result.exitCode}`,
    );
    if (result.fioMessage) console.log(result.fioMessage);
  }
} finally {
  if (previousSwitch !== undefined) writeFileSync(ENABLE_URING, previousSwitch);
}
const failed = results.filter((r) => r.verifyFailed || r.exitCode !== 0 || r.exportErrors !== 0 || r.requests === 0);
console.log(`soak: ${results.length - failed.length} passed, ${failed.length} failed`);
process.exit(failed.length === 0 ? 0 : 1);
