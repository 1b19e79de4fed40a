// The machine the benchmark runs on: what it is (for the report), whether
// it has what the chosen sections need, and the C reference server built
// for it.
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync } from 'node:fs';
import { availableParallelism, cpus, release, totalmem } from 'node:os';
import { join } from 'node:path';
import { state } from './host.mjs';
import { CLI, ROOT } from './paths.mjs';

function sh(cmd, args) {
  const out = spawnSync(cmd, args, { encoding: 'utf8', timeout: 10_000 });
  return out.status === 0 ? out.stdout.trim() : '';
}

export function machineInfo() {
  const cpuinfo = readFileSync('/proc/cpuinfo', 'utf8');
  const model = /^model name\s*:\s*(.+)$/m.exec(cpuinfo)?.[1]?.trim() ?? cpus()[0]?.model ?? 'unknown';
  const memKiB = Number(/^MemTotal:\s+(\d+)/m.exec(readFileSync('/proc/meminfo', 'utf8'))?.[1] ?? 0);
  return {
    kernel: release(),
    cpuModel: model,
    cores: availableParallelism(),
    memory: `${(memKiB / 1024 / 1024).toFixed(1)} GiB`,
    memoryBytes: memKiB * 1024 || totalmem(),
    fio: sh('fio', ['--version']) || 'unknown',
    qsd: sh('qemu-storage-daemon', ['--version']).split('\n')[0] || 'unknown',
    qemuNbd: sh('qemu-nbd', ['--version']).split('\n')[0] || 'unknown',
    node: process.version,
  };
}

export function fuseExportInfo() {
  const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8'));
  return {
    version: pkg.version,
    commit: sh('git', ['-C', ROOT, 'rev-parse', '--short', 'HEAD']) || 'unknown',
    dirty: sh('git', ['-C', ROOT, 'status', '--porcelain', '--', 'ts', 'crates']) !== '',
  };
}

/** Refuses to start, saying all that is missing, when a section could not run. */
export function preflight(config) {
  const problems = [];
  const need = (cmd, args, why) => {
    if (!sh(cmd, args)) problems.push(`${cmd} is missing (${why})`);
  };
  if (process.getuid?.() !== 0) problems.push('run it as root: it mounts FUSE file systems and writes to /sys');
  if (!existsSync('/dev/fuse')) problems.push('/dev/fuse is missing');
  need('fio', ['--version'], 'scripts/bench.sh installs it');
  const targets = config.targets;
  if (targets.some((t) => t.startsWith('qsd'))) need('qemu-storage-daemon', ['--version'], 'Debian package qemu-system-common');
  if (config.images.includes('qcow2') || config.images.includes('formats')) need('qemu-img', ['--version'], 'Debian package qemu-utils');
  if (config.images.includes('formats')) need('qemu-nbd', ['--version'], 'Debian package qemu-utils');
  if (config.images.includes('nbd')) {
    need('nbdkit', ['--version'], 'Debian package nbdkit');
    need('nbdcopy', ['--version'], 'Debian package libnbd-bin');
    if (targets.includes('nbdfuse')) need('nbdfuse', ['--version'], 'Debian package libnbd-bin');
  }
  if (config.reference && !existsSync(config.reference)) problems.push(`--reference ${config.reference}: no such file`);
  if (!existsSync(CLI)) problems.push(`${CLI} is missing: build first (npm run build), or use npm run bench`);
  if (problems.length) throw new Error(problems.join('\n'));
}

/** Compiles the C reference server into a directory of the run's own. */
export function buildReference(source) {
  const dir = mkdtempSync('/tmp/fuse-export-bench-reference-');
  state.dirs.push(dir);
  const binary = `${dir}/reference`;
  const out = spawnSync('gcc', ['-O2', '-o', binary, source, '-luring', '-lpthread'], { encoding: 'utf8', timeout: 120_000 });
  if (out.status !== 0) throw new Error(`compiling ${source} failed (needs gcc and liburing-dev):\n${out.stderr}`);
  return binary;
}
