// Summaries of the raw runs, the ratios, the performance targets, and their
// presentation: a text table, a Markdown page and an SVG chart.
import { WORKLOADS } from './fio.mjs';

/** Every target of every section, in the order tables and charts show them. */
export const TARGETS = [
  { id: 'file', label: 'file', color: '#7f8c8d', what: 'fio on the image file itself (the limit)', serverless: true },
  { id: 'io_uring', label: 'io_uring', color: '#2471a3', what: 'fuse-export --io-uring on' },
  { id: 'legacy', label: 'legacy', color: '#e67e22', what: 'fuse-export --io-uring off (/dev/fuse read/write)' },
  {
    id: 'passthrough',
    label: 'passthrough',
    color: '#27ae60',
    what: 'fuse-export --passthrough on --growable (the kernel reads and writes the image itself)',
  },
  { id: 'reference', label: 'reference', color: '#8e44ad', what: 'the minimal C FUSE-over-io_uring server (an in-memory 64 MiB image, filled with data before the runs): the transport’s ceiling' },
  { id: 'qsd', label: 'qsd', color: '#c0392b', what: "qemu-storage-daemon's FUSE export" },
  { id: 'io_uring-raw', label: 'raw', color: '#7f8c8d', what: 'fuse-export --io-uring on, the raw image (the limit of the qcow2 section)' },
  { id: 'io_uring-qcow2', label: 'qcow2', color: '#2471a3', what: 'fuse-export --io-uring on, a qcow2 of the same data' },
  { id: 'qsd-qcow2', label: 'qsd qcow2', color: '#c0392b', what: "qemu-storage-daemon's FUSE export of the same qcow2" },
  { id: 'fio-nbd', label: 'fio nbd', color: '#7f8c8d', what: "fio's own NBD client straight at the server (the limit of the NBD section)", serverless: true },
  { id: 'io_uring-nbd', label: 'io_uring', color: '#2471a3', what: 'fuse-export --io-uring on an nbd+unix:// URI (multi-conn: a connection per thread)' },
  { id: 'io_uring-nbd-1conn', label: 'io_uring 1 conn', color: '#5dade2', what: 'fuse-export --io-uring on, a server that does not offer multi-conn (one shared connection)' },
  { id: 'nbdfuse', label: 'nbdfuse', color: '#d4ac0d', what: "libnbd's FUSE client nbdfuse" },
  { id: 'qsd-nbd', label: 'qsd nbd', color: '#c0392b', what: "qemu-storage-daemon's nbd driver and FUSE export" },
  { id: 'fio-nbd-qemu', label: 'fio qemu-nbd', color: '#7f8c8d', what: "fio's own NBD client at a bare qemu-nbd with the options of fuse-export's child (the limit of the formats section)" },
  { id: 'io_uring-vmdk', label: 'io_uring', color: '#2471a3', what: 'fuse-export --io-uring on --format vmdk (reads of what QEMU maps plainly into the file go to it straight, the rest to its qemu-nbd child over NBD with a connection per thread)' },
  { id: 'qsd-vmdk', label: 'qsd vmdk', color: '#c0392b', what: "qemu-storage-daemon's FUSE export of the same VMDK (its vmdk driver)" },
  { id: 'daemon', label: 'daemon', color: '#16a085', what: "one export of fuse-export-storage-daemon (qsd's command line, as many iothreads as the CLI's threads), over io_uring" },
  { id: 'scale-1', label: '1 export', color: '#16a085', what: 'fio on one export of the scale section’s daemon, its other exports idle (the limit of the scale section)' },
  { id: 'scale-8', label: '8 exports', color: '#0e6655', what: 'the same fio workload on 8 exports of that daemon at once (a job group per export): their IOPS added up' },
];

export const targetById = (id) => TARGETS.find((t) => t.id === id);

/** The targets and workloads of one section as this run measured them (older results: the raw section's). */
export function sectionTargets(result, image) {
  return TARGETS.filter((t) => (image.targets ?? result.config.targets).includes(t.id));
}
export function sectionWorkloads(result, image) {
  return WORKLOADS.filter((w) => (image.workloads ?? result.config.workloads).includes(w.id));
}
/** The section's limit (1.0 on the chart) and the export to beat (null: none): ids. */
export const limitOf = (image) => image.limit ?? 'file';
export const peerOf = (image) => (image.peer === undefined ? 'qsd' : image.peer);

const MiB = 1024 * 1024;

export function median(values) {
  const sorted = values.filter((v) => v !== null && v !== undefined && Number.isFinite(v)).sort((a, b) => a - b);
  if (sorted.length === 0) return null;
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}

const maxOf = (values) => {
  const v = values.filter((x) => x !== null && x !== undefined && Number.isFinite(x));
  return v.length ? Math.max(...v) : null;
};
const minOf = (values) => {
  const v = values.filter((x) => x !== null && x !== undefined && Number.isFinite(x));
  return v.length ? Math.min(...v) : null;
};

