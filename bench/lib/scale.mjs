// The scale section: many exports in one fuse-export-storage-daemon, as a
// host of many virtual machines has them. `--exports` raw images of
// `--size` on tmpfs, sparse but for the SCALE_BUSY that fio reads (copies of
// the section's image, filled with data). The daemon is started twice:
// once with every export on its command line (timed to its `serving` line),
// then with a QMP socket alone, the exports added one after another
// (`blockdev-add`, `block-export-add`) as a management tool adds them, timed
// from the first command to a read answered by the last export. RSS and
// threads come from /proc/PID/status at each step. Then fio's matrix
// (matrix.mjs) on one export, the others idle, and on SCALE_BUSY at once;
// the exports are deleted over QMP before the daemon's SIGTERM.
import { copyFileSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { QmpTestClient } from '../../test/helpers/qmp.mjs';
import { Aborted, enableUring, state } from './host.mjs';
import { say } from './log.mjs';
import { closeSection, openSection, runMatrix, stopServers } from './matrix.mjs';
import { DAEMON } from './paths.mjs';
import { isMounted, memory, notePeakRss, sleep, threadNames } from './proc.mjs';
import { fmtMiB } from './report.mjs';
import { mountFile, SCALE_BUSY, sparseFile } from './sections.mjs';
import { daemonExportArgs, daemonIothreads, startDaemon } from './servers.mjs';

/** How long one QMP command may take to be answered. */
const QMP_TIMEOUT_MS = 30_000;
/** How long the daemon may take to start, per export on its command line, beyond the usual 30 s. */
const START_MS_PER_EXPORT = 200;

const elapsed = (since) => Math.round((performance.now() - since) * 100) / 100;

/** The images and mountpoints of `count` exports: the first SCALE_BUSY with data (the section's image and copies of it), the rest sparse. */
function makeExports(image, count) {
  return Array.from({ length: count }, (_, i) => {
    let file = image.path;
    if (i > 0) {
      file = join(image.workdir, `export-${i}.raw`);
      if (i < SCALE_BUSY) copyFileSync(image.path, file);
      else sparseFile(file, image.size);
    }
    return { node: `node${i}`, id: `export${i}`, image: file, mountpoint: mountFile(image, String(i)) };
  });
}

/** What /proc/PID/status says of the daemon now, and its threads by name, beside `step`. */
function snapshot(server, step) {
  const m = memory(server.pid);
  return { ...step, rssBytes: m.rss ?? null, peakRssBytes: m.hwm ?? null, threads: m.threads ?? null, threadNames: threadNames(server.pid) };
}

/** Whether a 4 KiB read of `file` (through its export) is answered within `timeoutMs`. */
async function answers(file, timeoutMs = 10_000) {
  const read = async () => {
    const handle = await open(file, 'r');
    try {
      return (await handle.read(Buffer.alloc(4096), 0, 4096, 0)).bytesRead === 4096;
    } finally {
      await handle.close();
    }
  };
  return Promise.race([read(), sleep(timeoutMs).then(() => false)]).catch(() => false);
}

/** Every export on the daemon's command line: the time to its `serving` line, then its RSS and threads; stopped with SIGTERM. */
async function startOnCommandLine(image, exports, options, result) {
  const { iothreads, uring } = options;
  const args = [...iothreads.args, ...exports.flatMap((e) => daemonExportArgs({ ...e, cache: image.cache, iothreads: iothreads.ids, uring }))];
  const started = performance.now();
  const server = await startDaemon({ daemon: DAEMON, target: 'scale-command-line', args, timeout: 30_000 + exports.length * START_MS_PER_EXPORT });
  const ms = elapsed(started);
  state.servers.push(server);
  // The record keeps the first export's arguments, not a few hundred.
  server.args = [...server.args.slice(0, 1 + iothreads.args.length + 4), `(and ${exports.length - 1} more --blockdev / --export pairs like it)`];
  image.scale.exportInfo = server.events.find((e) => e.event === 'ready');
  const step = snapshot(server, { how: 'command line', exports: exports.length, ms });
  say(`${image.id}: ${exports.length} exports on the command line: serving after ${ms.toFixed(0)} ms, RSS ${fmtMiB(step.rssBytes)}, ${step.threads} threads`);
  await stopServers(image, { commandLine: server }, result);
  step.stopMs = server.stopMs;
  return step;
}

/**
 * The daemon with a QMP socket alone, then the exports added over QMP one
 * after another: a step with the first, one with the last; every export
 * mounted and answering a read, or it throws.
 */
async function addOverQmp(image, exports, options, steps) {
  const { iothreads, uring } = options;
  const socket = join(image.workdir, 'qmp.sock');
  const started = performance.now();
  const server = await startDaemon({
    daemon: DAEMON,
    target: 'scale-qmp',
    args: [...iothreads.args, '--chardev', `socket,id=qmp0,path=${socket},server=on,wait=off`, '--monitor', 'chardev=qmp0'],
  });
  state.servers.push(server);
  steps.push(snapshot(server, { how: 'QMP', exports: 0, ms: elapsed(started) }));
  const { client } = await QmpTestClient.connect(socket);
  await client.negotiate();
  const addMs = [];
  const first = performance.now();
  for (const [i, e] of exports.entries()) {
    if (state.aborting) throw new Aborted();
    const added = performance.now();
    await client.execute('blockdev-add', { driver: 'file', 'node-name': e.node, filename: e.image, cache: { direct: image.cache === 'direct' } }, QMP_TIMEOUT_MS);
    await client.execute(
      'block-export-add',
      { type: 'fuse', id: e.id, 'node-name': e.node, mountpoint: e.mountpoint, writable: true, 'io-uring': uring ? 'on' : 'off', passthrough: 'off', iothread: iothreads.ids },
      QMP_TIMEOUT_MS,
    );
    addMs.push(elapsed(added));
    if (i === 0 || i === exports.length - 1) {
      if (!(await answers(e.mountpoint))) throw new Error(`${e.id} did not answer a read once block-export-add had returned`);
      steps.push(snapshot(server, { how: 'QMP', exports: i + 1, ms: elapsed(first) }));
    }
  }
  const silent = [];
  for (const e of exports) if (!isMounted(e.mountpoint) || !(await answers(e.mountpoint))) silent.push(e.id);
  if (silent.length) throw new Error(`${silent.length} of ${exports.length} exports did not answer a read: ${silent.slice(0, 8).join(', ')}`);
  image.scale.addMs = addMs;
  const last = steps.at(-1);
  say(`${image.id}: ${exports.length} exports added over QMP in ${last.ms.toFixed(0)} ms: RSS ${fmtMiB(last.rssBytes)}, ${last.threads} threads`);
  return { server, client };
}

/** block-export-del of every export, timed to the last BLOCK_EXPORT_DELETED, then blockdev-del of their nodes. */
async function deleteOverQmp(image, exports, client, result) {
  const started = performance.now();
  for (const e of exports) await client.execute('block-export-del', { id: e.id }, QMP_TIMEOUT_MS);
  await Promise.all(exports.map((e) => client.waitEvent('BLOCK_EXPORT_DELETED', QMP_TIMEOUT_MS, (event) => event.data?.id === e.id)));
  image.scale.deleteMs = elapsed(started);
  for (const e of exports) await client.execute('blockdev-del', { 'node-name': e.node }, QMP_TIMEOUT_MS);
  const mounted = exports.filter((e) => isMounted(e.mountpoint));
  if (mounted.length) result.anomalies.push(`${image.id}: ${mounted.length} exports still mounted after BLOCK_EXPORT_DELETED: ${mounted.slice(0, 8).map((e) => e.id).join(', ')}`);
  say(`${image.id}: ${exports.length} exports deleted over QMP in ${image.scale.deleteMs.toFixed(0)} ms`);
}

/** The scale section (see the top of this file). */
export async function benchScale(section, config, result) {
  const opened = await openSection(section, config, result);
  if (!opened) return;
  const { image, targets, workloads } = opened;
  const uring = enableUring(result.notes);
  const options = { iothreads: daemonIothreads(config.threads), uring };
  image.scale = { exports: config.exports, busy: SCALE_BUSY, transport: uring ? 'io_uring' : 'legacy', iothreads: config.threads, steps: [] };
  say(`${image.id}: ${config.exports} images (${SCALE_BUSY} with data), ${image.scale.transport}`);
  const exports = makeExports(image, config.exports);
  const { steps } = image.scale;
  steps.push(await startOnCommandLine(image, exports, options, result));
  if (state.aborting) throw new Aborted();
  const { server, client } = await addOverQmp(image, exports, options, steps);
  try {
    server.file = exports[0].mountpoint;
    server.files = exports.slice(0, SCALE_BUSY).map((e) => e.mountpoint);
    notePeakRss(server);
    await runMatrix({ image, servers: Object.fromEntries(targets.map((t) => [t, server])), targets, workloads, config, result });
    // The peak over the whole life: each fio run resets VmHWM before it.
    notePeakRss(server);
    steps.push({ ...snapshot(server, { how: 'QMP, after the fio runs', exports: exports.length, ms: null }), peakRssBytes: server.peakRssBytes });
    if (server.alive) await deleteOverQmp(image, exports, client, result);
  } finally {
    await client.close();
  }
  await closeSection(image, { qmp: server }, result);
}
