// The Node API in the test process. The export serves on its own threads,
// but the tests still do all I/O on the mount through child processes.
// The package by its own name, as users import it (resolved through package.json "exports").
import type { ExecutionContext } from 'ava';
import { FuseExport, OptionError, SetupError, type ExportOptions } from 'fuse-export';
import { assertUnmounted } from './mounts.js';
import { register } from './registry.js';
import { assertPassthroughOfPass, DEFAULT_PASSTHROUGH, formatOfPass } from './passthrough-pass.js';

export { FuseExport, OptionError, SetupError };

/** Rejects when `promise` takes longer than `ms`. */
export function within<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} took longer than ${ms} ms`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** FuseExport.start() with ioUring 'off' and the pass's passthrough and format unless given; stopped in teardown. */
export async function startApi(t: ExecutionContext, options: ExportOptions): Promise<FuseExport> {
  const asked = { ...options, root: true };
  const format = formatOfPass(options.image, asked);
  const started = FuseExport.start({ ioUring: 'off', passthrough: DEFAULT_PASSTHROUGH, ...options, format });
  const exp = await within(started, 20_000, 'FuseExport.start()');
  register(t, async (tt) => {
    await within(exp.stop(), 20_000, 'FuseExport.stop()');
    assertUnmounted(tt, exp.info.mountpoint);
  });
  t.teardown(() => within(exp.stop(), 20_000, 'FuseExport.stop() in teardown').catch(() => {}));
  assertPassthroughOfPass(t, exp.info, { ...asked, format }, exp.info.passthroughReason);
  return exp;
}
