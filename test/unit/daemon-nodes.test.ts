// From qemu-storage-daemon's block nodes to one image of ours: which file
// or NBD server, which format, read-only or not, which cache mode.
import test from 'ava';
import { DaemonConfigError, type BlockdevOptions } from '../../ts/daemon/config.js';
import { nodeGraph, nodeUsers, resolveNode } from '../../ts/daemon/nodes.js';

const graph = (...blockdevs: BlockdevOptions[]): Map<string, BlockdevOptions> => nodeGraph(blockdevs);
const file = (name: string, extra: Partial<BlockdevOptions> = {}): BlockdevOptions => ({
  driver: 'file',
  'node-name': name,
  filename: `${name}.img`,
  ...extra,
});

function refused(
  t: import('ava').ExecutionContext,
  nodes: Map<string, BlockdevOptions>,
  name: string,
  message: RegExp,
): void {
  t.throws(() => resolveNode(nodes, name), { instanceOf: DaemonConfigError, message });
}

test('a file or host_device node alone is a raw image, writeback unless cache.direct', (t) => {
  t.deepEqual(resolveNode(graph(file('disk')), 'disk'), {
    image: 'disk.img',
    format: 'raw',
    readOnly: false,
    cache: 'writeback',
  });
  const device: BlockdevOptions = {
    driver: 'host_device',
    'node-name': 'dev',
    filename: '/dev/sdb',
    cache: { direct: true },
  };
  t.deepEqual(resolveNode(graph(device), 'dev'), {
    image: '/dev/sdb',
    format: 'raw',
    readOnly: false,
    cache: 'direct',
  });
});

test('a format over a named or a nested protocol node is that format over that image', (t) => {
  const byName = graph(file('f'), { driver: 'qcow2', 'node-name': 'q', file: 'f' });
  t.like(resolveNode(byName, 'q'), { image: 'f.img', format: 'qcow2' });
  const nested = graph({ driver: 'vmdk', 'node-name': 'v', file: { driver: 'file', filename: 'x.vmdk' } });
  t.like(resolveNode(nested, 'v'), { image: 'x.vmdk', format: 'vmdk' });
});

test('NBD servers become URIs, a Unix socket or host and port', (t) => {
  const unix: BlockdevOptions = {
    driver: 'nbd',
    'node-name': 'u',
    server: { type: 'unix', path: '/run/nbd.sock' },
    export: 'disk',
  };
  t.is(resolveNode(graph(unix), 'u').image, 'nbd+unix:///disk?socket=/run/nbd.sock');
  const inet: BlockdevOptions = {
    driver: 'nbd',
    'node-name': 'i',
    server: { type: 'inet', host: 'server', port: '10809' },
  };
  t.is(resolveNode(graph(inet), 'i').image, 'nbd://server:10809/');
  const v6: BlockdevOptions = {
    driver: 'nbd',
    'node-name': 'v',
    server: { type: 'inet', host: '::1', port: '1' },
    export: 'a b',
  };
  t.is(resolveNode(graph(v6), 'v').image, 'nbd://[::1]:1/a%20b');
  const qcow2 = graph(unix, { driver: 'qcow2', 'node-name': 'q', file: 'u' });
  t.like(resolveNode(qcow2, 'q'), { image: 'nbd+unix:///disk?socket=/run/nbd.sock', format: 'qcow2' });
  refused(
    t,
    graph({ driver: 'nbd', 'node-name': 'n', server: { type: 'unix' } }),
    'n',
    /node "n": "server" needs type=unix with path/,
  );
});

test('read-only anywhere in the chain makes the image read-only', (t) => {
  t.true(
    resolveNode(graph(file('f', { 'read-only': true }), { driver: 'raw', 'node-name': 'r', file: 'f' }), 'r').readOnly,
  );
  t.true(
    resolveNode(graph(file('f'), { driver: 'raw', 'node-name': 'r', file: 'f', 'read-only': true }), 'r').readOnly,
  );
  t.false(resolveNode(graph(file('f', { 'auto-read-only': true })), 'f').readOnly);
});

test('cache.direct reaches a nested file, not a node named by reference', (t) => {
  const nested = graph({
    driver: 'qcow2',
    'node-name': 'q',
    cache: { direct: true },
    file: { driver: 'file', filename: 'x' },
  });
  t.is(resolveNode(nested, 'q').cache, 'direct');
  const overridden = graph({
    driver: 'qcow2',
    'node-name': 'q',
    cache: { direct: true },
    file: { driver: 'file', filename: 'x', cache: { direct: false } },
  });
  t.is(resolveNode(overridden, 'q').cache, 'writeback');
  const named = graph(file('f'), { driver: 'qcow2', 'node-name': 'q', cache: { direct: true }, file: 'f' });
  t.is(resolveNode(named, 'q').cache, 'writeback');
});