/** Median (and spread) per image x workload x target over the good runs (a run redone for steal counts once). */
export function summarise(runs, images) {
  const groups = new Map();
  for (const run of runs.filter((r) => !r.superseded)) {
    const key = `${run.image}\u0000${run.workload}\u0000${run.target}`;
    if (!groups.has(key)) groups.set(key, { image: run.image, workload: run.workload, target: run.target, runs: [] });
    groups.get(key).runs.push(run);
  }
  const summary = [];
  for (const group of groups.values()) {
    const good = group.runs.filter((r) => r.ok);
    const pick = (f) => good.map(f);
    summary.push({
      image: group.image,
      workload: group.workload,
      target: group.target,
      runs: group.runs.length,
      good: good.length,
      iops: median(pick((r) => r.iops)),
      iopsMin: minOf(pick((r) => r.iops)),
      iopsMax: maxOf(pick((r) => r.iops)),
      bwBytes: median(pick((r) => r.bwBytes)),
      clatMeanNs: median(pick((r) => r.clatMeanNs)),
      clatP99Ns: median(pick((r) => r.clatP99Ns)),
      latMeanNs: median(pick((r) => r.latMeanNs ?? null)),
      latP99Ns: median(pick((r) => r.latP99Ns ?? null)),
      cpuUsPerIo: median(pick((r) => r.server?.cpuUsPerIo ?? null)),
      peakRssBytes: maxOf(pick((r) => r.server?.peakRssBytes ?? null)),
      helperPeakRssBytes: maxOf(pick((r) => r.server?.helperPeakRssBytes ?? null)),
      stealShare: maxOf(pick((r) => r.stealShare ?? null)),
    });
  }
  // Ratios of IOPS (the same as of bandwidth at a fixed block size):
  // `vs` against every other target of the section, vsFile / vsQsd against
  // its limit and its peer.
  for (const s of summary) {
    const image = images.find((i) => i.id === s.image) ?? {};
    s.vs = {};
    for (const other of summary.filter((x) => x.image === s.image && x.workload === s.workload && x !== s)) {
      s.vs[other.target] = s.iops !== null && other.iops ? s.iops / other.iops : null;
    }
    s.vsFile = s.vs[limitOf(image)] ?? null;
    s.vsQsd = s.vs[peerOf(image)] ?? null;
  }
  return summary;
}

export function find(summary, image, workload, target) {
  return summary.find((s) => s.image === image && s.workload === workload && s.target === target);
}

/**
 * The performance targets of the issues, each pass / fail / n/a (not
 * measured in this run). `against` is another target of the same section
 * (a ratio of IOPS) or, for `unit: 'µs'`, the target whose mean latency
 * may be exceeded by at most `threshold`.
 */
export function evaluateTargets(summary, servers, images) {
  const results = [];
  // Only the sections this run measured.
  const measuredImages = new Set(images);
  const ratioTarget = (group, image, workload, target, against, threshold, text, limit) => {
    if (!measuredImages.has(image)) return;
    const measured = find(summary, image, workload, target)?.vs?.[against] ?? null;
    // What the section's limit makes against the same peer: a target it
    // misses itself is beyond any export in this run.
    const limitMeasured = limit ? find(summary, image, workload, limit)?.vs?.[against] ?? null : null;
    results.push({
      id: `${target}-${workload}-vs-${against}-${image}`,
      group,
      text,
      image,
      workload,
      target,
      against,
      threshold,
      measured,
      unit: 'x',
      pass: measured === null ? null : measured >= threshold,
      ...(limitMeasured !== null && limitMeasured < threshold ? { beyondLimit: { target: limit, measured: limitMeasured } } : {}),
    });
  };
  const latencyTarget = (group, image, workload, target, against, threshold, text) => {
    if (!measuredImages.has(image)) return;
    const mine = find(summary, image, workload, target)?.latMeanNs;
    const theirs = find(summary, image, workload, against)?.latMeanNs;
    const measured = mine != null && theirs != null ? (mine - theirs) / 1000 : null;
    results.push({ id: `${target}-${workload}-lat-${image}`, group, text, image, workload, target, against, threshold, measured, unit: 'µs', pass: measured === null ? null : measured <= threshold });
  };
  const random = ['randread', 'randwrite'];
  const peak = ['randread-4k-qd16x2', 'randwrite-4k-qd16x2', 'read-1m-qd4', 'write-1m-qd4'];
  for (const rw of random) {
    const w = `${rw}-4k-qd16x2`;
    ratioTarget('transports', 'tmpfs', w, 'io_uring', 'qsd', 7, `io_uring ${rw} 4 KiB QD16x2 (tmpfs) >= 7x qsd`);
    ratioTarget('transports', 'tmpfs', w, 'io_uring', 'file', 0.65, `io_uring ${rw} 4 KiB QD16x2 (tmpfs) >= 0.65x file`);
    ratioTarget('transports', 'tmpfs', w, 'io_uring', 'reference', 0.95, `io_uring ${rw} 4 KiB QD16x2 (tmpfs) >= 0.95x the C reference server`);
    ratioTarget('transports', 'tmpfs', w, 'legacy', 'qsd', 4, `legacy ${rw} 4 KiB QD16x2 (tmpfs) >= 4x qsd`);
  }
  for (const image of ['tmpfs', 'disk']) {
    for (const w of ['read-1m-qd4', 'write-1m-qd4']) {
      const what = w.startsWith('read') ? 'read' : 'write';
      ratioTarget('transports', image, w, 'io_uring', 'file', 0.6, `io_uring 1 MiB sequential ${what} (${image}) >= 0.6x file`);
    }
  }
  for (const rw of random) {
    const w = `${rw}-4k-qd16x2`;
    ratioTarget('disk', 'disk', w, 'io_uring', 'file', 0.95, `io_uring ${rw} 4 KiB QD16x2 (disk, O_DIRECT) >= 0.95x file`);
    ratioTarget('disk', 'disk', w, 'io_uring', 'legacy', 1, `io_uring ${rw} 4 KiB QD16x2 (disk) never behind legacy (>= 1.0x)`);
    latencyTarget('disk', 'disk', `${rw}-4k-qd1`, 'io_uring', 'file', 10, `io_uring ${rw} 4 KiB QD1 (disk): mean latency at most 10 µs over the file's`);
  }
  for (const image of ['tmpfs', 'disk']) {
    const limit = image === 'tmpfs' ? 0.9 : 0.95;
    for (const w of peak) ratioTarget('passthrough', image, w, 'passthrough', 'file', limit, `passthrough ${w} (${image}) >= ${limit}x file`);
  }
  for (const rw of random) {
    const w = `${rw}-4k-qd16x2`;
    ratioTarget('qcow2', 'qcow2', w, 'io_uring-qcow2', 'io_uring-raw', 0.8, `qcow2 ${rw} 4 KiB QD16x2 (tmpfs) >= 0.8x the raw export`);
    ratioTarget('qcow2', 'qcow2', w, 'io_uring-qcow2', 'qsd-qcow2', 5, `qcow2 ${rw} 4 KiB QD16x2 (tmpfs) >= 5x qsd on the qcow2`);
  }
  for (const w of peak) {
    ratioTarget('nbd', 'nbd', w, 'io_uring-nbd', 'nbdfuse', 2.5, `NBD ${w}: io_uring >= 2.5x nbdfuse`, 'fio-nbd');
    ratioTarget('nbd', 'nbd', w, 'io_uring-nbd', 'qsd-nbd', 1.5, `NBD ${w}: io_uring >= 1.5x qsd's nbd driver`, 'fio-nbd');
    ratioTarget('nbd', 'nbd', w, 'io_uring-nbd', 'fio-nbd', 0.7, `NBD ${w}: io_uring >= 0.7x fio's nbd engine`);
  }
  for (const rw of random) {
    const w = `${rw}-4k-qd16x2`;
    ratioTarget('formats', 'formats', w, 'io_uring-vmdk', 'qsd-vmdk', 1.5, `VMDK ${rw} 4 KiB QD16x2: io_uring >= 1.5x qsd on the VMDK`, 'fio-nbd-qemu');
    ratioTarget('formats', 'formats', w, 'io_uring-vmdk', 'fio-nbd-qemu', 0.7, `VMDK ${rw} 4 KiB QD16x2: io_uring >= 0.7x fio's nbd engine at a bare qemu-nbd`);
    ratioTarget('daemon', 'daemon', w, 'daemon', 'io_uring', 0.95, `daemon ${rw} 4 KiB QD16x2: one export of the daemon >= 0.95x the CLI's`);
  }
  for (const server of servers.filter((s) => s.target.startsWith('io_uring') && s.info?.ringQueues)) {
    const queues = server.info?.ringQueues ?? null;
    const depth = server.info?.queueDepth ?? null;
    const limit = queues !== null && depth !== null ? queues * depth * MiB + 32 * MiB : null;
    const measured = server.peakRssBytes ?? null;
    results.push({
      id: `io_uring-rss-${server.image}-${server.target}`,
      group: 'memory',
      text: `${server.target} peak RSS (${server.image}) <= queues x depth x 1 MiB + 32 MiB` + (limit ? ` = ${queues} x ${depth} x 1 MiB + 32 MiB = ${fmtMiB(limit)}` : ''),
      image: server.image,
      threshold: limit,
      measured,
      unit: 'bytes',
      pass: limit === null || measured === null ? null : measured <= limit,
    });
  }
  return results;
}

