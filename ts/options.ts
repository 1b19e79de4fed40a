// The options of an export, shared by the CLI and the Node API: defaults,
// and validation with messages that name the option and the fix.
import { availableParallelism } from 'node:os';

export type Switch = 'on' | 'off' | 'auto';
export type CacheMode = 'direct' | 'writeback';
/** How the image's bytes are laid out; `auto` recognises qcow2 by its header, else raw. */
export type ImageFormat = 'auto' | 'raw' | 'qcow2';

export interface ExportOptions {
  /**
   * Disk image file or block device to export, or an NBD URI
   * (`nbd://HOST[:PORT][/EXPORT]`, `nbd+unix:///EXPORT?socket=PATH`, `nbds://`).
   */
  image: string;
  /** Existing regular file that becomes the image. */
  mountpoint: string;
  writable?: boolean;
  growable?: boolean;
  allowOther?: Switch;
  ioUring?: Switch;
  /** FUSE passthrough: the kernel reads and writes the image itself. */
  passthrough?: Switch;
  threads?: number;
  queueDepth?: number;
  /**
   * Microseconds an I/O thread may busy-poll for its next completion before
   * it sleeps, adapted to how soon completions come (0: never poll). Cuts
   * the latency of shallow I/O at the cost of CPU while it lasts, and costs
   * deep I/O its batching: off (0) unless asked for. 250 suits a disk.
   */
  pollMaxUs?: number;
  cache?: CacheMode;
  /** `auto` (default): qcow2 when the header says so, else raw. */
  format?: ImageFormat;
  /** Milliseconds a stop waits for in-flight requests before it aborts. */
  shutdownTimeout?: number;
  /**
   * NBD images: seconds requests wait for a lost server to come back before
   * they fail with EIO; 0 (the default) halts the export when it goes.
   */
  reconnectDelay?: number;
}

export type ResolvedOptions = Required<ExportOptions>;

/** How `start()` reports what happens before it resolves. */
export interface StartHooks {
  /**
   * Warnings raised while starting (a dead mount cleared, a fallback taken),
   * as they happen. Without it they are emitted as 'warning' events right
   * after `start()` resolves.
   */
  onWarning?: (warning: { message: string; event?: string; [field: string]: unknown }) => void;
}

export const SWITCHES: readonly Switch[] = ['on', 'off', 'auto'];
export const CACHE_MODES: readonly CacheMode[] = ['direct', 'writeback'];
export const FORMATS: readonly ImageFormat[] = ['auto', 'raw', 'qcow2'];
export const MAX_THREADS = 1024;
export const MAX_QUEUE_DEPTH = 4096;
export const MAX_POLL_US = 10_000;

export const DEFAULTS = {
  writable: false,
  growable: false,
  allowOther: 'auto' as Switch,
  ioUring: 'auto' as Switch,
  passthrough: 'auto' as Switch,
  threads: availableParallelism(),
  queueDepth: 64,
  pollMaxUs: 0,
  cache: 'direct' as CacheMode,
  format: 'auto' as ImageFormat,
  shutdownTimeout: 10_000,
  reconnectDelay: 0,
};

/** Whether the image argument names an NBD server rather than a file. */
export function isNbdUri(image: string): boolean {
  return /^nbds?(\+unix)?:\/\//.test(image);
}

export class OptionError extends Error {
  override name = 'OptionError';
}

function integerIn(name: string, value: number, min: number, max: number): number {
  if (!Number.isInteger(value) || value < min || value > max) {
    throw new OptionError(`${name} must be a whole number from ${min} to ${max}, not ${value}`);
  }
  return value;
}

function oneOf<T extends string>(name: string, value: T, allowed: readonly T[]): T {
  if (!allowed.includes(value)) {
    throw new OptionError(`${name} must be one of ${allowed.join(', ')}, not ${JSON.stringify(value)}`);
  }
  return value;
}

export function resolveOptions(options: ExportOptions): ResolvedOptions {
  if (typeof options.image !== 'string' || options.image === '') {
    throw new OptionError('an image path is required');
  }
  if (typeof options.mountpoint !== 'string' || options.mountpoint === '') {
    throw new OptionError('a mountpoint path is required');
  }
  const merged = { ...DEFAULTS, ...stripUndefined(options) } as ResolvedOptions;
  if (merged.growable && !merged.writable) {
    throw new OptionError('--growable needs --writable');
  }
  oneOf('allow-other', merged.allowOther, SWITCHES);
  oneOf('io-uring', merged.ioUring, SWITCHES);
  oneOf('passthrough', merged.passthrough, SWITCHES);
  oneOf('cache', merged.cache, CACHE_MODES);
  oneOf('format', merged.format, FORMATS);
  integerIn('threads', merged.threads, 1, MAX_THREADS);
  integerIn('queue-depth', merged.queueDepth, 1, MAX_QUEUE_DEPTH);
  integerIn('poll-max-us', merged.pollMaxUs, 0, MAX_POLL_US);
  integerIn('shutdown-timeout', merged.shutdownTimeout, 0, 24 * 3600 * 1000);
  if (!Number.isFinite(merged.reconnectDelay) || merged.reconnectDelay < 0 || merged.reconnectDelay > 3600) {
    throw new OptionError(`reconnect-delay must be from 0 to 3600 seconds, not ${merged.reconnectDelay}`);
  }
  if (merged.reconnectDelay > 0 && !isNbdUri(merged.image)) {
    throw new OptionError('--reconnect-delay applies to NBD images only (nbd://, nbd+unix://)');
  }
  return merged;
}

function stripUndefined<T extends object>(value: T): Partial<T> {
  return Object.fromEntries(Object.entries(value).filter(([, v]) => v !== undefined)) as Partial<T>;
}
