// The QMP monitor of fuse-export-storage-daemon, served as QEMU's
// monitor/qmp.c serves one: a Unix socket; for each client a greeting,
// capabilities negotiation, then commands answered one after the other in
// the order they came, and events. It knows no command but
// qmp_capabilities: the daemon hands it the others.
import { lstat, rm } from 'node:fs/promises';
import net from 'node:net';
import { JsonSplitter, type JsonItem } from './json-stream.js';
import { QmpError, checkArguments, checkEnum, type ClientInfo, type QmpErrorClass, type QmpHandler } from './qmp-handler.js';

// The handlers' whole kit comes from this module too.
export { QmpError, checkArguments } from './qmp-handler.js';
export type { ArgSchema, ArgSpec, ArgType, Arguments, ClientInfo, EnumSpec, QmpErrorClass, QmpHandler } from './qmp-handler.js';

/** What the greeting claims, in query-version's form. */
export interface QmpVersion {
  qemu: { major: number; minor: number; micro: number };
  package: string;
}

/** Where the server tells what happens to its clients; winston's logger is one. */
export interface QmpLogger {
  debug(message: string, meta?: Record<string, unknown>): void;
  warn(message: string, meta?: Record<string, unknown>): void;
}

export interface QmpServerOptions {
  /** The socket's path (qsd: `--chardev socket,path=PATH,server=on`). */
  path: string;
  version: QmpVersion;
  /** The commands by name; qmp_capabilities is the server's own. */
  handlers: Readonly<Record<string, QmpHandler>>;
  logger?: QmpLogger;
}

/**
 * Requests a client may have waiting before the server stops reading from
 * it, so that a client cannot queue without bound (QEMU's
 * QMP_REQ_QUEUE_LEN_MAX; without oob QEMU even stops at one).
 */
const MAX_WAITING = 8;
/** Output a client may leave unread: past it the client is dropped, so that events cannot pile up for one that never reads. */
const MAX_UNREAD_OUTPUT = 16 << 20;
/** How long close() lets a client take what was written to it before its socket is destroyed. */
const CLOSE_GRACE_MS = 1000;

/** The capabilities QEMU 7.2 knows (QMPCapability); we offer none of them. */
const KNOWN_CAPABILITIES = { values: ['oob'] } as const;

const NEGOTIATION_ONLY = "Expecting capabilities negotiation with 'qmp_capabilities'";

type Body = { return: unknown } | { error: { class: QmpErrorClass; desc: string } };
/** The request's `id`, present exactly when the request had one (it may be null). */
type IdMember = { id?: unknown };

/**
 * One message a line, as QEMU writes them: CRLF after each, and ASCII only
 * (qmp-spec: the server "sends its output encoded in ASCII").
 */
