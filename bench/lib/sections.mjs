// The sections of the benchmark: what each measures, on which image, with
// which targets, against which limit; how each section's image is made and
// how each of its targets starts and is reached by fio.
import { closeSync, constants as fsConstants, copyFileSync, ftruncateSync, mkdirSync, mkdtempSync, openSync } from 'node:fs';
import { extname, join } from 'node:path';
import { DEFAULTS } from '../../dist/options.js';
import { state } from './host.mjs';
import { say } from './log.mjs';
import { CLI, DAEMON } from './paths.mjs';
import { run } from './proc.mjs';
import { qemuAio, startDaemonExport, startFuseExport, startNbdfuse, startNbdkit, startQemuNbd, startQsd, startReference } from './servers.mjs';

const MiB = 1024 * 1024;
const RAW_WORKLOADS = [
  'randread-4k-qd1',
  'randwrite-4k-qd1',
  'randrw70-4k-qd1',
  'randread-4k-qd16x2',
  'randwrite-4k-qd16x2',
  'randrw70-4k-qd16x2',
  'read-1m-qd4',
  'write-1m-qd4',
];
const PEAK_WORKLOADS = ['randread-4k-qd16x2', 'randwrite-4k-qd16x2', 'read-1m-qd4', 'write-1m-qd4'];

/** How many exports of the scale section run fio at once (its target scale-8). */
export const SCALE_BUSY = 8;

/**
 * `limit`: what the section's other targets are measured against (the
 * `vs limit` column, the chart's 1.0); `peer`: the second column, the export
 * to beat (null: none).
 */
export const SECTIONS = [
  {
    id: 'tmpfs',
    kind: 'raw',
    dir: '/dev/shm',
    label: 'tmpfs image (/dev/shm): the transport’s own cost',
    cache: 'direct',
    targets: ['file', 'io_uring', 'legacy', 'passthrough', 'reference', 'qsd'],
    limit: 'file',
    peer: 'qsd',
    workloads: RAW_WORKLOADS,
  },
  {
    id: 'disk',
    kind: 'raw',
    dir: '/var/tmp',
    label: 'disk image (/var/tmp), opened O_DIRECT',
    cache: 'direct',
    targets: ['file', 'io_uring', 'legacy', 'passthrough', 'qsd'],
    limit: 'file',
    peer: 'qsd',
    workloads: RAW_WORKLOADS,
  },
  {
    id: 'qcow2',
    kind: 'qcow2',
    dir: '/dev/shm',
    label: 'qcow2 image on tmpfs (metadata preallocated), against the raw export of the same data',
    cache: 'direct',
    targets: ['io_uring-raw', 'io_uring-qcow2', 'qsd-qcow2'],
    limit: 'io_uring-raw',
    peer: 'qsd-qcow2',
    workloads: [...PEAK_WORKLOADS, 'alloc-randwrite-4k-qd16x2'],
  },
  {
    id: 'nbd',
    kind: 'nbd',
    dir: '/dev/shm',
    label: 'NBD: nbdkit’s memory plugin over a Unix socket',
    cache: 'direct',
    targets: ['fio-nbd', 'io_uring-nbd', 'io_uring-nbd-1conn', 'nbdfuse', 'qsd-nbd'],
    limit: 'fio-nbd',
    peer: 'qsd-nbd',
    workloads: PEAK_WORKLOADS,
  },
  {
    id: 'formats',
    kind: 'vmdk',
    dir: '/dev/shm',
    label: 'VMDK (monolithicSparse) on tmpfs, served through QEMU’s block layer (qemu-nbd)',
    // The export's qemu-nbd child gets --cache=none (--cache writeback
    // where the file system refuses O_DIRECT: prepareSection).
    cache: 'direct',
    targets: ['fio-nbd-qemu', 'io_uring-vmdk', 'qsd-vmdk'],
    limit: 'fio-nbd-qemu',
    peer: 'qsd-vmdk',
    workloads: PEAK_WORKLOADS,
  },
  {
    id: 'daemon',
    kind: 'raw',
    dir: '/dev/shm',
    label: 'one export of fuse-export-storage-daemon against the fuse-export CLI, the same raw image on tmpfs',
    cache: 'direct',
    targets: ['io_uring', 'daemon'],
    limit: 'io_uring',
    peer: 'daemon',
    workloads: ['randread-4k-qd16x2', 'randwrite-4k-qd16x2'],
  },
  {
    // Measured by bench/lib/scale.mjs: --exports exports in one daemon,
    // SCALE_BUSY of them at once under fio.
    id: 'scale',
    kind: 'scale',
    dir: '/dev/shm',
    label: `many exports in one fuse-export-storage-daemon: start time, RSS and threads; randread on one export and on ${SCALE_BUSY} at once`,
    cache: 'direct',
    targets: ['scale-1', 'scale-8'],
    limit: 'scale-1',
    peer: null,
    workloads: ['randread-4k-qd16x2'],
  },
];

