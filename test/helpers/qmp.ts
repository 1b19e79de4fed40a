// A QMP client for the tests: it connects to a socket, reads the greeting,
// and takes the server's messages a line at a time (the server writes one
// message a line), keeping events apart from replies. Without oob, replies
// come in the order the commands went, so the next reply is the answer to
// the oldest command still unanswered.
import net from 'node:net';

export interface QmpGreeting {
  QMP: {
    version: { qemu: { major: number; minor: number; micro: number }; package: string };
    capabilities: string[];
  };
}

export interface QmpEvent {
  event: string;
  data?: Record<string, unknown>;
  timestamp: { seconds: number; microseconds: number };
}

export interface QmpReply {
  return?: unknown;
  error?: { class: string; desc: string };
  id?: unknown;
}

/** A command's error reply, as execute() rejects with it. */
export class QmpCommandError extends Error {
  readonly class: string;
  readonly desc: string;

  constructor(errorClass: string, desc: string) {
    super(`${errorClass}: ${desc}`);
    this.class = errorClass;
    this.desc = desc;
  }
}

const REPLY_TIMEOUT_MS = 5000;

export class QmpTestClient {
  /** Every event received, in order. */
  readonly events: QmpEvent[] = [];
  private readonly replies: QmpReply[] = [];
  private readonly replyWaiters: Array<{ resolve: (reply: QmpReply) => void; reject: (error: Error) => void }> = [];
  private readonly eventListeners = new Set<(event: QmpEvent) => void>();
  private partial = '';
  private lastId = 0;
  /** Resolves when the connection is closed, by either side. */
  readonly closed: Promise<void>;

  private constructor(private readonly socket: net.Socket) {
    socket.setEncoding('utf8');
    socket.on('data', (text: string) => this.receive(text));
    this.closed = new Promise((resolve) => socket.once('close', () => resolve()));
    void this.closed.then(() => {
      for (const waiter of this.replyWaiters.splice(0)) waiter.reject(new Error('the QMP connection closed'));
    });
    // A reset connection shows as 'close' too; the waiters learn of it there.
    socket.on('error', () => undefined);
  }

  /** Connects and reads the greeting. */
  static async connect(path: string): Promise<{ client: QmpTestClient; greeting: QmpGreeting }> {
    const socket = net.connect(path);
    await new Promise<void>((resolve, reject) => {
      socket.once('connect', resolve);
      socket.once('error', reject);
    });
    const client = new QmpTestClient(socket);
    const greeting = (await client.nextReply()) as QmpGreeting;
    return { client, greeting };
  }

  /** Leaves capabilities negotiation. */
  async negotiate(): Promise<void> {
    await this.execute('qmp_capabilities');
  }

  /** Runs a command: resolves to its `return`, or rejects with a QmpCommandError. */
  async execute(command: string, args?: Record<string, unknown>): Promise<unknown> {
    const id = ++this.lastId;
    this.sendRaw(JSON.stringify({ execute: command, ...(args === undefined ? {} : { arguments: args }), id }));
    const reply = await this.nextReply();
    if (reply.id !== id) throw new Error(`reply for id ${JSON.stringify(reply.id)} where ${id} was awaited`);
    if (reply.error) throw new QmpCommandError(reply.error.class, reply.error.desc);
    return reply.return;
  }

  /** Writes text or bytes as they are: for input that execute() would not make. */
  sendRaw(data: string | Uint8Array): void {
    this.socket.write(data);
  }

  /** The next message that is not an event: a reply, or the greeting. */
  nextReply(timeoutMs = REPLY_TIMEOUT_MS): Promise<QmpReply> {
    const ready = this.replies.shift();
    if (ready) return Promise.resolve(ready);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no QMP reply in ${timeoutMs} ms`)), timeoutMs);
      this.replyWaiters.push({
        resolve: (reply) => (clearTimeout(timer), resolve(reply)),
        reject: (error) => (clearTimeout(timer), reject(error)),
      });
    });
  }

  /** The first event of that name (and that `where` accepts), received already or within the time. */
  waitEvent(name: string, timeoutMs = REPLY_TIMEOUT_MS, where: (event: QmpEvent) => boolean = () => true): Promise<QmpEvent> {
    const wanted = (event: QmpEvent) => event.event === name && where(event);
    const seen = this.events.find(wanted);
    if (seen) return Promise.resolve(seen);
    return new Promise((resolve, reject) => {
      const listener = (event: QmpEvent): void => {
        if (!wanted(event)) return;
        this.eventListeners.delete(listener);
        clearTimeout(timer);
        resolve(event);
      };
      const timer = setTimeout(() => {
        this.eventListeners.delete(listener);
        reject(new Error(`no ${name} event in ${timeoutMs} ms`));
      }, timeoutMs);
      this.eventListeners.add(listener);
    });
  }

  /** Drops the connection at once, as a client that goes away does. */
  async close(): Promise<void> {
    this.socket.destroy();
    await this.closed;
  }

  private receive(text: string): void {
    const lines = (this.partial + text).split('\r\n');
    this.partial = lines.pop() ?? '';
    for (const line of lines) this.dispatch(JSON.parse(line) as QmpEvent | QmpReply);
  }

  private dispatch(message: QmpEvent | QmpReply): void {
    if ('event' in message) {
      this.events.push(message);
      for (const listener of [...this.eventListeners]) listener(message);
      return;
    }
    const waiter = this.replyWaiters.shift();
    if (waiter) waiter.resolve(message);
    else this.replies.push(message);
  }
}