test('the key secret of luks and of an encrypted qcow2', (t) => {
  const luks = graph(file('f'), { driver: 'luks', 'node-name': 'l', file: 'f', 'key-secret': 'sec0' });
  t.like(resolveNode(luks, 'l'), { format: 'luks', keySecret: 'sec0' });
  const qcow2 = graph(file('f'), {
    driver: 'qcow2',
    'node-name': 'q',
    file: 'f',
    encrypt: { format: 'luks', 'key-secret': 'sec1' },
  });
  t.is(resolveNode(qcow2, 'q').keySecret, 'sec1');
  t.false('keySecret' in resolveNode(graph(file('f')), 'f'));
});

test('raw over a format is that format; another format over a format is refused', (t) => {
  const rawOverQcow2 = graph(
    file('f'),
    { driver: 'qcow2', 'node-name': 'q', file: 'f' },
    { driver: 'raw', 'node-name': 'r', file: 'q' },
  );
  t.like(resolveNode(rawOverQcow2, 'r'), { image: 'f.img', format: 'qcow2' });
  const qcow2OverRaw = graph(
    file('f'),
    { driver: 'raw', 'node-name': 'r', file: 'f' },
    { driver: 'qcow2', 'node-name': 'q', file: 'r' },
  );
  refused(
    t,
    qcow2OverRaw,
    'q',
    /node "q": qcow2 over node "r" \(raw\) is not served: a format goes over file, host_device, nbd/,
  );
});

test('an explicit backing is refused; null or "" (none) is not', (t) => {
  const nodes = graph(file('f'), file('b'), { driver: 'qcow2', 'node-name': 'q', file: 'f', backing: 'b' });
  refused(t, nodes, 'q', /node "q": backing given explicitly is not served: the image's own backing file is followed/);
  for (const backing of [null, '']) {
    t.like(resolveNode(graph(file('f'), { driver: 'qcow2', 'node-name': 'q', file: 'f', backing }), 'q'), {
      format: 'qcow2',
    });
  }
});

test('unknown nodes, drivers and missing keys are refused by name', (t) => {
  refused(t, graph(file('f')), 'nope', /node "nope" is not defined/);
  refused(
    t,
    graph({ driver: 'qcow2', 'node-name': 'q', file: 'gone' }),
    'q',
    /node "q": its file, node "gone", is not defined/,
  );
  refused(t, graph({ driver: 'qcow2', 'node-name': 'q' }), 'q', /node "q": "file" is required/);
  refused(t, graph({ driver: 'file', 'node-name': 'f' }), 'f', /node "f": "filename" is required/);
  refused(t, graph({ driver: 'gluster', 'node-name': 'g' }), 'g', /node "g": driver "gluster" is not served/);
});

test('a node reached again through its children is refused, not followed forever', (t) => {
  const nodes = graph({ driver: 'raw', 'node-name': 'a', file: 'b' }, { driver: 'raw', 'node-name': 'b', file: 'a' });
  refused(t, nodes, 'a', /is reached again through its own children/);
});

test('the node graph holds nested named nodes, each name once', (t) => {
  const nodes = graph({ driver: 'qcow2', 'node-name': 'q', file: { driver: 'file', 'node-name': 'f', filename: 'x' } });
  t.deepEqual([...nodes.keys()], ['q', 'f']);
  t.like(resolveNode(nodes, 'f'), { image: 'x', format: 'raw' });
  t.throws(() => graph(file('f'), { driver: 'raw', 'node-name': 'r', file: file('f') }), {
    instanceOf: DaemonConfigError,
    message: /node name "f" is defined twice/,
  });
});

test('the users of a node: those naming it or nesting it', (t) => {
  const nodes = graph(
    file('f'),
    { driver: 'qcow2', 'node-name': 'q', file: 'f' },
    { driver: 'raw', 'node-name': 'r', file: { driver: 'raw', file: 'f' } },
    { driver: 'vmdk', 'node-name': 'v', file: file('g') },
  );
  t.deepEqual(nodeUsers(nodes, 'f'), ['q', 'r']);
  t.deepEqual(nodeUsers(nodes, 'g'), ['v']);
  t.deepEqual(nodeUsers(nodes, 'q'), []);
});
