// The `fuse-export` command as a child process: start it, wait for its JSON
// log events, signal it, and make sure it is gone after the test.
import { spawn } from 'node:child_process';
import type { ExecutionContext } from 'ava';
import type { ExportOptions } from 'fuse-export';
import { resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { asUser, killGroup, run, type Argv, type Exit, type RunResult, type User } from './proc.js';
import { assertUnmounted } from './mounts.js';
import { register } from './registry.js';
import { assertPassthroughOfPass, DEFAULT_PASSTHROUGH, formatOfPass, type ReadyPassthrough } from './passthrough-pass.js';

export const CLI = fileURLToPath(new URL('../../dist/cli/main.js', import.meta.url));
const CLI_COMMAND: Argv = [process.execPath, CLI, '--log-format', 'json'];
const READY_TIMEOUT = 20_000;
const EXIT_TIMEOUT = 20_000;

/**
 * One stderr line of the CLI: a JSON log object (`level`, `message`,
 * `timestamp`, `event` and the event's fields), or { raw } for anything else.
 * (`any`: each event carries its own fields.)
 */
export type LogLine = { [field: string]: any };

/** Parses the CLI's stderr: JSON objects, and { raw } for anything else. */
export function parseLines(text: string): LogLine[] {
  return text
    .split('\n')
    .filter((line) => line.trim() !== '')
    .map((line) => {
      try {
        return JSON.parse(line) as LogLine;
      } catch {
        return { raw: line };
      }
    });
}

/** The Node API's options, plus the CLI's --pidfile. */
export type CliOptions = Omit<ExportOptions, 'image' | 'mountpoint'> & { pidfile?: string };

/**
 * Builds the option list from camelCase options, as the Node API takes them.
 * Passthrough is the pass's default unless a test asks for one ('off' but in
 * the passthrough pass): with it the kernel serves reads and writes itself,
 * and the FUSE path under test would see none.
 */
export function cliOptions({
  writable,
  growable,
  allowOther,
  ioUring,
  passthrough = DEFAULT_PASSTHROUGH,
  threads,
  queueDepth,
  pollMaxUs,
  cache,
  format,
  pidfile,
}: CliOptions = {}): string[] {
  const args: string[] = ['--passthrough', passthrough];
  if (writable) args.push('--writable');
  if (growable) args.push('--growable');
  if (allowOther !== undefined) args.push('--allow-other', allowOther);
  if (ioUring !== undefined) args.push('--io-uring', ioUring);
  if (threads !== undefined) args.push('--threads', String(threads));
  if (queueDepth !== undefined) args.push('--queue-depth', String(queueDepth));
  if (pollMaxUs !== undefined) args.push('--poll-max-us', String(pollMaxUs));
  if (cache !== undefined) args.push('--cache', cache);
  if (format !== undefined) args.push('--format', format);
  if (pidfile !== undefined) args.push('--pidfile', pidfile);
  return args;
}

/**
 * How startCli() and spawnCli() start `fuse-export`: as `user`, with `env`
 * added, in `cwd`; `onLine(line)` runs synchronously as each line arrives.
 */
export interface CliStartOptions {
  user?: User;
  env?: NodeJS.ProcessEnv;
  onLine?: (line: LogLine) => void;
  cwd?: string;
  /** What runs before `args` (default: `node CLI --log-format json`; the storage daemon's is its own). */
  command?: Argv;
}

/** A running `fuse-export` started by spawnCli() or startCli(). */
export type CliExport = ReturnType<typeof spawnCli>;
/** ... once it logged its ready line. */
export type ReadyExport = CliExport & { ready: LogLine };

/**
 * Starts `fuse-export --log-format json ...args` and returns a handle:
 * { child, pid, lines, stderr(), event(name, timeout), exited, signal(sig),
 * wait(timeout) }. Nothing stops it but its caller: tests use startCli().
 */
export function spawnCli(args: Argv, { user, env, onLine, cwd, command = CLI_COMMAND }: CliStartOptions = {}) {
  const [cmd, ...rest] = asUser(user, [...command, ...args]);
  const child = spawn(cmd, rest, { cwd, detached: true, stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env } });
  let stderr = '';
  let stdout = '';
  const lines: LogLine[] = [];
  const waiters: { check: (line: LogLine) => void; fail: () => void }[] = [];
  let done = false;
  const exited = new Promise<Exit>((resolve) => {
    child.on('close', (code, signal) => {
      done = true;
      for (const w of waiters.splice(0)) w.fail();
      resolve({ code, signal });
    });
  });
  let partial = '';
  child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
  child.stderr.setEncoding('utf8').on('data', (d: string) => {
    stderr += d;
    partial += d;
    const complete = partial.split('\n');
    partial = complete.pop() ?? '';
    for (const line of parseLines(complete.join('\n'))) {
      lines.push(line);
      // Synchronously, as the line arrives: what a script sees at that instant.
      onLine?.(line);
      for (const w of [...waiters]) w.check(line);
    }
  });

  const handle = {
    child,
    pid: child.pid!,
    /** By convention the last argument. */
    mountpoint: resolve(cwd ?? process.cwd(), String(args.at(-1))),
    lines,
    exited,
    stderr: (): string => stderr,
    stdout: (): string => stdout,
    get done(): boolean {
      return done;
    },
    /** Resolves with the first line whose event is `name`; rejects on exit or timeout. */
    event(name: string, timeout = READY_TIMEOUT): Promise<LogLine> {
      const seen = lines.find((l) => l.event === name);
      if (seen) return Promise.resolve(seen);
      return new Promise((resolve, reject) => {
        const waiter = {
          check: (line: LogLine) => {
            if (line.event !== name) return;
            clearTimeout(timer);
            waiters.splice(waiters.indexOf(waiter), 1);
            resolve(line);
          },
          fail: () => {
            clearTimeout(timer);
            const late = lines.find((l) => l.event === name);
            if (late) resolve(late);
            else reject(new Error(`fuse-export exited before "${name}":\n${stderr}`));
          },
        };
        const timer = setTimeout(() => {
          waiters.splice(waiters.indexOf(waiter), 1);
          reject(new Error(`No "${name}" event within ${timeout} ms:\n${stderr}`));
        }, timeout);
        waiters.push(waiter);
        if (done) waiter.fail();
      });
    },
    /** Sends a signal to the exporter itself (not to its group). */
    signal(sig: NodeJS.Signals = 'SIGTERM'): void {
      if (!done) process.kill(child.pid!, sig);
    },
    /** Waits for the exit; kills the group when it takes longer than `timeout`. */
    async wait(timeout = EXIT_TIMEOUT): Promise<Exit> {
      let timer: NodeJS.Timeout | undefined;
      const timedOut = new Promise<'timeout'>((resolve) => {
        timer = setTimeout(() => resolve('timeout'), timeout);
      });
      const result = await Promise.race([exited, timedOut]);
      clearTimeout(timer);
      if (result === 'timeout') {
        killGroup(child);
        await exited;
        throw new Error(`fuse-export did not exit within ${timeout} ms:\n${stderr}`);
      }
      return result;
    },
  };
  return handle;
}