/** The section's targets that this run measures: those asked for that can run (the reference server once built). */
export function targetsToRun(section, config) {
  return section.targets.filter((t) => config.activeTargets.includes(t) && (t !== 'reference' || config.referenceBinary));
}

/** Targets that fio reaches without a FUSE server of their own. */
export const SERVERLESS = new Set(['file', 'fio-nbd']);
/** Targets that a `fresh` workload restarts on a new, empty image for each run. */
export const FRESH = new Set(['io_uring-raw', 'io_uring-qcow2', 'qsd-qcow2']);
/** The kinds of image converted from the section's raw one (`qemu-img convert -O KIND`), with their options. */
const CONVERTED = {
  qcow2: ['-o', 'preallocation=metadata'],
  // monolithicSparse, qemu-img's default subformat.
  vmdk: [],
};

async function probeDirect(path) {
  const write = await run('dd', ['if=/dev/zero', `of=${path}`, 'bs=4096', 'count=1', 'oflag=direct', 'conv=notrunc', 'status=none'], { timeout: 30_000 });
  const read = await run('dd', [`if=${path}`, 'of=/dev/null', 'bs=4096', 'count=1', 'iflag=direct', 'status=none'], { timeout: 30_000 });
  return write.code === 0 && read.code === 0;
}

async function must(what, cmd, args, timeout = 300_000) {
  const out = await run(cmd, args, { timeout });
  if (out.code !== 0) throw new Error(`${what} failed (${cmd} exited ${out.code ?? out.signal}):\n${out.stderr}${out.stdout.slice(0, 2000)}`);
  return out;
}

/**
 * The section's image, filled with data: a raw file for every section (the
 * qcow2 is converted from it, the NBD servers are filled from it); the NBD
 * servers are started here.
 */
export async function prepareSection(section, config) {
  const workdir = mkdtempSync(join(section.dir, 'fuse-export-bench-'));
  state.dirs.push(workdir);
  const path = join(workdir, 'image.raw');
  sparseFile(path, config.size);
  const directWorks = await probeDirect(path);
  say(`${section.id}: filling ${config.size / MiB} MiB image ${path} with data (O_DIRECT ${directWorks ? 'works' : 'refused'})`);
  const fill = await must('filling the image', 'fio', [
    '--name=fill', `--filename=${path}`, '--rw=write', '--bs=1m', `--size=${config.size}`, '--ioengine=io_uring', '--iodepth=8',
    `--direct=${directWorks ? 1 : 0}`, '--end_fsync=1', '--fallocate=none', '--output-format=json',
  ], 900_000);
  const fs = (await run('stat', ['-f', '-c', '%T', workdir])).stdout.trim() || 'unknown';
  const image = {
    id: section.id,
    kind: section.kind,
    label: section.label,
    dir: section.dir,
    cache: section.cache,
    limit: section.limit,
    peer: section.peer,
    path,
    workdir,
    size: config.size,
    fs,
    directWorks,
    fioDirect: directWorks,
    fillMs: Math.round(fill.ms),
  };
  if (CONVERTED[section.kind]) {
    image.converted = join(workdir, `image.${section.kind}`);
    await must(`converting the image to ${section.kind}`, 'qemu-img', ['convert', '-f', 'raw', '-O', section.kind, ...CONVERTED[section.kind], path, image.converted]);
  }
  if (section.kind === 'vmdk') {
    // What the export's qemu-nbd child gets for --cache direct, and what the
    // bare qemu-nbd and qemu-storage-daemon get with it: O_DIRECT, where
    // the file system takes it (QEMU's cache=none fails where it does not).
    if (!directWorks) image.cache = 'writeback';
    image.qemuCache = image.cache === 'direct' ? 'none' : 'writeback';
  }
  if (section.kind === 'nbd') {
    // Two servers of the same data: one offers multi-conn (nbdkit's memory
    // plugin does), one is told not to, to see what one connection costs.
    image.nbd = {};
    const servers = { multi: {}, single: { filters: ['multi-conn'], params: ['multi-conn-mode=disable'] } };
    for (const [name, options] of Object.entries(servers)) {
      const server = await startNbdkit({ target: `nbdkit-${name}`, dir: workdir, plugin: ['memory', `size=${config.size}`], ...options });
      state.servers.push(server);
      await must(`filling the ${name}-connection NBD server`, 'nbdcopy', [path, server.uri]);
      image.nbd[name] = { socket: server.socket, uri: server.uri, config: server.info.config };
    }
  }
  return image;
}

