// A QMP client for the tests (test/helpers/daemon.ts, test/unit/qmp.test.ts)
// and the benchmark (bench/lib/scale.mjs): it connects to a socket, reads
// the greeting, and takes the server's messages a line at a time (the
// server writes one message a line), keeping events apart from replies.
// Without oob, replies come in the order the commands went, so the next
// reply is the answer to the oldest command still unanswered. Plain
// JavaScript with JSDoc types: the benchmark runs under node without tsx.
import net from 'node:net';

/**
 * @typedef {object} QmpGreeting
 * @property {{ version: { qemu: { major: number, minor: number, micro: number }, package: string }, capabilities: string[] }} QMP
 */

/**
 * @typedef {object} QmpEvent
 * @property {string} event
 * @property {Record<string, unknown>} [data]
 * @property {{ seconds: number, microseconds: number }} timestamp
 */

/**
 * @typedef {object} QmpReply
 * @property {unknown} [return]
 * @property {{ class: string, desc: string }} [error]
 * @property {unknown} [id]
 */

/** A command's error reply, as execute() rejects with it. */
export class QmpCommandError extends Error {
  /**
   * @param {string} errorClass
   * @param {string} desc
   */
  constructor(errorClass, desc) {
    super(`${errorClass}: ${desc}`);
    /** @readonly */
    this.class = errorClass;
    /** @readonly */
    this.desc = desc;
  }
}

const REPLY_TIMEOUT_MS = 5000;

export class QmpTestClient {
  /** Every event received, in order. @type {QmpEvent[]} */
  events = [];
  /** @type {QmpReply[]} */
  #replies = [];
  /** @type {Array<{ resolve: (reply: QmpReply) => void, reject: (error: Error) => void }>} */
  #replyWaiters = [];
  /** @type {Set<(event: QmpEvent) => void>} */
  #eventListeners = new Set();
  #partial = '';
  #lastId = 0;
  /** @type {net.Socket} */
  #socket;
  /** Resolves when the connection is closed, by either side. @type {Promise<void>} */
  closed;

  /** Use connect(). @param {net.Socket} socket */
  constructor(socket) {
    this.#socket = socket;
    socket.setEncoding('utf8');
    socket.on('data', (/** @type {string} */ text) => this.#receive(text));
    this.closed = new Promise((resolve) => socket.once('close', () => resolve()));
    void this.closed.then(() => {
      for (const waiter of this.#replyWaiters.splice(0)) waiter.reject(new Error('the QMP connection closed'));
    });
    // A reset connection shows as 'close' too; the waiters learn of it there.
    socket.on('error', () => undefined);
  }

  /**
   * Connects and reads the greeting.
   * @param {string} path
   * @returns {Promise<{ client: QmpTestClient, greeting: QmpGreeting }>}
   */
  static async connect(path) {
    const socket = net.connect(path);
    await new Promise((resolve, reject) => {
      socket.once('connect', resolve);
      socket.once('error', reject);
    });
    const client = new QmpTestClient(socket);
    const greeting = /** @type {QmpGreeting} */ (/** @type {unknown} */ (await client.nextReply()));
    return { client, greeting };
  }

  /** Leaves capabilities negotiation. */
  async negotiate() {
    await this.execute('qmp_capabilities');
  }

  /**
   * Runs a command: resolves to its `return`, or rejects with a QmpCommandError.
   * @param {string} command
   * @param {Record<string, unknown>} [args]
   * @param {number} [timeoutMs] How long its reply may take.
   * @returns {Promise<unknown>}
   */
  async execute(command, args, timeoutMs = REPLY_TIMEOUT_MS) {
    const id = ++this.#lastId;
    this.sendRaw(JSON.stringify({ execute: command, ...(args === undefined ? {} : { arguments: args }), id }));
    const reply = await this.nextReply(timeoutMs);
    if (reply.id !== id) throw new Error(`reply for id ${JSON.stringify(reply.id)} where ${id} was awaited`);
    if (reply.error) throw new QmpCommandError(reply.error.class, reply.error.desc);
    return reply.return;
  }

  /**
   * Writes text or bytes as they are: for input that execute() would not make.
   * @param {string | Uint8Array} data
   */
  sendRaw(data) {
    this.#socket.write(data);
  }

  /**
   * The next message that is not an event: a reply, or the greeting.
   * @param {number} [timeoutMs]
   * @returns {Promise<QmpReply>}
   */
  nextReply(timeoutMs = REPLY_TIMEOUT_MS) {
    const ready = this.#replies.shift();
    if (ready) return Promise.resolve(ready);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no QMP reply in ${timeoutMs} ms`)), timeoutMs);
      this.#replyWaiters.push({
        resolve: (reply) => (clearTimeout(timer), resolve(reply)),
        reject: (error) => (clearTimeout(timer), reject(error)),
      });
    });
  }

  /**
   * The first event of that name (and that `where` accepts), received already or within the time.
   * @param {string} name
   * @param {number} [timeoutMs]
   * @param {(event: QmpEvent) => boolean} [where]
   * @returns {Promise<QmpEvent>}
   */
  waitEvent(name, timeoutMs = REPLY_TIMEOUT_MS, where = () => true) {
    const wanted = (/** @type {QmpEvent} */ event) => event.event === name && where(event);
    const seen = this.events.find(wanted);
    if (seen) return Promise.resolve(seen);
    return new Promise((resolve, reject) => {
      const listener = (/** @type {QmpEvent} */ event) => {
        if (!wanted(event)) return;
        this.#eventListeners.delete(listener);
        clearTimeout(timer);
        resolve(event);
      };
      const timer = setTimeout(() => {
        this.#eventListeners.delete(listener);
        reject(new Error(`no ${name} event in ${timeoutMs} ms`));
      }, timeoutMs);
      this.#eventListeners.add(listener);
    });
  }

  /** Drops the connection at once, as a client that goes away does. */
  async close() {
    this.#socket.destroy();
    await this.closed;
  }

  /** @param {string} text */
  #receive(text) {
    const lines = (this.#partial + text).split('\r\n');
    this.#partial = lines.pop() ?? '';
    for (const line of lines) this.#dispatch(JSON.parse(line));
  }

  /** @param {QmpEvent | QmpReply} message */
  #dispatch(message) {
    if ('event' in message) {
      this.events.push(message);
      for (const listener of [...this.#eventListeners]) listener(message);
      return;
    }
    const waiter = this.#replyWaiters.shift();
    if (waiter) waiter.resolve(message);
    else this.#replies.push(message);
  }
}