// ---------------------------------------------------------------- formats

export function fmtIops(v) {
  if (v === null || v === undefined) return '-';
  if (v >= 1e6) return `${(v / 1e6).toFixed(2)}M`;
  if (v >= 1e4) return `${(v / 1e3).toFixed(1)}k`;
  if (v >= 1e3) return `${(v / 1e3).toFixed(2)}k`;
  return v.toFixed(0);
}
export function fmtBw(bytes) {
  if (bytes === null || bytes === undefined) return '-';
  const mib = bytes / MiB;
  return mib >= 100 ? `${mib.toFixed(0)} MiB/s` : `${mib.toFixed(1)} MiB/s`;
}
export function fmtLat(ns) {
  if (ns === null || ns === undefined) return '-';
  const us = ns / 1000;
  if (us >= 10_000) return `${(us / 1000).toFixed(1)} ms`;
  if (us >= 1000) return `${(us / 1000).toFixed(2)} ms`;
  if (us >= 100) return `${us.toFixed(0)} µs`;
  return `${us.toFixed(1)} µs`;
}
export function fmtCpu(us) {
  return us === null || us === undefined ? '-' : `${us.toFixed(2)} µs`;
}
export function fmtMiB(bytes) {
  return bytes === null || bytes === undefined ? '-' : `${(bytes / MiB).toFixed(0)} MiB`;
}
/** A server's peak RSS, with its helpers' (fuse-export's qemu-nbd child) beside it. */
const fmtPeakRss = (s) => fmtMiB(s.peakRssBytes) + (s.helperPeakRssBytes != null ? ` + ${fmtMiB(s.helperPeakRssBytes)}` : '');
export function fmtRatio(r) {
  if (r === null || r === undefined) return '-';
  return r >= 10 ? `${r.toFixed(1)}x` : `${r.toFixed(2)}x`;
}
function fmtSpread(s) {
  if (s.runs > 1 && s.iops && s.iopsMin !== null) {
    return `±${(((s.iopsMax - s.iopsMin) / 2 / s.iops) * 100).toFixed(0)}%`;
  }
  return '';
}
function fmtMeasured(t) {
  if (t.measured === null || t.measured === undefined) return 'not measured';
  if (t.unit === 'µs') return `${t.measured >= 0 ? '+' : ''}${t.measured.toFixed(1)} µs`;
  const value = t.unit === 'bytes' ? fmtMiB(t.measured) : fmtRatio(t.measured);
  return t.beyondLimit ? `${value} (beyond the limit: ${t.beyondLimit.target} itself makes ${fmtRatio(t.beyondLimit.measured)})` : value;
}
export const verdict = (pass) => (pass === null ? 'n/a' : pass ? 'PASS' : 'FAIL');

// ---------------------------------------------------------------- text

function pad(rows) {
  const widths = rows[0].map((_, i) => Math.max(...rows.map((r) => String(r[i]).length)));
  return rows.map((r) => r.map((c, i) => (i === 0 ? String(c).padEnd(widths[i]) : String(c).padStart(widths[i]))).join('  '));
}

/** A target's name, with how many of its runs failed. */
function targetLabel(t, s) {
  return t.label + (s.good < s.runs ? ` (${s.runs - s.good} failed)` : '');
}

/** The measured columns of one summary row, for the text and the Markdown tables. */
function metricCells(s, t, { latP99, none, peer }) {
  return [
    fmtIops(s.iops),
    fmtSpread(s),
    fmtBw(s.bwBytes),
    fmtLat(s.clatMeanNs),
    fmtLat(s.clatP99Ns),
    fmtLat(s.latMeanNs),
    ...(latP99 ? [fmtLat(s.latP99Ns)] : []),
    t.serverless ? none : fmtCpu(s.cpuUsPerIo),
    t.serverless ? none : fmtPeakRss(s),
    fmtRatio(s.vsFile),
    ...(peer ? [fmtRatio(s.vsQsd)] : []),
  ];
}

