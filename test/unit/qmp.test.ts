// The QMP server over real Unix sockets in a temporary directory: the
// greeting, negotiation, dispatch and its errors in QEMU's words, input cut
// anyhow, per-client order, clients that vanish, events, and close().
import test, { type ExecutionContext } from 'ava';
import { existsSync, mkdtempSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { QmpError, QmpServer, checkArguments, type QmpHandler, type QmpLogger, type QmpVersion } from '../../ts/daemon/qmp.js';
import { QmpCommandError, QmpTestClient, type QmpReply } from '../helpers/qmp.mjs';

const VERSION: QmpVersion = { qemu: { major: 7, minor: 2, micro: 0 }, package: 'fuse-export-storage-daemon 0.1.0' };

interface LogEntry {
  level: 'debug' | 'warn';
  message: string;
  meta?: Record<string, unknown>;
}

interface Started {
  server: QmpServer;
  path: string;
  logs: LogEntry[];
}

/** Handlers every test may call; a test adds its own. */
function baseHandlers(): Record<string, QmpHandler> {
  return {
    echo: (args) => args,
    nothing: () => undefined,
    whoami: (_args, client) => client.id,
    add: (args) => {
      const { a, b } = checkArguments(args, { a: 'int', b: 'int', note: 'str?', mode: { values: ['up', 'down'], optional: true } });
      return a + b;
    },
  };
}

function tempDir(t: ExecutionContext): string {
  const dir = mkdtempSync(join(tmpdir(), 'qmp-test-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

async function start(t: ExecutionContext, handlers: Record<string, QmpHandler> = {}): Promise<Started> {
  const path = join(tempDir(t), 'qmp.sock');
  const logs: LogEntry[] = [];
  const logger: QmpLogger = {
    debug: (message, meta) => void logs.push({ level: 'debug', message, meta }),
    warn: (message, meta) => void logs.push({ level: 'warn', message, meta }),
  };
  const server = await QmpServer.listen({ path, version: VERSION, handlers: { ...baseHandlers(), ...handlers }, logger });
  t.teardown(() => server.close());
  return { server, path, logs };
}

async function connect(t: ExecutionContext, path: string, { negotiate = true } = {}): Promise<QmpTestClient> {
  const { client } = await QmpTestClient.connect(path);
  t.teardown(() => client.close());
  if (negotiate) await client.negotiate();
  return client;
}

async function rejects(t: ExecutionContext, promise: Promise<unknown>, errorClass: string, desc: string | RegExp): Promise<void> {
  const error = await t.throwsAsync(promise, { instanceOf: QmpCommandError });
  t.is(error?.class, errorClass);
  if (typeof desc === 'string') t.is(error?.desc, desc);
  else t.regex(error?.desc ?? '', desc);
}

function deferred<T>(): { promise: Promise<T>; resolve: (value: T) => void } {
  let resolve!: (value: T) => void;
  const promise = new Promise<T>((settle) => (resolve = settle));
  return { promise, resolve };
}

async function waitFor(condition: () => boolean, what: string): Promise<void> {
  for (let waited = 0; !condition(); waited += 10) {
    if (waited > 5000) throw new Error(`still waiting for ${what}`);
    await sleep(10);
  }
}

/** Sends raw input and returns the replies it brings. */
async function replies(client: QmpTestClient, input: string | Uint8Array, count: number): Promise<QmpReply[]> {
  client.sendRaw(input);
  const received: QmpReply[] = [];
  while (received.length < count) received.push(await client.nextReply());
  return received;
}

test('the greeting names the version given and offers no capability', async (t) => {
  const { path } = await start(t);
  const { client, greeting } = await QmpTestClient.connect(path);
  t.teardown(() => client.close());
  t.deepEqual(greeting, { QMP: { version: VERSION, capabilities: [] } });
});

test('output is ASCII, one message a CRLF-terminated line', async (t) => {
  const { path } = await start(t, { snowman: () => 'é☃' });
  const socket = net.connect(path);
  t.teardown(() => socket.destroy());
  let received = '';
  socket.setEncoding('utf8').on('data', (text: string) => (received += text));
  socket.write('{"execute": "qmp_capabilities"}{"execute": "snowman"}');
  await waitFor(() => received.split('\r\n').length === 4, 'three lines');
  const lines = received.split('\r\n');
  t.is(lines[3], '', 'the last line ends with CRLF too');
  t.is(lines[2], '{"return":"\\u00e9\\u2603"}');
  t.regex(received, /^[\x00-\x7f]*$/);
});

test('negotiation mode takes qmp_capabilities alone; after it, commands run and it is refused', async (t) => {
  let echoes = 0;
  const { path } = await start(t, { echo: (args) => (echoes++, args) });
  const client = await connect(t, path, { negotiate: false });
  const negotiating = "Expecting capabilities negotiation with 'qmp_capabilities'";
  await rejects(t, client.execute('echo'), 'CommandNotFound', negotiating);
  await rejects(t, client.execute('no-such-command'), 'CommandNotFound', negotiating);
  await rejects(t, client.execute('qmp_capabilities', { enable: ['oob'] }), 'GenericError', 'Capability oob not available');
  await rejects(t, client.execute('qmp_capabilities', { enable: ['telepathy'] }), 'GenericError', "Parameter 'null' does not accept value 'telepathy'");
  await rejects(t, client.execute('qmp_capabilities', { enable: [7] }), 'GenericError', "Invalid parameter type for 'enable[0]', expected: string");
  await rejects(t, client.execute('qmp_capabilities', { enable: 'oob' }), 'GenericError', "Invalid parameter type for 'enable', expected: array");
  await rejects(t, client.execute('qmp_capabilities', { other: true }), 'GenericError', "Parameter 'other' is unexpected");
  t.is(echoes, 0);
  t.deepEqual(await client.execute('qmp_capabilities', { enable: [] }), {});
  t.deepEqual(await client.execute('echo', { n: 1 }), { n: 1 });
  await rejects(t, client.execute('qmp_capabilities'), 'CommandNotFound', 'Capabilities negotiation is already complete, command ignored');
  t.is(echoes, 1);
});

test('commands reach their handlers with their arguments and their client; no value returns {}', async (t) => {
  const { path } = await start(t, { list: () => ['a', 1] });
  const first = await connect(t, path);
  const second = await connect(t, path);
  t.deepEqual(await first.execute('echo', { 'node-name': 'disk0', nested: { size: 1 } }), { 'node-name': 'disk0', nested: { size: 1 } });
  t.deepEqual(await first.execute('echo'), {}, 'no arguments: an empty object');
  t.deepEqual(await first.execute('nothing'), {});
  t.deepEqual(await first.execute('list'), ['a', 1]);
  t.is(await first.execute('whoami'), 1);
  t.is(await second.execute('whoami'), 2);
});

test('the id is echoed, whatever JSON value it is, in success and error alike', async (t) => {
  const { path } = await start(t);
  const client = await connect(t, path);
  const ids: unknown[] = [7, 'seven', { deep: [1, { x: null }] }, null, 0];
  for (const id of ids) {
    const [success, failure] = await replies(client, JSON.stringify({ execute: 'nothing', id }) + JSON.stringify({ execute: 'no-such', id }), 2);
    t.deepEqual(success, { return: {}, id });
    t.deepEqual(failure, { error: { class: 'CommandNotFound', desc: 'The command no-such has not been found' }, id });
  }
  const [bare] = await replies(client, '{"execute": "nothing"}', 1);
  t.deepEqual(bare, { return: {} }, 'no id given: none in the reply');
});

test("an unknown command is CommandNotFound, Object's own names included", async (t) => {
  const { path } = await start(t);
  const client = await connect(t, path);
  for (const command of ['no-such', 'toString', '__proto__', 'constructor', 'hasOwnProperty']) {
    await rejects(t, client.execute(command), 'CommandNotFound', `The command ${command} has not been found`);
  }
});

test("requests of the wrong shape are refused in QEMU's words, with the id when there is one", async (t) => {
  const { path } = await start(t);
  const client = await connect(t, path);
  const cases: Array<[string, QmpReply]> = [
    ['[]', { error: { class: 'GenericError', desc: 'QMP input must be a JSON object' } }],
    ['42 ', { error: { class: 'GenericError', desc: 'QMP input must be a JSON object' } }],
    ['{"arguments": {}, "id": 1}', { error: { class: 'GenericError', desc: "QMP input lacks member 'execute'" }, id: 1 }],
    ['{"execute": "echo", "bogus": 1, "id": 2}', { error: { class: 'GenericError', desc: "QMP input member 'bogus' is unexpected" }, id: 2 }],
    ['{"execute": "echo", "arguments": [1], "id": 3}', { error: { class: 'GenericError', desc: "QMP input member 'arguments' must be an object" }, id: 3 }],
    ['{"execute": 5, "id": 4}', { error: { class: 'GenericError', desc: "QMP input member 'execute' must be a string" }, id: 4 }],
    ['{"exec-oob": "echo", "id": 5}', { error: { class: 'GenericError', desc: "QMP input member 'exec-oob' is unexpected" }, id: 5 }],
  ];
  for (const [input, expected] of cases) t.deepEqual((await replies(client, input, 1))[0], expected, input);
});

test('malformed JSON is a GenericError, and the same connection goes on', async (t) => {
  const { path } = await start(t);
  const client = await connect(t, path);
  const [error, ok] = await replies(client, '{"execute": }\n{"execute": "echo", "arguments": {"n": 1}, "id": 1}', 2);
  t.is(error?.error?.class, 'GenericError');
  t.regex(error?.error?.desc ?? '', /^JSON parse error, /);
  t.false('id' in (error ?? {}), 'a parse error has no id');
  t.deepEqual(ok, { return: { n: 1 }, id: 1 });
  // Unbalanced input holds the parser until the client resets it with 0xFF, as qmp-spec says.
  client.sendRaw('{"execute": "echo", "arguments": {');
  const [reset, after] = await replies(client, Buffer.concat([Uint8Array.of(0xff), Buffer.from('{"execute": "nothing", "id": 2}')]), 2);
  t.deepEqual(reset, { error: { class: 'GenericError', desc: "JSON parse error, stray '\\xff'" } });
  t.deepEqual(after, { return: {}, id: 2 });
});

test('objects cut into single bytes, each its own write, are read whole', async (t) => {
  const { path } = await start(t);
  const client = await connect(t, path);
  const bytes = Buffer.from('{"execute": "echo", "arguments": {"s": "é}{"}, "id": "a"}  {"execute": "nothing", "id": "b"}');
  for (const byte of bytes) {
    client.sendRaw(Uint8Array.of(byte));
    // A moment between writes, so that the server reads them one at a time.
    await sleep(1);
  }
  t.deepEqual(await client.nextReply(), { return: { s: 'é}{' }, id: 'a' });
  t.deepEqual(await client.nextReply(), { return: {}, id: 'b' });
});

test('several objects in one write are each answered, in order', async (t) => {
  const { path } = await start(t);
  const client = await connect(t, path);
  const input = [1, 2, 3].map((n) => JSON.stringify({ execute: 'echo', arguments: { n }, id: n })).join('');
  t.deepEqual(await replies(client, input, 3), [1, 2, 3].map((n) => ({ return: { n }, id: n })));
});

test("a handler's schema refuses arguments in QEMU's words", async (t) => {
  const { path } = await start(t);
  const client = await connect(t, path);
  await rejects(t, client.execute('add', { a: 1 }), 'GenericError', "Parameter 'b' is missing");
  await rejects(t, client.execute('add', { a: 1, b: '2' }), 'GenericError', "Invalid parameter type for 'b', expected: integer");
  await rejects(t, client.execute('add', { a: 1.5, b: 2 }), 'GenericError', "Invalid parameter type for 'a', expected: integer");
  await rejects(t, client.execute('add', { a: 1, b: 2, note: false }), 'GenericError', "Invalid parameter type for 'note', expected: string");
  await rejects(t, client.execute('add', { a: 1, b: 2, mode: 'sideways' }), 'GenericError', "Parameter 'mode' does not accept value 'sideways'");
  await rejects(t, client.execute('add', { a: 1, b: 2, c: 3 }), 'GenericError', "Parameter 'c' is unexpected");
  t.is(await client.execute('add', { a: 1, b: 2, note: 'x', mode: 'up' }), 3);
});

test('checkArguments: every type, optional members, and the order QEMU reports in', (t) => {
  const schema = { s: 'str', i: 'int', b: 'bool', n: 'number', o: 'object', a: 'array', x: 'any', maybe: 'int?' } as const;
  const good = { s: '', i: -3, b: false, n: 0.5, o: {}, a: [], x: null };
  t.is(checkArguments(good, schema), good);
  const bad: Array<[string, unknown, string]> = [
    ['s', 1, 'string'],
    ['i', 2 ** 53, 'integer'],
    ['b', 'true', 'boolean'],
    ['n', '1', 'number'],
    ['o', [], 'object'],
    ['a', {}, 'array'],
    ['maybe', null, 'integer'],
  ];
  for (const [name, value, expected] of bad) {
    t.throws(() => checkArguments({ ...good, [name]: value }, schema), {
      instanceOf: QmpError,
      message: `Invalid parameter type for '${name}', expected: ${expected}`,
    });
  }
  t.throws(() => checkArguments({ extra: 1, s: 1 }, { s: 'str', i: 'int' }), { message: "Invalid parameter type for 's', expected: string" });
  t.throws(() => checkArguments({ extra: 1, s: 'x' }, { s: 'str', i: 'int' }), { message: "Parameter 'i' is missing" });
  t.throws(() => checkArguments({ extra: 1, s: 'x' }, { s: 'str' }), { message: "Parameter 'extra' is unexpected" });
  t.throws(() => checkArguments({ kind: 1 }, { kind: { values: ['fuse'] } }), { message: "Invalid parameter type for 'kind', expected: string" });
});

test("a handler's errors become error replies: its class, or GenericError", async (t) => {
  const { path } = await start(t, {
    missing: () => {
      throw new QmpError("Cannot find device='nope' nor node-name='nope'", 'DeviceNotFound');
    },
    generic: () => {
      throw new QmpError('no good');
    },
    broken: async () => {
      throw new Error('it broke');
    },
    odd: () => {
      throw 'a string';
    },
    unencodable: () => 1n,
  });
  const client = await connect(t, path);
  await rejects(t, client.execute('missing'), 'DeviceNotFound', "Cannot find device='nope' nor node-name='nope'");
  await rejects(t, client.execute('generic'), 'GenericError', 'no good');
  await rejects(t, client.execute('broken'), 'GenericError', 'it broke');
  await rejects(t, client.execute('odd'), 'GenericError', 'a string');
  await rejects(t, client.execute('unencodable'), 'GenericError', /BigInt/);
  t.deepEqual(await client.execute('nothing'), {}, 'the connection goes on');
});

test("a slow command delays its client's later replies, not another client's", async (t) => {
  const gate = deferred<string>();
  const { path } = await start(t, { slow: () => gate.promise });
  const slowClient = await connect(t, path);
  const other = await connect(t, path);
  const order: string[] = [];
  const slow = slowClient.execute('slow').then((value) => (order.push('slow'), value));
  const after = slowClient.execute('echo', { n: 2 }).then((value) => (order.push('after'), value));
  t.deepEqual(await other.execute('echo', { n: 'other' }), { n: 'other' });
  await sleep(50);
  t.deepEqual(order, [], 'the command after the slow one waits for it');
  gate.resolve('done');
  t.is(await slow, 'done');
  t.deepEqual(await after, { n: 2 });
  t.deepEqual(order, ['slow', 'after']);
});

test('many commands pipelined behind a slow one are all answered, in order', async (t) => {
  const gate = deferred<string>();
  const { path } = await start(t, { slow: () => gate.promise });
  const client = await connect(t, path);
  const count = 40;
  const input = JSON.stringify({ execute: 'slow', id: 0 }) + Array.from({ length: count }, (_, n) => JSON.stringify({ execute: 'echo', arguments: { n }, id: n + 1 })).join('');
  const answered = replies(client, input, count + 1);
  await sleep(50);
  gate.resolve('done');
  t.deepEqual(await answered, [{ return: 'done', id: 0 }, ...Array.from({ length: count }, (_, n) => ({ return: { n }, id: n + 1 }))]);
});

test('a client gone mid-command loses its replies; the server goes on serving', async (t) => {
  const started = deferred<void>();
  const gate = deferred<string>();
  let echoes = 0;
  const { path, logs } = await start(t, {
    slow: () => (started.resolve(), gate.promise),
    echo: (args) => (echoes++, args),
  });
  const leaving = await connect(t, path);
  const lost = [leaving.execute('slow'), leaving.execute('echo')].map((reply) => reply.catch((error: Error) => error.message));
  await started.promise;
  await leaving.close();
  await waitFor(() => logs.some((entry) => entry.message === 'QMP client disconnected' && entry.meta?.client === 1), 'the server to see the client go');
  gate.resolve('too late');
  t.deepEqual(await Promise.all(lost), ['the QMP connection closed', 'the QMP connection closed']);
  const next = await connect(t, path);
  t.deepEqual(await next.execute('echo', { n: 1 }), { n: 1 });
  t.is(echoes, 1, 'the command queued behind the slow one was dropped, not run');
  t.deepEqual(logs.filter((entry) => entry.level === 'warn'), []);
});

test('events reach the clients in command mode only', async (t) => {
  const { server, path } = await start(t);
  const negotiated = await connect(t, path);
  const negotiating = await connect(t, path, { negotiate: false });
  const before = Date.now() / 1000;
  server.emit('BLOCK_EXPORT_DELETED', { id: 'export0' });
  const event = await negotiated.waitEvent('BLOCK_EXPORT_DELETED');
  t.deepEqual(event.data, { id: 'export0' });
  t.true(Number.isInteger(event.timestamp.seconds) && Number.isInteger(event.timestamp.microseconds));
  t.true(event.timestamp.microseconds >= 0 && event.timestamp.microseconds < 1e6);
  t.true(Math.abs(event.timestamp.seconds + event.timestamp.microseconds / 1e6 - before) < 5);
  await negotiating.negotiate();
  t.deepEqual(negotiating.events, [], 'not sent while it negotiated');
  server.emit('SHUTDOWN');
  const late = await negotiating.waitEvent('SHUTDOWN');
  t.false('data' in late, 'no data given: no data member');
  t.is((await negotiated.waitEvent('SHUTDOWN')).event, 'SHUTDOWN');
});

test('an object past 1 MiB is refused once, and the next command is served', async (t) => {
  const { path } = await start(t);
  const client = await connect(t, path);
  const huge = JSON.stringify({ execute: 'echo', arguments: { s: 'x'.repeat(1100 * 1024) }, id: 1 });
  const [refused, ok] = await replies(client, `${huge}{"execute": "nothing", "id": 2}`, 2);
  t.deepEqual(refused, { error: { class: 'GenericError', desc: 'JSON token size limit exceeded' } });
  t.deepEqual(ok, { return: {}, id: 2 });
});

test('close() ends the clients, stops listening and removes the socket', async (t) => {
  const gate = deferred<string>();
  const { server, path } = await start(t, { slow: () => gate.promise });
  const idle = await connect(t, path);
  const busy = await connect(t, path);
  const pending = busy.execute('slow').catch((error: Error) => error.message);
  await server.close();
  t.false(existsSync(path));
  await Promise.all([idle.closed, busy.closed]);
  gate.resolve('too late');
  t.is(await pending, 'the QMP connection closed');
  await t.throwsAsync(QmpTestClient.connect(path), { code: 'ENOENT' });
  await server.close();
});

test('a stale socket at the path is replaced; any other file is left alone', async (t) => {
  const dir = tempDir(t);
  const path = join(dir, 'qmp.sock');
  // Closing a listener unlinks its socket, so the socket is moved away first to be left stale.
  const old = net.createServer();
  await new Promise<void>((resolve) => old.listen(join(dir, 'old.sock'), resolve));
  renameSync(join(dir, 'old.sock'), path);
  await new Promise<void>((resolve) => old.close(() => resolve()));
  const server = await QmpServer.listen({ path, version: VERSION, handlers: {} });
  t.teardown(() => server.close());
  const { client, greeting } = await QmpTestClient.connect(path);
  t.teardown(() => client.close());
  t.deepEqual(greeting.QMP.version, VERSION);

  const file = join(dir, 'not-a-socket');
  writeFileSync(file, 'keep me');
  await t.throwsAsync(QmpServer.listen({ path: file, version: VERSION, handlers: {} }), { code: 'EADDRINUSE' });
  t.is(readFileSync(file, 'utf8'), 'keep me');
});
