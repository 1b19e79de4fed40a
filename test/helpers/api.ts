// The Node API in the test process. The export serves on its own threads,
// but the tests still do all I/O on the mount through child processes.
// The package by its own name, as users import it (resolved through package.json "exports").
import type { ExecutionContext } from 'ava';
import { FuseExport, OptionError, SetupError, type ExportOptions } from 'fuse-export';
import { assertUnmounted } from './mounts.js';
import { register } from './registry.js';

export { FuseExport, OptionError, SetupError };

/** Rejects when `promise` takes longer than `ms`. */
export function within<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} took longer than ${ms} ms`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** FuseExport.start() with ioUring and passthrough 'off' unless given; stopped in teardown. */
export async function startApi(t: ExecutionContext, options: ExportOptions): Promise<FuseExport> {
  const exp = await within(FuseExport.start({ ioUring: 'off', passthrough: 'off', ...options }), 20_000, 'FuseExport.start()');
  register(t, async (tt) => {
    await within(exp.stop(), 20_000, 'FuseExport.stop()');
    assertUnmounted(tt, exp.info.mountpoint);
  });
  t.teardown(() => within(exp.stop(), 20_000, 'FuseExport.stop() in teardown').catch(() => {}));
  return exp;
}