export function textReport(result) {
  const { summary } = result;
  const lines = [];
  for (const image of result.images) {
    if (image.scale) {
      lines.push('', `=== ${image.label}: ${image.scale.exports} exports of ${fmtMiB(image.size)} images in ${image.dir}, ${image.scale.transport} ===`, '');
      lines.push(...pad(scaleRows(image).map((r) => [`  ${r[0]}`, ...r.slice(1)])), ...scaleFacts(result, image).map((f) => `  - ${f}`));
    } else {
      lines.push('', `=== ${image.label}: ${fmtMiB(image.size)} image ${image.path}, fio direct=${image.fioDirect ? 1 : 0} on the file target ===`);
    }
    for (const w of sectionWorkloads(result, image)) {
      lines.push('', `${w.label}`);
      const rows = [['  target', 'IOPS', 'spread', 'BW', 'clat mean', 'clat p99', 'lat mean', 'CPU/IO', 'peak RSS', ...vsHeaders(image)]];
      for (const t of sectionTargets(result, image)) {
        const s = find(summary, image.id, w.id, t.id);
        if (!s) continue;
        rows.push([`  ${targetLabel(t, s)}`, ...metricCells(s, t, { latP99: false, none: '-', peer: peerOf(image) })]);
      }
      lines.push(...pad(rows));
    }
    lines.push('', `Ratios of IOPS (${image.id}):`);
    lines.push(...pad(ratioRows(result, image).map((r, i) => (i === 0 ? r.map((c, j) => (j === 0 ? `  ${c}` : c)) : [`  ${r[0]}`, ...r.slice(1)]))));
  }
  lines.push('', 'Targets of the performance issue:');
  for (const t of result.targets) lines.push(`  [${verdict(t.pass).padEnd(4)}] ${t.text}: ${fmtMeasured(t)}`);
  if (result.anomalies.length) {
    lines.push('', 'Anomalies:');
    for (const a of result.anomalies) lines.push(`  - ${a}`);
  }
  const notes = [...result.notes, ...(result.observations ?? [])];
  if (notes.length) {
    lines.push('', 'Notes:');
    for (const n of notes) lines.push(`  - ${n}`);
  }
  return lines.join('\n');
}

const vsHeaders = (image) => [`vs ${targetById(limitOf(image)).label}`, ...(peerOf(image) ? [`vs ${targetById(peerOf(image)).label}`] : [])];

/** Pairs worth a ratio beyond `x / limit` and `x / peer`. */
const EXTRA_RATIOS = [
  ['io_uring', 'reference'],
  ['io_uring', 'legacy'],
  ['io_uring-nbd', 'nbdfuse'],
  ['io_uring-nbd', 'io_uring-nbd-1conn'],
];

function ratioRows(result, image) {
  const ids = sectionTargets(result, image).map((t) => t.id);
  const limit = limitOf(image);
  const peer = peerOf(image);
  const cols = [
    ...ids.filter((t) => t !== limit).map((t) => [t, limit]),
    ...ids.filter((t) => t !== limit && t !== peer).map((t) => [t, peer]),
    ...EXTRA_RATIOS.filter(([a, b]) => ids.includes(a) && ids.includes(b)),
  ].filter(([, b]) => ids.includes(b));
  const label = (id) => targetById(id).label;
  const rows = [['workload', ...cols.map(([a, b]) => `${label(a)}/${label(b)}`)]];
  for (const w of sectionWorkloads(result, image)) {
    rows.push([w.id, ...cols.map(([a, b]) => fmtRatio(find(result.summary, image.id, w.id, a)?.vs?.[b]))]);
  }
  return rows;
}

// ---------------------------------------------------------------- scale

const fmtMs = (ms) => (ms === null || ms === undefined ? '-' : ms >= 10_000 ? `${(ms / 1000).toFixed(1)} s` : ms >= 100 ? `${ms.toFixed(0)} ms` : `${ms.toFixed(1)} ms`);

/** What a step of the scale section started the exports with, and what its start time is. */
function scaleStep(step) {
  if (step.how === 'command line') return 'on the command line: daemon start to its serving line';
  if (step.exports === 0) return 'QMP socket alone: daemon start to its serving line';
  if (step.ms === null) return 'over QMP, after the fio runs (peak RSS: over the daemon’s life)';
  return step.exports === 1 ? 'over QMP: blockdev-add to a read answered' : 'over QMP: the first blockdev-add to a read answered by the last';
}

/** The scale section's steps: how the exports were started, how many, start time, RSS, peak RSS, threads. */
function scaleRows(image) {
  return [
    ['Started', 'Exports', 'Start time', 'RSS', 'peak RSS', 'Threads'],
    ...image.scale.steps.map((step) => [scaleStep(step), String(step.exports), step.ms === null ? '' : fmtMs(step.ms), fmtMiB(step.rssBytes), fmtMiB(step.peakRssBytes), String(step.threads ?? '-')]),
  ];
}