function encode(message: object): string {
  const json = JSON.stringify(message).replace(/[\u007f-\uffff]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`);
  return `${json}\r\n`;
}

function failure(error: unknown): Body {
  if (error instanceof QmpError) return { error: { class: error.errorClass, desc: error.message } };
  return { error: { class: 'GenericError', desc: error instanceof Error ? error.message : String(error) } };
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function idMember(request: unknown): IdMember {
  return isObject(request) && Object.hasOwn(request, 'id') ? { id: request.id } : {};
}

function timestamp(): { seconds: number; microseconds: number } {
  const microseconds = Math.floor((performance.timeOrigin + performance.now()) * 1000);
  return { seconds: Math.floor(microseconds / 1e6), microseconds: microseconds % 1e6 };
}

/**
 * The command a request names and its arguments, or QEMU's refusal of the
 * request's shape (qapi/qmp-dispatch.c). `exec-oob` is an unexpected member,
 * as QEMU has it where oob was not negotiated.
 */
function readRequest(request: unknown): { command: string; args: Record<string, unknown> } {
  if (!isObject(request)) throw new QmpError('QMP input must be a JSON object');
  for (const [member, value] of Object.entries(request)) {
    if (member === 'execute') {
      if (typeof value !== 'string') throw new QmpError("QMP input member 'execute' must be a string");
    } else if (member === 'arguments') {
      if (!isObject(value)) throw new QmpError("QMP input member 'arguments' must be an object");
    } else if (member !== 'id') {
      throw new QmpError(`QMP input member '${member}' is unexpected`);
    }
  }
  if (!Object.hasOwn(request, 'execute')) throw new QmpError("QMP input lacks member 'execute'");
  return { command: request.execute as string, args: (request.arguments as Record<string, unknown> | undefined) ?? {} };
}

/**
 * qmp_capabilities' `enable`, refused as QEMU's visitor refuses it: an
 * element of the wrong type by its place (`enable[0]`), a name QEMU does
 * not know by 'null' (QEMU's word: a list element has no name of its own).
 */
function capabilitiesToEnable(args: Record<string, unknown>): string[] {
  const { enable = [] } = checkArguments(args, { enable: 'array?' });
  enable.forEach((name, index) => {
    if (typeof name !== 'string') throw new QmpError(`Invalid parameter type for 'enable[${index}]', expected: string`);
    checkEnum('null', name, KNOWN_CAPABILITIES);
  });
  return enable as string[];
}

interface SessionContext {
  handlers: Readonly<Record<string, QmpHandler>>;
  logger?: QmpLogger;
  greeting: string;
  closed: (session: Session) => void;
}

/** One client: its state machine (negotiation, then command mode) and its queue of requests. */
class Session {
  private commandMode = false;
  private readonly splitter = new JsonSplitter();
  private readonly waiting: JsonItem[] = [];
  private busy = false;
  /** Set once the client is gone or being ended: nothing more is written. */
  private closed = false;

  constructor(
    readonly client: ClientInfo,
    private readonly socket: net.Socket,
    private readonly context: SessionContext,
  ) {
    socket.on('data', (chunk: Buffer) => this.receive(chunk));
    // QEMU closes a monitor whose client ends its input: the commands it
    // queued are dropped, not run.
    socket.on('end', () => socket.destroy());
    socket.on('error', (error) => context.logger?.debug('QMP client connection failed', { client: client.id, error: error.message }));
    socket.on('close', () => this.gone());
    this.write(context.greeting);
  }

  /** Sends an encoded event, if the client has left negotiation (QEMU holds events back till then). */
  event(text: string): void {
    if (this.commandMode) this.write(text);
  }

  /** Lets what was written go out, then closes; replies still to come are dropped. */
  end(): void {
    this.closed = true;
    this.waiting.length = 0;
    this.socket.end();
    setTimeout(() => this.socket.destroy(), CLOSE_GRACE_MS).unref();
  }

  private gone(): void {
    this.closed = true;
    this.waiting.length = 0;
    this.context.closed(this);
  }

  private receive(chunk: Buffer): void {
    if (this.closed) return;
    for (const item of this.splitter.feed(chunk)) this.waiting.push(item);
    if (this.waiting.length >= MAX_WAITING) this.socket.pause();
    if (!this.busy) {
      this.pump().catch((error: unknown) => {
        this.context.logger?.warn('QMP client dropped after an internal error', { client: this.client.id, error: String(error) });
        this.socket.destroy();
      });
    }
  }

  /** Answers the waiting requests one at a time, so replies go out in the order requests came. */
  private async pump(): Promise<void> {
    this.busy = true;
    try {
      for (let item = this.waiting.shift(); item && !this.closed; item = this.waiting.shift()) {
        if (this.socket.isPaused() && this.waiting.length < MAX_WAITING) this.socket.resume();
        this.write(await this.answer(item));
      }
    } finally {
      this.busy = false;
    }
  }

  /** The encoded reply to one item of input; never throws. */
  private async answer(item: JsonItem): Promise<string> {
    if ('error' in item) return encode(failure(new QmpError(item.error)));
    const id = idMember(item.value);
    try {
      const { command, args } = readRequest(item.value);
      const value = await this.run(command, args);
      // Encoded here, so that a return value JSON cannot hold fails the command alone.
      return encode({ return: value === undefined ? {} : value, ...id });
    } catch (error) {
      return encode({ ...failure(error), ...id });
    }
  }

  private async run(command: string, args: Record<string, unknown>): Promise<unknown> {
    this.context.logger?.debug('QMP command', { client: this.client.id, command });
    if (command === 'qmp_capabilities') return this.negotiate(args);
    if (!this.commandMode) throw new QmpError(NEGOTIATION_ONLY, 'CommandNotFound');
    const { handlers } = this.context;
    if (!Object.hasOwn(handlers, command)) throw new QmpError(`The command ${command} has not been found`, 'CommandNotFound');
    return handlers[command](args, this.client);
  }

  /** qmp_capabilities, checked in QEMU's order: the arguments, the mode, then what is offered. */
  private negotiate(args: Record<string, unknown>): Record<string, never> {
    const enable = capabilitiesToEnable(args);
    if (this.commandMode) {
      throw new QmpError('Capabilities negotiation is already complete, command ignored', 'CommandNotFound');
    }
    if (enable.length > 0) throw new QmpError(`Capability ${enable.join(', ')} not available`);
    this.commandMode = true;
    return {};
  }

  private write(text: string): void {
    if (this.closed) return;
    if (this.socket.writableLength > MAX_UNREAD_OUTPUT) {
      this.context.logger?.warn('QMP client dropped: it leaves its output unread', { client: this.client.id });
      this.socket.destroy();
      return;
    }
    this.socket.write(text);
  }
}

/**
 * QEMU unlinks whatever is at the path before it binds (server=on); only a
 * socket is removed here, so that a mistyped path cannot cost a file.
 */
async function removeStaleSocket(path: string): Promise<void> {
  const stat = await lstat(path).catch((error: NodeJS.ErrnoException) => {
    if (error.code === 'ENOENT') return undefined;
    throw error;
  });
  if (stat?.isSocket()) await rm(path);
}

export class QmpServer {
  private readonly sessions = new Set<Session>();
  private readonly context: SessionContext;
  private lastClientId = 0;
  private closing: Promise<void> | undefined;

  private constructor(
    private readonly options: QmpServerOptions,
    private readonly server: net.Server,
  ) {
    const { handlers, logger, version } = options;
    this.context = {
      handlers,
      logger,
      greeting: encode({ QMP: { version, capabilities: [] } }),
      closed: (session) => {
        this.sessions.delete(session);
        logger?.debug('QMP client disconnected', { client: session.client.id });
      },
    };
  }

  /** Listens on `options.path`, in place of a stale socket left there. */
  static async listen(options: QmpServerOptions): Promise<QmpServer> {
    await removeStaleSocket(options.path);
    const server = net.createServer();
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(options.path, () => {
        server.off('error', reject);
        resolve();
      });
    });
    const qmp = new QmpServer(options, server);
    server.on('connection', (socket) => qmp.accept(socket));
    server.on('error', (error) => options.logger?.warn('QMP server failed', { path: options.path, error: error.message }));
    return qmp;
  }

  /** Sends an event to every client in command mode. */
  emit(event: string, data?: Record<string, unknown>): void {
    const text = encode({ event, ...(data === undefined ? {} : { data }), timestamp: timestamp() });
    for (const session of this.sessions) session.event(text);
  }

  /** Stops listening, ends the clients and removes the socket file; resolves when all is closed. */
  close(): Promise<void> {
    this.closing ??= this.shutDown();
    return this.closing;
  }

  private async shutDown(): Promise<void> {
    const stopped = new Promise<void>((resolve) => this.server.close(() => resolve()));
    for (const session of this.sessions) session.end();
    await stopped;
    await rm(this.options.path, { force: true });
  }

  private accept(socket: net.Socket): void {
    const client: ClientInfo = { id: ++this.lastClientId };
    this.options.logger?.debug('QMP client connected', { client: client.id });
    this.sessions.add(new Session(client, socket, this.context));
  }
}
