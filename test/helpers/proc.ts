// Child processes with timeouts: every touch of a FUSE mount goes through
// one of these, so a hung request fails a test instead of freezing ava.
import { spawn, type ChildProcess } from 'node:child_process';
import type { ExecutionContext } from 'ava';
import { fileURLToPath } from 'node:url';
import { killGroup as killPidGroup, runCommand } from './run.mjs';

export const PYTHON = '/usr/bin/python3';
export const FSOP = fileURLToPath(new URL('./fsop.py', import.meta.url));

/** Who runs a child process. */
export interface User {
  name: string;
  group: string;
  uid: number;
  gid: number;
}

/** What run() resolves to (runCommand's result, less what only the benchmark reads). */
export interface RunResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  timedOut: boolean;
}

export interface RunOptions {
  timeout?: number;
  user?: User;
  input?: string | Buffer;
  env?: NodeJS.ProcessEnv;
  cwd?: string;
}

/** A command line: numbers are passed as their decimal text. */
export type Argv = (string | number)[];

/** fsop.py's answer: { ok: result } or { errno: 'ENAME', message }. */
// `any`: each operation has its own result.
export type FsopAnswer = { ok?: any; errno?: string; message?: string };

/** Unprivileged identity for tests that need a normal user. */
export const NOBODY: User = { name: 'nobody', group: 'nogroup', uid: 65534, gid: 65534 };

/** The command line that runs `argv` as `user` (undefined: as ourselves). */
export function asUser(user: User | undefined, argv: Argv): string[] {
  if (!user) return argv.map(String);
  return ['setpriv', `--reuid=${user.uid}`, `--regid=${user.gid}`, '--clear-groups', '--', ...argv.map(String)];
}

/** Kills a process group we started (detached children lead their own group). */
export function killGroup(child: ChildProcess, signal: NodeJS.Signals = 'SIGKILL'): void {
  if (child.pid !== undefined) killPidGroup(child.pid, signal);
}

/**
 * Runs a command to completion. Never rejects on a non-zero exit: returns
 * { code, signal, stdout, stderr, timedOut, ... }. A timeout kills the whole group.
 */
export function run(argv: Argv, { timeout = 30_000, user, input, env, cwd }: RunOptions = {}): Promise<RunResult> {
  return runCommand(asUser(user, argv), { timeout, input, env, cwd });
}

/** Like run(), but throws with the output when the command fails. */
export async function check(argv: Argv, options?: RunOptions): Promise<RunResult> {
  const result = await run(argv, options);
  if (result.code !== 0) {
    throw new Error(
      `${argv.join(' ')} exited ${result.timedOut ? 'by timeout' : result.code ?? result.signal}:\n${result.stdout}${result.stderr}`,
    );
  }
  return result;
}

/**
 * One file operation through fsop.py in a child process:
 * resolves to { ok: result } or { errno: 'ENAME', message }.
 */
export async function fsop(op: string, args: Argv, { user, timeout = 20_000, input }: RunOptions = {}): Promise<FsopAnswer> {
  const result = await run([PYTHON, FSOP, op, ...args.map(String)], { user, timeout, input });
  const last = result.stdout.trim().split('\n').at(-1);
  if (result.timedOut) throw new Error(`fsop ${op} ${args.join(' ')} timed out (a hung FUSE request?)`);
  try {
    return JSON.parse(last ?? '') as FsopAnswer;
  } catch {
    throw new Error(`fsop ${op} ${args.join(' ')} failed (${result.code}): ${result.stdout}${result.stderr}`);
  }
}

/** fsop() that must succeed; returns the result. */
// `any`: each operation has its own result.
export async function fsopOk(op: string, args: Argv, options?: RunOptions): Promise<any> {
  const answer = await fsop(op, args, options);
  if (!('ok' in answer)) throw new Error(`fsop ${op} ${args.join(' ')} failed: ${answer.errno} ${answer.message}`);
  return answer.ok;
}