/** What the scale section's table stands on: its images, its daemon's exports, what was timed. */
function scaleIntro(image) {
  const { scale } = image;
  const info = scale.exportInfo;
  const export_ = info ? `: ${info.transport}, ${info.threads ?? scale.iothreads} threads, ${info.ringQueues ?? 0} ring queues${info.queueDepth ? ` x ${info.queueDepth}` : ''}, directIo ${info.directIo}` : '';
  return [
    `${scale.exports} raw images of ${fmtMiB(image.size)} in \`${image.dir}\` (${image.fs}), sparse but for the ${scale.busy} that fio reads (filled with data), exported by one fuse-export-storage-daemon: \`driver=file\` nodes with \`cache.direct=${image.cache === 'direct' ? 'on' : 'off'}\`, FUSE exports with \`writable=on\`, \`io-uring=${scale.transport === 'io_uring' ? 'on' : 'off'}\`, \`passthrough=off\` and ${scale.iothreads} iothreads each (\`--threads\`)${export_}.`,
    `The daemon starts twice: with every export on its command line (its start time runs to its \`serving\` line, all mounted), then with a QMP socket alone, the exports added one after another as a management tool adds them (\`blockdev-add\`, then \`block-export-add\`, each command answered before the next goes), timed from the first command to a 4 KiB read answered by the export just added.`,
    `RSS (\`VmRSS\`), peak RSS (\`VmHWM\`) and threads (\`Threads\`) from \`/proc/PID/status\` of the daemon right then. Then fio on the first export, the others idle, and on the first ${scale.busy} at once (a job group of the same workload on each), interleaved; last, every export deleted over QMP and the daemon stopped with SIGTERM.`,
  ].join(' ');
}

/** The scale section's figures beyond its table: per export, its adds and deletes, the fio runs' share per export. */
function scaleFacts(result, image) {
  const { scale } = image;
  const facts = [];
  const qmp = scale.steps.filter((s) => s.how === 'QMP' && s.exports > 0);
  const [one, all] = [qmp[0], qmp.at(-1)];
  if (one && all && all.exports > one.exports) {
    const per = (key) => (all[key] - one[key]) / (all.exports - one.exports);
    facts.push(`Each export added over QMP beyond the first: ${(per('rssBytes') / MiB).toFixed(2)} MiB of RSS and ${per('threads').toFixed(1)} threads, ${fmtMs(per('ms'))} of start time.`);
  }
  if (scale.addMs?.length) {
    const tenth = Math.max(1, Math.floor(scale.addMs.length / 10));
    const mean = (xs) => xs.reduce((a, b) => a + b, 0) / xs.length;
    facts.push(
      `\`blockdev-add\` and \`block-export-add\` of one export: median ${fmtMs(median(scale.addMs))}, slowest ${fmtMs(Math.max(...scale.addMs))}; on average ${fmtMs(mean(scale.addMs.slice(0, tenth)))} over the first tenth of the exports (${tenth}), ${fmtMs(mean(scale.addMs.slice(-tenth)))} over the last.`,
    );
  }
  const named = scale.steps.filter((s) => s.threadNames && s.how !== 'command line' && s.exports === scale.exports);
  const byName = (names) => Object.entries(names).map(([name, n]) => `${n} ${name}`).join(', ');
  if (named.length) {
    facts.push(
      `Threads by name (numbers dropped; \`fuse-export-io\`: the exports' I/O threads, \`iou-wrk-\`: io_uring's kernel workers, \`node\`: the Node.js runtime's): ${named.map((s) => `${s.ms === null ? 'after the fio runs' : `once all ${s.exports} were added over QMP`}, ${byName(s.threadNames)}`).join('; ')}.`,
    );
  }
  const commandLine = scale.steps.find((s) => s.how === 'command line');
  if (scale.deleteMs !== undefined) facts.push(`\`block-export-del\` of all ${scale.exports} to the last \`BLOCK_EXPORT_DELETED\` (each unmounted): ${fmtMs(scale.deleteMs)}.`);
  if (commandLine?.stopMs !== undefined) facts.push(`SIGTERM to the daemon with ${scale.exports} exports on its command line, to its exit (every export drained and unmounted): ${fmtMs(commandLine.stopMs)}.`);
  const shares = result.runs.filter((r) => r.ok && !r.superseded && r.image === image.id && r.fio?.jobs).flatMap((r) => r.fio.jobs.map((j) => j.iops));
  if (shares.length) facts.push(`Within the runs on ${scale.busy} exports at once, each export made from ${fmtIops(Math.min(...shares))} to ${fmtIops(Math.max(...shares))} IOPS.`);
  return facts;
}

// ---------------------------------------------------------------- markdown

const mdRow = (cells) => `| ${cells.join(' | ')} |`;
const mdTable = (rows, align) => [mdRow(rows[0]), mdRow(align ?? rows[0].map((_, i) => (i === 0 ? '---' : '---:'))), ...rows.slice(1).map(mdRow)].join('\n');

