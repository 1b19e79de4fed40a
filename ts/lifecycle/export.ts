// One export's life in JavaScript: starting → serving → draining → stopped,
// or → halted → stopped. The Rust core serves every request; this class
// decides when to drain, halt and let go, and holds the references.
import { EventEmitter } from 'node:events';
import { resolve } from 'node:path';
import { native, type NativeEvent, type NativeExport, type NativeLatency, type NativeOptions } from '../native.js';
import {
  isRemoteImage,
  resolveOptions,
  type ExportOptions,
  type ImageFormat,
  type IoThreadSet,
  type ResolvedOptions,
  type StartHooks,
} from '../options.js';
import { claimMountpoint, prepareMountpoint, releaseMountpoint, SetupError } from './mountpoint.js';
import { References } from './references.js';
import { StateMachine, type ExportState } from './state.js';

export type { ExportState } from './state.js';
export type Transport = 'io_uring' | 'legacy';
export type StopReason = 'api' | 'signal' | 'unmounted' | 'halted' | (string & {});

/** The core's counters: requests that reached the export. */
export interface CoreStats {
  legacyRequests: number;
  ringRequests: number;
  bytesRead: number;
  bytesWritten: number;
  errors: number;
  inFlight: number;
}

export interface ExportStats extends CoreStats {
  /**
   * The kernel carried reads and writes itself (FUSE passthrough): they
   * never reached the export, so the request and byte counters leave them out.
   */
  passthrough: boolean;
}

export interface ExportInfo {
  mountpoint: string;
  /** The image path, or its URI without secrets. */
  image: string;
  /** The format the image was opened in (`raw`, `qcow2`, `vmdk`...). */
  format: Exclude<ImageFormat, 'auto'>;
  /**
   * Who serves the bytes: `file` (a local file or block device, natively),
   * `nbd` (an NBD server) or `qemu` (QEMU's block layer, a qemu-nbd child).
   */
  backend: 'file' | 'nbd' | 'qemu';
  /** qemu-nbd's version, when `backend` is `qemu`. */
  qemuVersion?: string;
  /** The virtual size (what the exported file holds). */
  size: number;
  writable: boolean;
  growable: boolean;
  transport: Transport;
  /** Why this transport: the kernel's offer, the switch, a fallback. */
  transportReason: string;
  threads: number;
  ringQueues: number;
  queueDepth: number;
  allowOther: boolean;
  directIo: boolean;
  /** The kernel reads and writes the image itself (FUSE passthrough). */
  passthrough: boolean;
  /** Why passthrough is used or not. */
  passthroughReason: string;
}

export interface StoppedEvent extends ExportStats {
  reason: StopReason;
  /** Requests still in flight when the drain gave up (0 after a clean drain). */
  abandoned: number;
}

/** Something worth a warning line; `event` names it for scripts. */
export interface ExportWarning {
  message: string;
  event?: string;
  [field: string]: unknown;
}

export interface FuseExportEvents {
  state: [{ from: ExportState; to: ExportState }];
  warning: [ExportWarning];
  halted: [{ reason: string }];
  stopped: [StoppedEvent];
}

/** What the life cycle needs from the Rust core (a fake one in unit tests). */
export interface Core {
  startExport(
    options: NativeOptions,
    onEvent: (event: NativeEvent) => void,
    ioThreads?: IoThreadSet[],
  ): Promise<CoreExport>;
  startIoThreads(count: number, name: string): IoThreadSet;
  detachMount(path: string): void;
}
export type CoreExport = Pick<
  NativeExport,
  'info' | 'stats' | 'latencies' | 'resize' | 'pause' | 'halt' | 'unmount' | 'abort' | 'stop'
>;

const DRAIN_POLL_MS = 2;
/** The I/O threads get at least this long to finish, even past the deadline. */
const MIN_THREAD_WAIT_MS = 1000;
const OWNER = 'owner';
const CONNECTION = 'connection';

/** A running export. Create it with `FuseExport.start()`. */
export class FuseExport extends EventEmitter<FuseExportEvents> {
  readonly options: ResolvedOptions;
  readonly info: ExportInfo;
  readonly #core: CoreExport;
  readonly #machine = new StateMachine((from, to) => this.emit('state', { from, to }));
  readonly #references: References;
  readonly #dropOwner: () => void;
  readonly #dropConnection: () => void;
  readonly #released: Promise<void>;
  /** Settles when the core reports that the kernel connection really ended. */
  readonly #disconnected: Promise<void>;
  #onDisconnected!: () => void;
  #stopping: Promise<StoppedEvent> | undefined;
  #haltReason: string | undefined;
  #aborted = false;
  #lastStats: CoreStats = { legacyRequests: 0, ringRequests: 0, bytesRead: 0, bytesWritten: 0, errors: 0, inFlight: 0 };