/**
 * spawnCli() for a test: an export still running when the test ends is
 * stopped with assertions (stopLeftovers), and in teardown (SIGTERM, then
 * SIGKILL) if the test failed before.
 */
export function startCli(t: ExecutionContext, args: Argv, options: CliStartOptions = {}): CliExport {
  const handle = spawnCli(args, options);
  const { child, exited } = handle;
  register(t, async (tt) => {
    if (!handle.done) await stopExport(tt, handle);
  });
  t.teardown(async () => {
    if (handle.done) return;
    killGroup(child, 'SIGTERM');
    const timer = setTimeout(() => killGroup(child, 'SIGKILL'), 10_000);
    await exited;
    clearTimeout(timer);
  });
  return handle;
}

/**
 * Exports an image through the CLI and waits until it is serving.
 * Options as in the Node API (ioUring defaults to 'off'), plus `args` (extra
 * CLI arguments), `user`, `env` and `onLine`. Resolves to the handle with `.ready` (the ready line).
 */
export type ExportImageOptions = CliOptions & {
  image: string;
  mountpoint: string;
  args?: string[];
  user?: User;
  onLine?: (line: LogLine) => void;
  env?: NodeJS.ProcessEnv;
};

export async function exportImage(
  t: ExecutionContext,
  { image, mountpoint, ioUring = 'off', args = [], user, onLine, env, ...options }: ExportImageOptions,
): Promise<ReadyExport> {
  const asked = { ...options, root: (user?.uid ?? 0) === 0 };
  const format = formatOfPass(image, asked);
  const exp = startCli(t, [...cliOptions({ ioUring, ...options, format }), ...args, image, mountpoint], { user, onLine, env });
  const ready = await exp.event('ready');
  const reason = exp.lines.find((l) => l.event === 'transport')?.passthroughReason;
  assertPassthroughOfPass(t, ready as ReadyPassthrough, { ...asked, format }, reason);
  return Object.assign(exp, { ready });
}

/**
 * Stops an export with a signal and checks the clean end: exit 0, a
 * "stopped" line, nothing mounted. Returns the stopped line.
 */
export async function stopExport(t: ExecutionContext, exp: CliExport, signal: NodeJS.Signals = 'SIGTERM'): Promise<LogLine> {
  if (!exp.mountpoint) throw new Error('stopExport: the handle has no mountpoint');
  exp.signal(signal);
  const { code } = await exp.wait();
  t.is(code, 0, `exit status after ${signal}:\n${exp.stderr()}`);
  const stopped = exp.lines.find((l) => l.event === 'stopped');
  t.truthy(stopped, 'a "stopped" line is logged');
  assertUnmounted(t, exp.mountpoint);
  return stopped!;
}

/** Runs the CLI to completion (set-up failures, --help): { code, lines, stderr, stdout }. */
export type CliResult = RunResult & { lines: LogLine[] };

export async function runCli(
  args: Argv,
  { user, timeout = 20_000, json = true }: { user?: User; timeout?: number; json?: boolean } = {},
): Promise<CliResult> {
  const argv = [process.execPath, CLI, ...(json ? ['--log-format', 'json'] : []), ...args];
  const result = await run(argv, { user, timeout });
  return { ...result, lines: parseLines(result.stderr) };
}

/** The message of the first error-level line (or the raw stderr). */
export function errorText(result: CliResult): string {
  const error = result.lines.find((l) => l.level === 'error');
  return error?.message ?? result.stderr;
}