/** A new sparse file of `size` bytes at `path` (a raw image with no data). */
export function sparseFile(path, size) {
  const fd = openSync(path, 'w');
  ftruncateSync(fd, size);
  closeSync(fd);
}

/** A fresh, empty image for a `fresh` workload's run of `target`. */
async function freshImage(image, target) {
  const path = join(image.workdir, `fresh-${target}.${target === 'io_uring-raw' ? 'raw' : 'qcow2'}`);
  if (target === 'io_uring-raw') {
    sparseFile(path, image.size);
  } else {
    await must('creating a fresh qcow2', 'qemu-img', ['create', '-q', '-f', 'qcow2', path, String(image.size)]);
  }
  return path;
}

/**
 * `target`'s own copy of the image at `path` (an exporter that writes locks
 * its image, as QEMU does). A raw image, where O_DIRECT works, is written
 * like the original (1 MiB O_DIRECT writes): on this machine's disk a copy
 * made through the page cache took 4 KiB O_DIRECT random writes at half the
 * rate of the original (28k vs 57k IOPS, fio on the files themselves), which
 * made every export look slow against the file.
 */
async function copyFor(image, path, target) {
  const ext = extname(path);
  const copy = join(image.workdir, `image-${target}${ext}`);
  if (image.directWorks && ext === '.raw') {
    await must('copying the image', 'dd', [`if=${path}`, `of=${copy}`, 'bs=1M', 'iflag=direct', 'oflag=direct', 'conv=fsync', 'status=none'], 900_000);
  } else {
    copyFileSync(path, copy, fsConstants.COPYFILE_FICLONE);
  }
  return copy;
}

/** A new file to mount on, known to the clean-up. */
export function mountFile(image, name) {
  const mountpoint = join(image.workdir, `mnt-${name}`);
  closeSync(openSync(mountpoint, 'w'));
  state.mountpoints.push(mountpoint);
  return mountpoint;
}

/**
 * Starts `target` of `image`'s section: the server, with `imagePath` (the
 * file it serves, removed after a fresh run) and `file` (what fio opens) set.
 * `fresh`: on a new, empty image (see FRESH).
 */