/** The page of `result`; `targetIds`: the targets its Method names (default: those of the sections measured). */
export function markdownReport(result, { targetIds } = {}) {
  const { machine, config, summary } = result;
  const out = [];
  const date = result.finishedAt.replace('T', ' ').replace(/\.\d+Z$/, ' UTC');
  out.push('# Benchmarks', '');
  out.push(
    `<!-- Written by bench/run.mjs (npm run bench): rerun it rather than editing these figures by hand. -->`,
    '',
    `Latest figures: ${config.mode === 'full' ? 'full run (`npm run bench`)' : `**${config.mode} run**${config.quick ? ' (`--quick`)' : ''}`} of ${date}, fuse-export ${result.fuseExport.version} at commit \`${result.fuseExport.commit}\`${result.fuseExport.dirty ? ' (with uncommitted changes in the tree)' : ''}.`,
    '',
    `Every figure on this page comes from this one run, on the host named under [Machine](#machine) (${machine.cpuModel}). [PERFORMANCE.md](PERFORMANCE.md) also quotes other runs, some on other hosts (its "Hosts" table says which): absolute figures from different hosts or runs are not comparable with each other; the ratios measured within one run, where the targets were interleaved, are.`,
    '',
    'fio drives the exported file through each target in turn; the chart shows IOPS relative to each section’s limit (1.0 = as fast as the image file itself, the raw export of the same data for qcow2, fio’s own NBD client for NBD). A black tick on a bar marks a target of the issues that the bar met, a red one a target it missed:',
    '',
    '![IOPS relative to each section’s limit](../bench/results/latest.svg)',
    '',
  );

  out.push('## How to reproduce', '');
  out.push(
    'As root on Linux with `/dev/fuse` (the benchmark mounts for real, writes `Y` to `/sys/module/fuse/parameters/enable_uring` for the run and restores the previous value afterwards):',
    '',
    '```sh',
    'npm run bench                                   # every section, 6 s per run, 2 repeats (about an hour)',
    'npm run bench -- --reference PATH/fuse-uring-reference.c   # the same with the minimal C server as a target',
    'npm run bench -- --quick                        # all sections but the disk image, 2 s per run, 1 repeat',
    'npm run bench -- --images formats               # one section: its figures replace that section’s on this page, the others stay',
    'npm run bench -- --images scale                 # 256 exports in one storage daemon (--exports N: another count; --quick: 16)',
    'npm run bench -- --help                         # options: --runtime, --repeats, --images, --targets, --workloads, --size, ...',
    '```',
    '',
    '`scripts/bench.sh` installs what the sections need (fio, qemu-storage-daemon, qemu-img, nbdkit, nbdfuse and nbdcopy, gcc and liburing-dev for the reference server) when missing and builds when a source changed. Results: `bench/results/<timestamp>.json` (all raw runs, summaries, machine), `bench/results/latest.json`, and this page with its charts: `bench/results/latest.svg` from a run of every section, `bench/results/<section>.svg` for a section measured alone (`--images`), whose run the page then names in the section. `--no-docs` writes neither.',
    '',
  );

  out.push('## Machine', '');
  out.push(
    mdTable([
      ['', ''],
      ['Kernel', `${machine.kernel}`],
      ['CPU', `${machine.cpuModel}, ${machine.cores} cores`],
      ['Memory', machine.memory],
      ['Images', result.images.map((i) => `${i.id}: ${i.fs} (${i.dir})`).join('; ')],
      ['fio', machine.fio],
      ['qemu-storage-daemon', machine.qsd],
      ...(machine.qemuNbd ? [['qemu-nbd', machine.qemuNbd]] : []),
      ['Node.js', machine.node],
      ['Load average (1 min) during the run', result.load ? `${result.load.min.toFixed(2)} to ${result.load.max.toFixed(2)}` : '-'],
      ['CPU time taken by the hypervisor (steal) during the counted runs', stealSummary(result)],
    ], ['---', '---']),
    '',
    `Run: ${config.runtime} s per fio run, ${config.repeats} repeat${config.repeats > 1 ? 's' : ''}, ${fmtMiB(config.size)} images, ${config.threads} threads for the exports, total ${(result.durationMs / 60000).toFixed(1)} min.`,
    '',
    '**Noise.** Other engineers run test suites on this machine at the same time, and the host it runs on takes CPU time from it (steal), so figures move by a few percent (sometimes more) from one run to the next; the `spread` column shows half the range of IOPS over the repeats. The interleaving below cancels slow drift, not bursts; runs with heavy steal are redone (see Method).',
    '',
  );

  out.push('## Targets', '');
  out.push(
    'The performance targets of the issues, each marked from the run of its section: the transports on tmpfs (the transport’s own cost), the FUSE path on a disk image opened O_DIRECT, FUSE passthrough, qcow2, NBD, formats served through QEMU (VMDK), and the io_uring export’s peak RSS (at most queues x queue depth x payload (1 MiB) + 32 MiB; the export’s own process).',
    '',
  );
  out.push(
    mdTable([
      ['Group', 'Target', 'Measured', 'Result'],
      ...result.targets.map((t) => [t.group ?? '', t.text, fmtMeasured(t), t.pass === null ? 'n/a (not measured)' : t.pass ? '**pass**' : '**FAIL**']),
    ], ['---', '---', '---:', '---']),
    '',
  );

  for (const image of result.images) {
    out.push(`## Results: ${image.label}`, '');
    const limit = targetById(limitOf(image));
    if (image.scale) out.push(scaleIntro(image), '', mdTable(scaleRows(image)), '', ...scaleFacts(result, image).map((f) => `- ${f}`), '');
    else out.push(
      `Limit of this section (\`vs ${limit.label}\`): ${limit.what}. ` +
      `${fmtMiB(image.size)} image in \`${image.dir}\` (${image.fs}), filled with data; exports with \`--cache ${image.cache}\`` +
        ` (O_DIRECT on this file system ${image.directWorks ? 'works' : 'is refused'}; fuse-export ${image.qemuCache ? `gave its qemu-nbd child \`--cache=${image.qemuCache}\`` : image.exportDirectIo === undefined ? '' : image.exportDirectIo ? 'opened the image O_DIRECT' : 'chose the page cache'}); fio \`direct=${image.fioDirect ? 1 : 0}\` on the file target, \`direct=1\` on the mounts.` +
        (image.qemuNbd ? ` Bare qemu-nbd, as fuse-export starts its child: \`${image.qemuNbd}\`.` : '') +
        (image.qsd ? ` qemu-storage-daemon: ${image.qsd}.` : ''),
      '',
    );
    const rows = [['Workload', 'Target', 'IOPS', 'spread', 'BW', 'clat mean', 'clat p99', 'lat mean', 'lat p99', 'server CPU / I/O', 'peak RSS', ...vsHeaders(image)]];
    const targets = sectionTargets(result, image);
    for (const w of sectionWorkloads(result, image)) {
      for (const t of targets) {
        const s = find(summary, image.id, w.id, t.id);
        if (!s) continue;
        rows.push([
          t.id === targets.find((x) => find(summary, image.id, w.id, x.id))?.id ? w.label : '',
          targetLabel(t, s),
          ...metricCells(s, t, { latP99: true, none: '', peer: peerOf(image) }),
        ]);
      }
    }
    out.push(mdTable(rows, ['---', '---', ...rows[0].slice(2).map(() => '---:')]), '');
    out.push(`Ratios of IOPS (${image.id}):`, '');
    out.push(mdTable(ratioRows(result, image)), '');
  }

  out.push('## Method', '');
  out.push(
    ...[
      `Targets: ${TARGETS.filter((t) => (targetIds ? targetIds.includes(t.id) : result.images.some((i) => sectionTargets(result, i).includes(t)))).map((t) => `\`${t.id}\` = ${t.what}`).join('; ')}. The fuse-export targets run with \`--threads ${config.threads}\` (the CPU count) and the default queue depth; an io_uring export has one ring queue per CPU, and so has the C reference server.`,
      'qcow2: the raw image converted with `qemu-img convert -O qcow2 -o preallocation=metadata`, each exporter on its own copy; the first-touch workload starts each exporter on a fresh, empty image (`qemu-img create`; a sparse file for the raw export) for each run and writes every 4 KiB block once in random order, so every cluster is allocated during the run. NBD: two nbdkit memory servers filled with the image by `nbdcopy`, one offering multi-conn, one with `--filter=multi-conn multi-conn-mode=disable`; qemu-storage-daemon’s nbd driver opens one connection.',
      `qemu-storage-daemon gets the same image and the cache mode fuse-export ended up with (\`cache.direct=on\` when fuse-export's ready line says \`directIo: true\`), \`aio=io_uring\` (formats: the cache and aio modes of fuse-export's qemu-nbd child); it is asked for one iothread per CPU (the multi-queue FUSE export of newer QEMU) and falls back to its default single-threaded export when its version refuses that.`,
      'Every export is started once per image and stays up while all the workloads run. The runs are interleaved: for each workload, for each repeat, each target in turn (the order rotates with the repeat), so drift of the machine hits all targets alike. Figures are medians over the repeats.',
      ...(config.steal
        ? [
            `Steal: this machine is a virtual machine on a shared host, whose hypervisor at times gives half its CPU time or more to other guests for minutes, which slows whichever target runs then. A run during which the steal (from \`/proc/stat\`) exceeded ${Math.round(config.steal.max * 100)}% of the machine's CPU time is redone after a ${config.steal.pauseMs / 1000} s pause, up to ${config.steal.tries} tries in all; the try with the least steal counts (\`--max-steal\`).`,
          ]
        : []),
      `fio: \`ioengine=io_uring\`, \`time_based\`, \`runtime=${config.runtime}\`, \`randrepeat=0\`, \`norandommap\`, \`group_reporting\`, \`lat_percentiles=1\`, JSON output. \`clat\` is fio's completion latency (\`clat_ns\`: submission to completion), \`lat\` the total (\`lat_ns\` = submission time + clat). Compare targets on \`lat\` at iodepth 1: a read or write that the kernel completes inside \`io_uring_enter\` shows its whole time as submission latency and a clat near zero. The file target is the limit at depth, not always at iodepth 1 on tmpfs: fio's O_DIRECT I/O on a tmpfs file goes through io_uring's worker threads (tmpfs cannot do it without blocking), which can make it slower than an export that copies in its own thread. For randrw, IOPS and bandwidth add up, means are weighted by I/O count and p99 is the larger of the read and write p99s.`,
      'Formats: the raw image converted with `qemu-img convert -O vmdk` (monolithicSparse, every grain allocated since the data has no zeros), each exporter on its own copy. The limit is fio’s nbd engine at a bare qemu-nbd started with the options fuse-export gives its own qemu-nbd child (`child_args` in crates/core/src/image/qemu/mod.rs: `--cache=none --aio=native` for `--cache direct`, `--cache=writeback --aio=io_uring` where the file system refuses O_DIRECT), on a Unix socket; qemu-storage-daemon opens the VMDK with the same cache and aio modes. fio’s nbd engine asks for structured replies, on which qemu-nbd looks up the allocation of every range it reads (to send holes as such), while fuse-export’s data connections ask for simple replies: on reads the bare server does more work per request than the export’s child, and the limit is not a ceiling there.',
      "Server CPU per I/O: the export process's utime + stime (all threads, from `/proc/PID/stat`) over the fio run, divided by the I/Os fio completed; for fuse-export serving an image through QEMU, its qemu-nbd child's (the process whose parent is the export and whose name is qemu-nbd) is added. Peak RSS: `VmHWM` of the whole process (for fuse-export that includes the Node.js runtime, about 50 MiB) during each run (reset through `/proc/PID/clear_refs` before it), maximum over the runs; a qemu-nbd child's is shown beside it (`export + child`; their sum bounds the pair's joint peak from above). The RSS target uses the export's own highest value over its whole life.",
      'The image is filled with data before the runs so that reads hit data; writes overwrite it in place. The benchmark measures and does not check correctness: the test suite (`npm test`) does.',
    ].map((x) => `- ${x}`),
    '',
  );

  out.push('## Observations from this run', '');
  if (result.anomalies.length === 0) out.push('Nothing unusual: every export started, no fio errors, no hangs.', '');
  else out.push(...result.anomalies.map((a) => `- ${a}`), '');
  const notes = [...result.notes, ...(result.observations ?? [])];
  if (notes.length) out.push('Notes:', '', ...notes.map((n) => `- ${n}`), '');
  return `${out.join('\n').trimEnd()}\n`;
}

