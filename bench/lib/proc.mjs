// Child processes, /proc readings and the mount table for the benchmark.
// Every child runs in its own process group (detached), so a Ctrl-C on the
// terminal reaches only the benchmark, which then stops them in order.
import { spawnSync } from 'node:child_process';
import { readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { isFuse, mountsOn, mountTable } from '../../dist/lifecycle/mountinfo.js';
import { runCommand } from '../../test/helpers/run.mjs';

/** Process ids of the children still alive, for the last-resort cleanup. */
export const liveChildren = new Set();

export function track(child) {
  if (child.pid === undefined) return child;
  liveChildren.add(child.pid);
  child.once('exit', () => liveChildren.delete(child.pid));
  return child;
}

export function killPid(pid, signal) {
  try {
    process.kill(pid, signal);
    return true;
  } catch {
    return false;
  }
}

/**
 * Runs a command to completion as the tests do (test/helpers/run.mjs), its
 * group known to the last-resort clean-up. A process stuck in the kernel (a
 * hung FUSE request) may not die at once: given up on 20 s after the kill.
 * `onSpawn(child)` lets the caller keep a handle (to kill it on abort).
 */
export function run(cmd, args, { timeout = 60_000, onSpawn } = {}) {
  return runCommand([cmd, ...args], {
    timeout,
    stuckAfter: 20_000,
    onSpawn: (child) => onSpawn?.(track(child)),
  });
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

export function clockTicks() {
  const out = spawnSync('getconf', ['CLK_TCK'], { encoding: 'utf8' });
  const value = Number.parseInt(out.stdout, 10);
  return Number.isFinite(value) && value > 0 ? value : 100;
}

/** A process's command name and the fields of /proc/PID/stat after it (fields[0] is field 3, state). */
function stat(pid) {
  try {
    const text = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return { comm: text.slice(text.indexOf('(') + 1, text.lastIndexOf(')')), fields: text.slice(text.lastIndexOf(')') + 2).split(' ') };
  } catch {
    return undefined;
  }
}

/** utime + stime of a whole process (all its threads), in clock ticks. */
export function cpuTicks(pid) {
  const fields = stat(pid)?.fields;
  // utime is field 14, stime field 15.
  return fields ? Number(fields[11]) + Number(fields[12]) : undefined;
}

/**
 * The children of `pid` named `comm` (a server's helpers: fuse-export's
 * qemu-nbd child), found by their parent pid (field 4 of /proc/PID/stat).
 */
export function childrenOf(pid, comm) {
  const found = [];
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    const s = stat(name);
    if (s && s.comm === comm && Number(s.fields[1]) === pid) found.push(Number(name));
  }
  return found;
}

/**
 * A server's process and its helpers: its children named `server.helper`
 * (fuse-export's qemu-nbd child), whose CPU time and memory the benchmark
 * counts with the server's.
 */
export const serverPids = (server) => [server.pid, ...(server.helper ? childrenOf(server.pid, server.helper) : [])];

/** CPU ticks of processes `pids`, summed; undefined when one is gone. */
export function cpuOf(pids) {
  const each = pids.map(cpuTicks);
  return each.includes(undefined) ? undefined : each.reduce((a, b) => a + b, 0);
}

/** Peak and current RSS of the helpers `pids`, summed (undefined when there are none). */
export function helperMemory(pids) {
  if (pids.length === 0) return { hwm: undefined, rss: undefined };
  const mems = pids.map(memory);
  return { hwm: mems.reduce((a, m) => a + (m.hwm ?? 0), 0), rss: mems.reduce((a, m) => a + (m.rss ?? 0), 0) };
}

/** Raises the server's whole-life peaks (its own, its helpers') to what they are now. */
export function notePeakRss(server) {
  server.peakRssBytes = Math.max(server.peakRssBytes ?? 0, memory(server.pid).hwm ?? 0);
  const helpers = helperMemory(serverPids(server).slice(1));
  if (helpers.hwm !== undefined) server.helperPeakRssBytes = Math.max(server.helperPeakRssBytes ?? 0, helpers.hwm);
}

/**
 * The machine's CPU time so far, in clock ticks (the first line of
 * /proc/stat): all of it, and `steal`, the part the hypervisor gave to other
 * guests while this one had work to run.
 */
export function machineCpu() {
  const fields = readFileSync('/proc/stat', 'utf8').split('\n', 1)[0].trim().split(/\s+/).slice(1, 9).map(Number);
  // user nice system idle iowait irq softirq steal (guest time is inside user).
  return { total: fields.reduce((a, b) => a + b, 0), steal: fields[7] ?? 0 };
}

/** VmHWM and VmRSS of a process, in bytes, and its thread count (`Threads`). */
export function memory(pid) {
  try {
    const status = readFileSync(`/proc/${pid}/status`, 'utf8');
    const number = (name) => {
      const match = status.match(new RegExp(`^${name}:\\s+(\\d+)`, 'm'));
      return match ? Number(match[1]) : undefined;
    };
    const kib = (name) => (number(name) === undefined ? undefined : number(name) * 1024);
    return { hwm: kib('VmHWM'), rss: kib('VmRSS'), threads: number('Threads') };
  } catch {
    return { hwm: undefined, rss: undefined, threads: undefined };
  }
}

/** A process's threads by name, numbers dropped (`iou-wrk-123` counts as `iou-wrk-`), most first. */
export function threadNames(pid) {
  const counts = {};
  try {
    for (const tid of readdirSync(`/proc/${pid}/task`)) {
      try {
        const name = readFileSync(`/proc/${pid}/task/${tid}/comm`, 'utf8').trim().replace(/\d+/g, '');
        counts[name] = (counts[name] ?? 0) + 1;
      } catch {
        // Gone meanwhile.
      }
    }
  } catch {
    return {};
  }
  return Object.fromEntries(Object.entries(counts).sort((a, b) => b[1] - a[1]));
}

/** Resets a process's VmHWM to its current RSS (Linux >= 4.0); false when refused. */
export function resetPeakRss(pid) {
  try {
    writeFileSync(`/proc/${pid}/clear_refs`, '5');
    return true;
  } catch {
    return false;
  }
}

// The product's reader of /proc/self/mountinfo, which never blocks on FUSE.
export const isMounted = (path) => mountsOn(path).length > 0;

/** The FUSE mounts anywhere under the directory `dir`: their mountpoints. */
export const fuseMountsUnder = (dir) => mountTable().filter((m) => isFuse(m) && m.mountpoint.startsWith(`${dir}/`)).map((m) => m.mountpoint);

/** Lazily detaches everything mounted on `path`; returns how many it detached. */
export function umountLazy(path) {
  let count = 0;
  for (let i = 0; i < 8 && isMounted(path); i += 1) {
    spawnSync('umount', ['-l', path], { timeout: 10_000, stdio: 'ignore' });
    count += 1;
  }
  return count;
}