export async function startTarget(target, image, config, { fresh = false } = {}) {
  // A fresh run's export mounts beside the section's own, which stays up.
  const name = fresh ? `${target}-fresh` : target;
  const fuseExport = async (transport, imagePath, format) => {
    const mountpoint = mountFile(image, name);
    return startFuseExport({
      cli: CLI,
      target,
      image: imagePath,
      format,
      mountpoint,
      transport,
      threads: config.threads,
      cache: image.cache,
      queueDepth: config.queueDepth,
    });
  };
  const qsd = async (options) => {
    const mountpoint = mountFile(image, name);
    // The cache mode fuse-export actually uses (it may decline O_DIRECT,
    // e.g. on a memory-backed image), or else what the file system allows.
    // For an image served by qemu-nbd, the cache and aio modes of the
    // export's child.
    const directIo = image.qemuCache ? image.qemuCache === 'none' : image.exportDirectIo ?? image.directWorks;
    const firstAio = image.qemuCache ? qemuAio(image.qemuCache) : undefined;
    const server = await startQsd({ target, mountpoint, threads: config.threads, directIo, firstAio, ...options });
    image.qsd = server.info.config + (options.nbdSocket ? '' : `, cache.direct=${directIo ? 'on' : 'off'}`);
    return server;
  };
  const source = async (path) => (fresh ? freshImage(image, target) : copyFor(image, path, target));
  let server;
  let imagePath;
  switch (target) {
    case 'io_uring':
    case 'legacy':
    case 'passthrough':
      imagePath = await copyFor(image, image.path, target);
      server = await fuseExport(target, imagePath, 'raw');
      break;
    case 'daemon': {
      imagePath = await copyFor(image, image.path, target);
      const mountpoint = mountFile(image, name);
      server = await startDaemonExport({ daemon: DAEMON, target, image: imagePath, mountpoint, threads: config.threads, cache: image.cache });
      break;
    }
    case 'io_uring-raw':
      imagePath = await source(image.path);
      server = await fuseExport('io_uring', imagePath, 'raw');
      break;
    case 'io_uring-qcow2':
      imagePath = await source(image.converted);
      server = await fuseExport('io_uring', imagePath, 'qcow2');
      break;
    case 'io_uring-nbd':
    case 'io_uring-nbd-1conn':
      server = await fuseExport('io_uring', image.nbd[target === 'io_uring-nbd' ? 'multi' : 'single'].uri, undefined);
      break;
    case 'qsd':
      imagePath = await copyFor(image, image.path, target);
      server = await qsd({ image: imagePath });
      break;
    case 'qsd-qcow2':
      imagePath = await source(image.converted);
      server = await qsd({ image: imagePath, format: 'qcow2' });
      break;
    case 'qsd-nbd':
      server = await qsd({ nbdSocket: image.nbd.multi.socket });
      break;
    case 'fio-nbd-qemu':
      imagePath = await copyFor(image, image.converted, target);
      server = await startQemuNbd({ target, image: imagePath, format: image.kind, socket: join(image.workdir, 'qemu-nbd.sock'), cache: image.qemuCache });
      image.qemuNbd = server.info.config;
      break;
    case 'io_uring-vmdk':
      imagePath = await copyFor(image, image.converted, target);
      server = await fuseExport('io_uring', imagePath, image.kind);
      break;
    case 'qsd-vmdk':
      imagePath = await copyFor(image, image.converted, target);
      server = await qsd({ image: imagePath, format: image.kind });
      break;
    case 'nbdfuse': {
      const dir = join(image.workdir, `mnt-${target}`);
      mkdirSync(dir, { recursive: true });
      state.mountpoints.push(dir);
      server = await startNbdfuse({ target, dir, uri: image.nbd.multi.uri });
      break;
    }
    case 'reference': {
      server = await startReference({ target, binary: config.referenceBinary, mountpoint: mountFile(image, target), queues: config.threads, depth: config.queueDepth ?? DEFAULTS.queueDepth });
      break;
    }
    default:
      throw new Error(`no way to start target ${target}`);
  }
  server.imagePath = imagePath;
  server.file ??= server.mountpoint;
  return server;
}

/** Where fio goes for `target`: { filename }, { filenames } or { nbdUri }, and whether O_DIRECT. */
export function fioWhere(target, image, server) {
  if (target === 'file') return { where: { filename: image.path }, direct: image.fioDirect };
  if (target === 'fio-nbd') return { where: { nbdUri: image.nbd.multi.uri }, direct: false };
  if (target === 'fio-nbd-qemu') return { where: { nbdUri: server.uri }, direct: false };
  if (target === 'scale-8') return { where: { filenames: server.files }, direct: true };
  return { where: { filename: server.file }, direct: true };
}