/** Reads bytes through fsop (from a mount, so in a child); `how` 'rdirect' reads with O_DIRECT. */
export async function readVia(
  path: string,
  offset: number,
  length: number,
  options: RunOptions & { how?: string } = {},
): Promise<Buffer> {
  const how = options.how === undefined ? [] : [options.how];
  return Buffer.from(await fsopOk('read', [path, offset, length, ...how], options), 'hex');
}

/** Writes bytes through fsop (fed on stdin); resolves to { ok: bytesWritten } or { errno }. */
export function writeVia(
  path: string,
  offset: number,
  data: string | Buffer,
  options: RunOptions & { how?: string } = {},
): Promise<FsopAnswer> {
  const how = options.how ?? 'rw';
  return fsop('write', [path, offset, '-', how], { ...options, input: Buffer.from(data) });
}

/** Waits up to `ms` for `predicate()` to be true, polling. */
export async function waitUntil(
  predicate: () => unknown,
  { timeout = 10_000, interval = 50, what = 'a condition' }: { timeout?: number; interval?: number; what?: string } = {},
): Promise<void> {
  const deadline = Date.now() + timeout;
  for (;;) {
    if (await predicate()) return;
    if (Date.now() > deadline) throw new Error(`Timed out after ${timeout} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, interval));
  }
}

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** What a child process ended with. */
export interface Exit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

/**
 * Starts a long-running child: { child, output(), waitFor(regex, timeout),
 * exited, done, wait(timeout) }. Its stdout and stderr are collected
 * together; `env` is added to our environment. Nothing stops it but its
 * caller: tests use startChild().
 */
export function spawnChild(argv: Argv, { user, env }: { user?: User; env?: NodeJS.ProcessEnv } = {}) {
  const [cmd, ...args] = asUser(user, argv);
  const child = spawn(cmd, args, { detached: true, env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  let done = false;
  const exited = new Promise<Exit>((resolve) => {
    child.on('close', (code, signal) => {
      done = true;
      resolve({ code, signal });
    });
  });
  child.stdout.setEncoding('utf8').on('data', (d: string) => (output += d));
  child.stderr.setEncoding('utf8').on('data', (d: string) => (output += d));
  return {
    child,
    exited,
    output: () => output,
    get done(): boolean {
      return done;
    },
    waitFor: (regex: RegExp, timeout = 10_000): Promise<void> =>
      waitUntil(() => regex.test(output) || done, { timeout, what: `${regex} from ${argv.join(' ')}` }).then(() => {
        if (!regex.test(output)) throw new Error(`${argv.join(' ')} ended without ${regex}:\n${output}`);
      }),
    /** Waits for the exit; kills it after `timeout`. */
    async wait(timeout = 20_000): Promise<Exit> {
      const timer = setTimeout(() => killGroup(child), timeout);
      const result = await exited;
      clearTimeout(timer);
      return result;
    },
  };
}

/** A child started by spawnChild(). */
export type Child = ReturnType<typeof spawnChild>;

/** spawnChild(), killed in the test's teardown if still running. */
export function startChild(t: ExecutionContext, argv: Argv, options: { user?: User } = {}): Child {
  const started = spawnChild(argv, options);
  t.teardown(async () => {
    if (started.done) return;
    killGroup(started.child);
    await started.exited;
  });
  return started;
}

/** qemu-io -f raw (or `format`) with `commands` on `path`; `ok` when it exited 0 and reported no failure. */
export async function qemuIo(
  path: string,
  commands: string[],
  { cache, user, timeout = 60_000, format = 'raw' }: { cache?: string; user?: User; timeout?: number; format?: string } = {},
): Promise<RunResult & { out: string; ok: boolean }> {
  const argv = ['qemu-io', '-f', format, ...(cache ? ['-t', cache] : [])];
  for (const command of commands) argv.push('-c', command);
  const result = await run([...argv, path], { timeout, user });
  const out = result.stdout + result.stderr;
  return { ...result, out, ok: result.code === 0 && !/fail|error/i.test(out) };
}