/** The steal of the counted runs, and how many runs were redone for it. */
function stealSummary(result) {
  const counted = result.runs.filter((r) => !r.superseded && r.stealShare !== undefined).map((r) => r.stealShare);
  if (counted.length === 0 || !result.config.steal) return '-';
  const pct = (x) => `${(x * 100).toFixed(1)}%`;
  const redone = result.runs.filter((r) => r.superseded).length;
  return `median ${pct(median(counted))}, highest ${pct(Math.max(...counted))}; ${redone} run${redone === 1 ? '' : 's'} redone for more than ${Math.round(result.config.steal.max * 100)}%`;
}

// ---------------------------------------------------------------- SVG

const esc = (s) => String(s).replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');

/**
 * The height, relative to the section's limit, at which a ratio target of
 * the issues sits on `t.target`'s bar: its threshold times the IOPS of what
 * it is measured against, over the limit's.
 */
function markerLevel(result, image, t) {
  if (t.unit !== 'x') return null;
  if (t.against === limitOf(image)) return t.threshold;
  const against = find(result.summary, image.id, t.workload, t.against);
  return against?.vsFile ? t.threshold * against.vsFile : null;
}

/** Grouped bars: IOPS relative to each section's limit per workload and target, one panel per section. */
export function svgChart(result) {
  const barW = 22;
  const groupGap = 26;
  const left = 56;
  const right = 16;
  const panelH = 270;
  const plotTop = 52;
  const plotH = 160;
  const panels = result.images.map((image) => ({ image, workloads: sectionWorkloads(result, image), targets: sectionTargets(result, image) }));
  const panelW = (p) => left + p.workloads.length * (p.targets.length * barW + groupGap) + right;
  const width = Math.max(...panels.map(panelW), 840);
  const header = 72;
  const height = header + panels.length * panelH;
  const ratios = result.summary.filter((s) => s.vsFile !== null).map((s) => s.vsFile);
  const maxRatio = Math.min(Math.max(1.2, ...ratios), 3);
  const step = maxRatio > 1.6 ? 0.25 : 0.2;
  const top = Math.ceil(maxRatio / step) * step;
  const parts = [];
  parts.push(
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="Helvetica, Arial, sans-serif" font-size="11">`,
    `<rect width="100%" height="100%" fill="#ffffff"/>`,
    `<text x="${left}" y="22" font-size="15" font-weight="bold">fuse-export: IOPS relative to each section’s limit (limit = 1.0)</text>`,
    `<text x="${left}" y="40" fill="#555">${esc(`${result.config.mode} run of ${result.finishedAt.slice(0, 16).replace('T', ' ')} UTC, ${result.config.runtime} s per run x ${result.config.repeats}; Linux ${result.machine.kernel}, ${result.machine.cpuModel}, ${result.machine.cores} cores`)}</text>`,
    `<text x="${left}" y="55" fill="#555">${esc(`Numbers above the bars: IOPS / the limit's IOPS (medians; bars end at ${top}); under each group: the limit's IOPS. Ticks: targets of the issues (black met, red missed).`)}</text>`,
  );
  panels.forEach(({ image, workloads, targets }, p) => {
    const y0 = header + p * panelH;
    const base = y0 + plotTop + plotH;
    const y = (v) => base - (Math.min(v, top) / top) * plotH;
    const groupW = targets.length * barW + groupGap;
    const limit = targetById(limitOf(image));
    parts.push(`<text x="${left}" y="${y0 + 18}" font-size="13" font-weight="bold">${esc(`${image.label} (limit: ${limit.label})`)}</text>`);
    targets.forEach((t, i) => {
      const x = left + i * 150;
      parts.push(
        `<rect x="${x}" y="${y0 + 27}" width="11" height="11" fill="${t.color}"/>`,
        `<text x="${x + 15}" y="${y0 + 37}">${esc(t.label)}</text>`,
      );
    });
    for (let v = 0; v <= top + 1e-9; v += step) {
      const one = Math.abs(v - 1) < 1e-9;
      parts.push(
        `<line x1="${left}" x2="${width - right}" y1="${y(v).toFixed(1)}" y2="${y(v).toFixed(1)}" stroke="${one ? '#333' : '#e3e3e3'}" stroke-width="${one ? 1.2 : 1}"${one ? ' stroke-dasharray="4 3"' : ''}/>`,
        `<text x="${left - 6}" y="${(y(v) + 4).toFixed(1)}" text-anchor="end" fill="#555">${v.toFixed(2)}</text>`,
      );
    }
    workloads.forEach((w, g) => {
      const gx = left + g * groupW + groupGap / 2;
      targets.forEach((t, b) => {
        const s = find(result.summary, image.id, w.id, t.id);
        const x = gx + b * barW;
        if (!s || s.vsFile === null) {
          parts.push(`<text x="${x + barW / 2}" y="${base - 4}" text-anchor="middle" fill="#999" font-size="9">n/a</text>`);
          return;
        }
        const h = base - y(s.vsFile);
        parts.push(
          `<rect x="${x + 1}" y="${y(s.vsFile).toFixed(1)}" width="${barW - 2}" height="${Math.max(h, 0.5).toFixed(1)}" fill="${t.color}"><title>${esc(`${image.id} ${w.label} ${t.label}: ${fmtIops(s.iops)} IOPS, ${fmtBw(s.bwBytes)}, mean ${fmtLat(s.clatMeanNs)}, p99 ${fmtLat(s.clatP99Ns)}; ${fmtRatio(s.vsFile)} ${limit.label}`)}</title></rect>`,
          `<text x="${x + barW / 2}" y="${(y(s.vsFile) - 3).toFixed(1)}" text-anchor="middle" font-size="8.5" fill="#333">${s.vsFile >= 10 ? s.vsFile.toFixed(0) : s.vsFile.toFixed(2)}</text>`,
        );
        for (const target of result.targets.filter((r) => r.image === image.id && r.workload === w.id && r.target === t.id && r.pass !== null)) {
          const level = markerLevel(result, image, target);
          if (level === null) continue;
          parts.push(
            `<line x1="${x - 1}" x2="${x + barW + 1}" y1="${y(level).toFixed(1)}" y2="${y(level).toFixed(1)}" stroke="${target.pass ? '#111' : '#e74c3c'}" stroke-width="2"><title>${esc(`${target.text}: ${fmtMeasured(target)} (${verdict(target.pass)})`)}</title></line>`,
          );
        }
      });
      const cx = gx + (targets.length * barW) / 2;
      const limitRow = find(result.summary, image.id, w.id, limit.id);
      parts.push(
        `<text x="${cx}" y="${base + 14}" text-anchor="middle">${esc(w.short[0])}</text>`,
        `<text x="${cx}" y="${base + 27}" text-anchor="middle">${esc(w.short[1])}</text>`,
        `<text x="${cx}" y="${base + 40}" text-anchor="middle" fill="#777" font-size="9.5">${esc(limitRow ? `${fmtIops(limitRow.iops)} IOPS` : '')}</text>`,
      );
    });
  });
  parts.push('</svg>');
  return `${parts.join('\n')}\n`;
}
