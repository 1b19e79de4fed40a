// Starting a section's exports: each in turn, what went wrong noted in the
// result instead of ending the run, and what each one was, for the report.
import { enableUring, state, URING_PARAM } from './host.mjs';
import { say } from './log.mjs';
import { notePeakRss } from './proc.mjs';
import { startTarget } from './sections.mjs';

/** Starts `target` (an io_uring export once more when enable_uring was switched off meanwhile). */
export async function startOne(target, image, config, result, options) {
  const start = () => startTarget(target, image, config, options);
  const usesUring = target.startsWith('io_uring');
  if (usesUring) enableUring(result.notes);
  try {
    return await start();
  } catch (error) {
    // Switched off between our check and the export's (a test suite
    // running next to us toggles it): once more.
    if (!usesUring || !/enable_uring/.test(error.message) || !enableUring(result.notes)) throw error;
    say(`${image.id}: ${target} export refused (${URING_PARAM} was switched off meanwhile): retrying`);
    return start();
  }
}

function describe(server) {
  if (server.kind === 'fuse-export-storage-daemon') return server.info.message;
  if (server.kind !== 'fuse-export') return server.info.config;
  const i = server.info;
  return `${i.transport}, ${i.threads} threads, ${i.ringQueues} ring queues${i.queueDepth ? ` x ${i.queueDepth}` : ''}, directIo ${i.directIo}, format ${i.format ?? '?'}${i.backend === 'qemu' ? `, qemu-nbd ${i.qemuVersion ?? '?'} child` : ''}`;
}

/** The exports of `targets`, by target; one that fails to start is an anomaly, and missing. */
export async function startServers(image, config, result, targets) {
  const servers = {};
  for (const target of targets) {
    try {
      const server = await startOne(target, image, config, result);
      if (server.kind === 'qemu-storage-daemon') {
        for (const t of server.rejected) result.notes.push(`${image.id}: qemu-storage-daemon refused "${t.config.replace(/, aio=.*/, '')}": ${t.stderr.split('\n')[0].replace(/^.*: (?=[^:]+$)/, '')}`);
      }
      if (server.kind === 'fuse-export') {
        for (const w of server.complaints) result.notes.push(`${image.id}: fuse-export (${target}) warned at start: ${w.message}`);
        image.exportDirectIo ??= server.info.directIo;
      }
      server.image = image.id;
      notePeakRss(server);
      state.servers.push(server);
      servers[target] = server;
      say(`${image.id}: ${target} ready (pid ${server.pid}): ${describe(server)}`);
    } catch (error) {
      const extra = (error.stderr ?? '').split('\n').filter((l) => l.trim() && !l.startsWith('{')).slice(-3).join(' | ');
      result.anomalies.push(`${image.id}: the ${target} export failed to start: ${error.message}${extra ? ` -- ${extra}` : ''}`);
      say(`${image.id}: ${target} failed to start: ${error.message}\n${error.stderr ?? ''}`);
    }
  }
  return servers;
}

/** What the result keeps of a stopped export. */
export function serverRecord(server) {
  return {
    image: server.image,
    target: server.target,
    kind: server.kind,
    pid: server.pid,
    args: server.args,
    info: server.info,
    peakRssBytes: server.peakRssBytes,
    ...(server.helper ? { helper: server.helper, helperPeakRssBytes: server.helperPeakRssBytes ?? null } : {}),
    exit: server.exit,
    stopMs: server.stopMs,
    stopped: server.stopped,
    notes: server.notes,
    complaints: server.complaints,
    stderrTail: server.stderr.filter((l) => !l.startsWith('{') || /"level":"(warn|error)"/.test(l)).slice(-20),
  };
}
