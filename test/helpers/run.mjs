// A command run to completion under a timeout, for the tests
// (test/helpers/proc.ts) and the benchmark (bench/lib/proc.mjs). Plain
// JavaScript with JSDoc types: the benchmark runs under node without tsx.
import { spawn } from 'node:child_process';

/**
 * @typedef {object} RunResult
 * @property {number | null} code
 * @property {NodeJS.Signals | null} signal
 * @property {string} stdout
 * @property {string} stderr
 * @property {boolean} timedOut
 * @property {boolean} stuck Still there `stuckAfter` ms after the timeout's SIGKILL (stuck in the kernel on a hung FUSE request): given up on.
 * @property {number} ms How long it ran, in milliseconds.
 */

/**
 * @typedef {object} RunCommandOptions
 * @property {number} [timeout] Milliseconds until the whole group is killed; 0: none.
 * @property {string | Buffer} [input] Written to its stdin.
 * @property {NodeJS.ProcessEnv} [env] Added to our environment.
 * @property {string} [cwd]
 * @property {number} [stuckAfter] Give up waiting this long after the timeout's kill (default: wait).
 * @property {(child: import('node:child_process').ChildProcess) => void} [onSpawn] Lets the caller keep a handle (to kill it on abort).
 */

/** Signals the process group `pid` leads; quiet when it is gone already. */
export function killGroup(pid, signal = 'SIGKILL') {
  try {
    process.kill(-pid, signal);
  } catch {
    // Gone.
  }
}

/**
 * Runs `argv` in a process group of its own. Never rejects on a failure
 * exit, only when it cannot start.
 * @param {(string | number)[]} argv A command line: numbers are passed as their decimal text.
 * @param {RunCommandOptions} [options]
 * @returns {Promise<RunResult>}
 */
export function runCommand(argv, { timeout = 30_000, input, env, cwd, stuckAfter, onSpawn } = {}) {
  const [cmd, ...args] = argv.map(String);
  return new Promise((resolve, reject) => {
    const started = process.hrtime.bigint();
    const child = spawn(cmd, args, {
      cwd,
      env: { ...process.env, ...env },
      detached: true,
      stdio: [input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'],
    });
    onSpawn?.(child);
    let stdout = '';
    let stderr = '';
    let timedOut = false;
    child.stdout.setEncoding('utf8').on('data', (d) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d) => (stderr += d));
    if (input !== undefined) child.stdin?.end(input);
    /** @type {NodeJS.Timeout | undefined} */
    let stuckTimer;
    let settled = false;
    const settle = () => {
      if (settled) return false;
      settled = true;
      clearTimeout(timer);
      clearTimeout(stuckTimer);
      return true;
    };
    /** @param {{ code: number | null, signal: NodeJS.Signals | null, stuck: boolean }} exit */
    const finish = (exit) => {
      if (settle()) resolve({ ...exit, stdout, stderr, timedOut, ms: Number(process.hrtime.bigint() - started) / 1e6 });
    };
    const timer =
      timeout > 0
        ? setTimeout(() => {
            timedOut = true;
            if (child.pid !== undefined) killGroup(child.pid);
            if (stuckAfter !== undefined) stuckTimer = setTimeout(() => finish({ code: null, signal: null, stuck: true }), stuckAfter);
          }, timeout)
        : undefined;
    child.on('error', (error) => {
      if (settle()) reject(error);
    });
    child.on('close', (code, signal) => finish({ code, signal, stuck: false }));
  });
}