  private constructor(options: ResolvedOptions, info: ExportInfo, core: CoreExport) {
    super();
    this.options = options;
    this.info = info;
    this.#core = core;
    let release!: () => void;
    this.#released = new Promise((r) => (release = r));
    this.#references = new References(release);
    this.#dropOwner = this.#references.take(OWNER);
    this.#dropConnection = this.#references.take(CONNECTION);
    this.#disconnected = new Promise((r) => (this.#onDisconnected = r));
  }

  /** Mounts and serves; resolves when the kernel talks to the export. */
  static async start(options: ExportOptions, hooks: StartHooks = {}, core: Core = native()): Promise<FuseExport> {
    const resolved = resolveOptions(options);
    if (!isRemoteImage(resolved.image)) resolved.image = resolve(resolved.image);
    for (const name of ['keyFile', 'passwordFile', 'caFile', 'overlay'] as const) {
      const path = resolved[name];
      if (path !== undefined) resolved[name] = resolve(path);
    }
    const warnings: ExportWarning[] = [];
    const warn = (warning: ExportWarning) => (hooks.onWarning ? hooks.onWarning(warning) : warnings.push(warning));
    const mountpoint = await prepareMountpoint(resolved.mountpoint, {
      detach: (path) => core.detachMount(path),
      warn: (message, fields) => warn({ message, ...fields }),
    });
    claimMountpoint(mountpoint);
    let exp: FuseExport | undefined;
    const early: NativeEvent[] = [];
    const onEvent = (event: NativeEvent) => (exp ? exp.#onCoreEvent(event) : early.push(event));
    let handle: CoreExport;
    try {
      handle = await core.startExport(
        {
          image: resolved.image,
          mountpoint,
          writable: resolved.writable,
          growable: resolved.growable,
          allowOther: resolved.allowOther,
          ioUring: resolved.ioUring,
          passthrough: resolved.passthrough,
          threads: resolved.threads,
          queueDepth: resolved.queueDepth,
          pollMaxUs: resolved.pollMaxUs,
          cache: resolved.cache,
          format: resolved.format,
          reconnectDelay: resolved.reconnectDelay,
          keyFile: resolved.keyFile,
          passwordFile: resolved.passwordFile,
          caFile: resolved.caFile,
          snapshot: resolved.snapshot,
          overlay: resolved.overlay,
        },
        onEvent,
        hooks.ioThreads,
      );
    } catch (error) {
      releaseMountpoint(mountpoint);
      throw new SetupError((error as Error).message);
    }
    const info = handle.info();
    for (const message of info.warnings) warn({ message });
    exp = new FuseExport(
      { ...resolved, mountpoint },
      {
        mountpoint,
        image: info.image ?? resolved.image,
        backend: info.backend as ExportInfo['backend'],
        ...(info.qemuVersion ? { qemuVersion: info.qemuVersion } : {}),
        format: info.format as ExportInfo['format'],
        size: info.size,
        writable: resolved.writable,
        growable: resolved.growable,
        transport: info.transport as Transport,
        transportReason: info.transportReason,
        threads: info.threads,
        ringQueues: info.ringQueues,
        queueDepth: info.queueDepth,
        allowOther: info.allowOther,
        directIo: info.directIo,
        passthrough: info.passthrough,
        passthroughReason: info.passthroughReason,
      },
      handle,
    );
    exp.#machine.move('serving');
    // Emitted once the caller could subscribe.
    const started = exp;
    setImmediate(() => {
      for (const warning of warnings) started.emit('warning', warning);
      for (const event of early) started.#onCoreEvent(event);
    });
    return exp;
  }

  get state(): ExportState {
    return this.#machine.state;
  }

  get transport(): Transport {
    return this.info.transport;
  }

  /** Counters of the Rust core; the last values once stopped. */
  /**
   * Changes the image's virtual size (QMP's `block_resize`), whatever
   * `growable` says; the file shows it within a second (the kernel's
   * attribute cache).
   */
  resize(size: number): void {
    this.#core.resize(size);
  }

  /** How long the image operations took so far, by class, per bucket of `latencyBounds()`. */
  latencies(): NativeLatency[] {
    return this.#core.latencies();
  }

  stats(): ExportStats {
    if (!this.#machine.is('stopped')) this.#lastStats = this.#core.stats();
    return { ...this.#lastStats, passthrough: this.info.passthrough };
  }

  /**
   * Takes a reference: the export's memory is released only when every
   * holder let go. Returns the function that drops it.
   */
  ref(holder: string): () => void {
    if (this.#machine.is('stopped')) throw new Error('the export was already stopped');
    return this.#references.take(holder);
  }

  /** Who holds the export right now. */
  holders(): string[] {
    return this.#references.holders();
  }

  /**
   * Drains (no new requests; in-flight ones finish), unmounts, waits for the
   * kernel connection to end and for the references to be dropped, then
   * releases the export. All of it within one deadline, the shutdown
   * timeout: past it the connection is aborted (once) and a reference still
   * held is reported and no longer waited for; warnings say what happened.
   * Never hangs. Safe to call more than once: every call gets the same result.
   */
  stop(reason: StopReason = 'api'): Promise<StoppedEvent> {
    this.#stopping ??= this.#shutdown(reason);
    return this.#stopping;
  }

  /**
   * Ends the connection from the kernel's side at once: callers waiting on
   * the file get ENOTCONN. For a second signal, or a drain that never ends.
   */
  abort(): void {
    // Once only: a second abort cannot do better than the first.
    if (this.#aborted || this.#machine.is('stopped')) return;
    this.#aborted = true;
    try {
      this.#core.abort();
    } catch (error) {
      this.#warn('abort-failed', (error as Error).message);
    }
  }

  /** Stops taking requests for good (the reason is reported), then stops. */
  halt(reason: string): Promise<StoppedEvent> {
    this.#core.halt(reason);
    return this.stop('halted');
  }

  #onCoreEvent(event: NativeEvent): void {
    if (event.kind === 'halted') {
      const reason = event.reason ?? 'unknown';
      this.#haltReason = reason;
      this.#machine.move('halted');
      this.emit('halted', { reason });
      void this.stop('halted');
    } else if (event.kind === 'disconnected') {
      // The connection really ended: after our unmount once the last user
      // closed the file, after an abort, or unmounted from outside.
      this.#onDisconnected();
      this.#dropConnection();
      void this.stop('unmounted');
    } else if (event.kind === 'warning') {
      this.emit('warning', { message: event.reason ?? '', event: event.name ?? undefined });
    }
  }

  /**
   * The stop policy, against one deadline: pause → drain → (abort once if the
   * drain did not finish) → unmount → wait for the connection to end (abort
   * once if it does not: the file is still open somewhere) → wait for the
   * references → stop the I/O threads. Every give-up is a warning.
   */
  async #shutdown(reason: StopReason): Promise<StoppedEvent> {
    const timeout = this.options.shutdownTimeout;
    const deadline = Date.now() + timeout;
    this.#machine.move('draining');
    this.#core.pause();
    const abandoned = await this.#drain(deadline);
    if (abandoned > 0 && !this.#aborted) {
      this.#warn('drain-timeout', `${abandoned} request(s) still in flight after ${timeout} ms; aborting the connection`, {
        abandoned,
      });
      this.abort();
    }
    try {
      this.#core.unmount();
    } catch (error) {
      this.#warn('unmount-failed', (error as Error).message);
    }
    if (!(await settlesBefore(this.#disconnected, deadline)) && !this.#aborted) {
      this.#warn(
        'connection-busy',
        `The kernel connection did not end within ${timeout} ms (the file is still open somewhere); aborting it`,
      );
      this.abort();
    }
    // Ended, or given up on after the abort.
    this.#dropConnection();
    this.#dropOwner();
    if (!(await settlesBefore(this.#released, deadline))) {
      const holders = this.#references.holders();
      this.#warn(
        'references-held',
        `Stopping although the export is still held by ${holders.join(', ')} after ${timeout} ms`,
        { holders },
      );
    }
    this.stats();
    const threadWait = Math.max(deadline - Date.now(), MIN_THREAD_WAIT_MS);
    const threadsLeft = await this.#core.stop(threadWait);
    if (threadsLeft > 0) {
      this.#warn(
        'threads-left',
        `${threadsLeft} I/O thread(s) still running after ${threadWait} ms; left to end on their own, their memory kept`,
        { threads: threadsLeft },
      );
    }
    releaseMountpoint(this.info.mountpoint);
    this.#machine.move('stopped');
    const stopped: StoppedEvent = { ...this.stats(), reason: this.#haltReason ? 'halted' : reason, abandoned };
    this.emit('stopped', stopped);
    return stopped;
  }

  #warn(event: string, message: string, fields: Record<string, unknown> = {}): void {
    this.emit('warning', { message, event, ...fields });
  }

  /** Waits until no request is in flight, the deadline passes, or an abort. */
  async #drain(deadline: number): Promise<number> {
    for (;;) {
      const { inFlight } = this.#core.stats();
      if (inFlight === 0 || this.#aborted || Date.now() >= deadline) return inFlight;
      await new Promise((r) => setTimeout(r, DRAIN_POLL_MS));
    }
  }
}

/** Whether `promise` settles before `deadline` (a Date.now() value); never waits past it. */
async function settlesBefore(promise: Promise<unknown>, deadline: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const timedOut = new Promise<false>((r) => (timer = setTimeout(() => r(false), Math.max(deadline - Date.now(), 0))));
  try {
    return await Promise.race([promise.then(() => true), timedOut]);
  } finally {
    clearTimeout(timer);
  }
}
