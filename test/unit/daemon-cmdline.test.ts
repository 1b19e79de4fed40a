// qemu-storage-daemon's command line as fuse-export-storage-daemon reads it:
// qsd's documented examples, typed values, and every refusal naming the
// option and the key.
import test, { type ExecutionContext } from 'ava';
import { DaemonConfigError, type DaemonConfig } from '../../ts/daemon/config.js';
import { parseDaemonArgs } from '../../ts/daemon/cmdline.js';

function config(argv: string[]): DaemonConfig {
  const invocation = parseDaemonArgs(argv);
  if (invocation.action !== 'serve') throw new Error(`expected a configuration, got ${invocation.action}`);
  return invocation.config;
}

function refused(t: ExecutionContext, argv: string[], message: RegExp): void {
  t.throws(() => parseDaemonArgs(argv), { instanceOf: DaemonConfigError, message }, argv.join(' '));
}

const DISK = ['--blockdev', 'driver=file,node-name=disk,filename=disk.img'];
const exportOf = (keys: string): string[] => [
  '--export',
  `type=fuse,id=exp0,node-name=disk,mountpoint=disk.img${keys}`,
];

test('qsd docs: a FUSE export of a file node', (t) => {
  t.deepEqual(
    config([
      '--blockdev',
      'driver=file,node-name=disk,filename=disk.img',
      '--export',
      'type=fuse,id=exp0,node-name=disk,mountpoint=disk.img,writable=on',
    ]),
    {
      blockdevs: [{ driver: 'file', 'node-name': 'disk', filename: 'disk.img' }],
      exports: [{ type: 'fuse', id: 'exp0', 'node-name': 'disk', mountpoint: 'disk.img', writable: true }],
      iothreads: [],
      secrets: [],
      chardevs: [],
      monitors: [],
      daemonize: false,
    },
  );
});

test('qsd docs: a QMP monitor on a socket chardev, and an iothread', (t) => {
  const parsed = config([
    '--chardev',
    'socket,path=qmp.sock,server=on,wait=off,id=char1',
    '--monitor',
    'chardev=char1',
    '--object',
    'iothread,id=iothread0',
  ]);
  t.deepEqual(parsed.chardevs, [{ id: 'char1', path: 'qmp.sock' }]);
  t.deepEqual(parsed.monitors, [{ chardev: 'char1' }]);
  t.deepEqual(parsed.iothreads, [{ id: 'iothread0' }]);
  t.deepEqual(
    config(['--chardev', 'socket,id=c,path=s,server=on', '--monitor', 'c,mode=control,pretty=off']).monitors,
    [{ chardev: 'c' }],
  );
});

test('a qcow2 node over a nested file node, and a JSON --blockdev', (t) => {
  t.deepEqual(config(['--blockdev', 'driver=qcow2,node-name=q,file.driver=file,file.filename=x.qcow2']).blockdevs, [
    { driver: 'qcow2', 'node-name': 'q', file: { driver: 'file', filename: 'x.qcow2' } },
  ]);
  t.deepEqual(config(['--blockdev', '{"driver":"file","node-name":"n","filename":"f"}']).blockdevs, [
    { driver: 'file', 'node-name': 'n', filename: 'f' },
  ]);
});

test('the implied keys: driver, type and qom-type; and --opt=value', (t) => {
  const parsed = config([
    '--blockdev=file,node-name=disk,filename=disk.img',
    '--export=fuse,id=exp0,node-name=disk,mountpoint=m',
    '--object=iothread,id=io0',
  ]);
  t.is(parsed.blockdevs[0].driver, 'file');
  t.is(parsed.exports[0].type, 'fuse');
  t.deepEqual(parsed.iothreads, [{ id: 'io0' }]);
});

test('booleans: on/off, yes/no, true/false; JSON booleans as they are', (t) => {
  for (const [text, value] of [
    ['on', true],
    ['yes', true],
    ['true', true],
    ['off', false],
    ['no', false],
    ['false', false],
  ] as const) {
    t.is(
      config(['--blockdev', `file,node-name=n,filename=f,read-only=${text}`]).blockdevs[0]['read-only'],
      value,
      text,
    );
  }
  const json = config([
    '--blockdev',
    '{"driver":"file","node-name":"n","filename":"f","cache":{"direct":true,"no-flush":false}}',
  ]);
  t.deepEqual(json.blockdevs[0].cache, { direct: true, 'no-flush': false });
  refused(
    t,
    ['--blockdev', 'file,node-name=n,filename=f,read-only=maybe'],
    /--blockdev node-name=n: "read-only" must be on or off, not "maybe"/,
  );
});

test('every block node key we serve', (t) => {
  const [file] = config([
    '--blockdev',
    'file,node-name=f,filename=x,read-only=on,auto-read-only=off,discard=unmap,detect-zeroes=unmap,cache.direct=on,cache.no-flush=off,aio=io_uring,locking=off',
  ]).blockdevs;
  t.like(file, {
    discard: 'unmap',
    'detect-zeroes': 'unmap',
    cache: { direct: true, 'no-flush': false },
    aio: 'io_uring',
    locking: 'off',
  });
  const [nbd] = config([
    '--blockdev',
    'nbd,node-name=n,server.type=inet,server.host=h,server.port=10809,export=e',
  ]).blockdevs;
  t.deepEqual(nbd, {
    driver: 'nbd',
    'node-name': 'n',
    server: { type: 'inet', host: 'h', port: '10809' },
    export: 'e',
  });
  const luks = config([
    '--object',
    'secret,id=sec0,data=pw',
    '--blockdev',
    'luks,node-name=l,key-secret=sec0,file.driver=host_device,file.filename=/dev/sdb',
  ]);
  t.like(luks.blockdevs[0], { 'key-secret': 'sec0', file: { driver: 'host_device' } });
  const qcow2 = config([
    '--blockdev',
    '{"driver":"qcow2","node-name":"q","file":"f","backing":null}',
    ...['--blockdev', 'file,node-name=f,filename=x'],
  ]);
  t.is(qcow2.blockdevs[0].backing, null);
  for (const format of ['vmdk', 'vhdx', 'vdi', 'vpc', 'qed', 'qcow', 'parallels', 'bochs', 'cloop', 'dmg', 'raw']) {
    t.is(config(['--blockdev', `${format},node-name=n,file.driver=file,file.filename=x`]).blockdevs[0].driver, format);
  }
});

test('--blockdev refusals name the key', (t) => {
  refused(t, ['--blockdev', 'driver=gluster'], /^--blockdev: driver "gluster" is not served$/);
  refused(t, ['--blockdev', 'node-name=n'], /^--blockdev node-name=n: "driver" is required$/);
  refused(
    t,
    ['--blockdev', 'file,node-name=disk0,filename=x,foo=1'],
    /^--blockdev node-name=disk0: unknown key "foo"$/,
  );
  refused(
    t,
    ['--blockdev', 'qcow2,node-name=q,file.driver=file,file.filename=x,file.foo=1'],
    /node-name=q: unknown key "file\.foo"/,
  );
  refused(t, ['--blockdev', 'qcow2,node-name=q,file.driver=ssh'], /node-name=q: file\.driver "ssh" is not served/);
  refused(t, ['--blockdev', 'raw,node-name=r,file=f,backing=b'], /node-name=r: unknown key "backing"/);
  refused(t, ['--blockdev', 'raw,node-name=r,file=f,offset=512'], /node-name=r: unknown key "offset"/);
  refused(t, ['--blockdev', 'file,filename=x'], /^--blockdev: "node-name" is required$/);
  refused(t, ['--blockdev', 'file,node-name=n'], /node-name=n: "filename" is required/);
  refused(t, ['--blockdev', 'qcow2,node-name=q'], /node-name=q: "file" is required/);
  refused(t, ['--blockdev', 'file,node-name=1n,filename=x'], /"node-name" must start with a letter/);
  refused(
    t,
    ['--blockdev', 'file,node-name=n,filename=x,discard=on'],
    /"discard" must be one of ignore, unmap, not "on"/,
  );
  refused(t, ['--blockdev', 'file,node-name=n,filename=x,cache=on'], /"cache" must be a group of keys/);
  refused(
    t,
    ['--blockdev', 'nbd,node-name=n,server.type=fd,server.str=3'],
    /node-name=n: server\.type "fd" is not served/,
  );
  refused(t, ['--blockdev', 'nbd,node-name=n,server.type=unix,server.host=h'], /unknown key "server\.host"/);
  refused(t, ['--blockdev', 'nbd,node-name=n,server.type=inet,server.host=h'], /"server\.port" is required/);
  refused(
    t,
    ['--blockdev', '{"driver":"nbd","node-name":"n","server":{"type":"inet","host":"h","port":10809}}'],
    /"server\.port" must be a string/,
  );
  refused(t, ['--blockdev', 'file,node-name=n,filename=x,filename=y'], /^--blockdev: duplicate key "filename"$/);
  refused(t, ['--blockdev', '{"driver":'], /^--blockdev: invalid JSON/);
});

test("--export: qsd's keys and ours, typed; iothread one or a list", (t) => {
  const parsed = config([
    ...DISK,
    '--object',
    'iothread,id=a',
    '--object',
    'iothread,id=b',
    ...exportOf(
      ',writable=on,growable=off,allow-other=auto,iothread.0=a,iothread.1=b,io-uring=on,passthrough=off,queue-depth=0x80,poll-max-us=250',
    ),
  ]);
  t.deepEqual(parsed.exports[0], {
    type: 'fuse',
    id: 'exp0',
    'node-name': 'disk',
    mountpoint: 'disk.img',
    writable: true,
    growable: false,
    'allow-other': 'auto',
    iothread: ['a', 'b'],
    'io-uring': 'on',
    passthrough: 'off',
    'queue-depth': 128,
    'poll-max-us': 250,
  });
  t.is(config([...DISK, '--object', 'iothread,id=a', ...exportOf(',iothread=a')]).exports[0].iothread, 'a');
});

test('--export refusals name the key', (t) => {
  refused(t, [...DISK, '--export', 'type=nbd,id=e,node-name=disk'], /^--export id=e: type "nbd" is not served$/);
  refused(t, [...DISK, '--export', 'id=e,node-name=disk,mountpoint=m'], /^--export id=e: "type" is required$/);
  for (const key of ['id', 'node-name', 'mountpoint']) {
    const keys = ['id=e', 'node-name=disk', 'mountpoint=m'].filter((pair) => !pair.startsWith(`${key}=`));
    refused(t, [...DISK, '--export', ['fuse', ...keys].join(',')], new RegExp(`"${key}" is required`));
  }
  refused(
    t,
    [...DISK, ...exportOf(',allow-other=maybe')],
    /--export id=exp0: "allow-other" must be one of on, off, auto/,
  );
  refused(
    t,
    [...DISK, ...exportOf(',queue-depth=0')],
    /--export id=exp0: "queue-depth" must be a whole number from 1 to 4096, not "0"/,
  );
  refused(t, [...DISK, ...exportOf(',poll-max-us=1.5')], /"poll-max-us" must be a whole number/);
  refused(t, [...DISK, ...exportOf(',fixed-iothread=on')], /--export id=exp0: unknown key "fixed-iothread"/);
});

test('--object: iothreads with their knobs, secrets with data or a file', (t) => {
  const objects = [
    'iothread,id=io0,poll-max-ns=32768,poll-grow=2,poll-shrink=0,aio-max-batch=16',
    'secret,id=s0,data=letmein',
    '{"qom-type":"secret","id":"s1","file":"/run/key"}',
  ];
  const parsed = config(objects.flatMap((text) => ['--object', text]));
  t.deepEqual(parsed.iothreads, [
    { id: 'io0', 'poll-max-ns': 32768, 'poll-grow': 2, 'poll-shrink': 0, 'aio-max-batch': 16 },
  ]);
  t.deepEqual(parsed.secrets, [
    { id: 's0', data: 'letmein' },
    { id: 's1', file: '/run/key' },
  ]);
});

test('--object refusals name the type or key', (t) => {
  refused(
    t,
    ['--object', 'memory-backend-ram,id=m,size=1G'],
    /^--object id=m: qom-type "memory-backend-ram" is not served$/,
  );
  refused(t, ['--object', 'iothread'], /^--object: "id" is required$/);
  refused(t, ['--object', 'iothread,id=io0,poll-max-ns=-1'], /--object id=io0: "poll-max-ns" must be a whole number/);
  refused(t, ['--object', 'secret,id=s'], /--object id=s: a secret takes exactly one of "data" and "file"/);
  refused(t, ['--object', 'secret,id=s,data=a,file=b'], /exactly one of "data" and "file"/);
  refused(t, ['--object', 'secret,id=s,data=a,format=base64'], /--object id=s: unknown key "format"/);
  refused(t, ['--object', 'iothread,id=x', '--object', 'secret,id=x,data=a'], /^--object: id "x" is used twice$/);
});

test('--chardev and --monitor refusals name the key', (t) => {
  refused(t, ['--chardev', 'file,id=c,path=p'], /^--chardev id=c: backend "file" is not served$/);
  refused(t, ['--chardev', 'socket,id=c,host=h,port=4444,server=on'], /--chardev id=c: unknown key "host"/);
  refused(t, ['--chardev', 'socket,id=c,path=p'], /--chardev id=c: "server" is required/);
  refused(t, ['--chardev', 'socket,id=c,path=p,server=off'], /--chardev id=c: server=off is not served/);
  refused(t, ['--chardev', 'socket,id=c,path=p,server=on,wait=on'], /--chardev id=c: wait=on is not served/);
  // QemuOpts in QEMU: no JSON form, so all of it is the implied backend.
  refused(t, ['--chardev', '{"backend":"socket"}'], /^--chardev: backend "\{.*\}" is not served$/);
  refused(t, ['--monitor', 'chardev=nope'], /^--monitor chardev=nope: chardev "nope" is not defined$/);
  const chardev = ['--chardev', 'socket,id=c,path=p,server=on'];
  refused(t, [...chardev, '--monitor', 'c,mode=readline'], /--monitor: "mode" must be one of control, not "readline"/);
  refused(t, [...chardev, '--monitor', 'c,pretty=on'], /--monitor: pretty=on is not served/);
  refused(t, [...chardev, '--monitor', 'c', '--monitor', 'c'], /^--monitor: chardev "c" is used twice$/);
  refused(t, [...chardev, ...chardev], /^--chardev: id "c" is used twice$/);
});

test('--pidfile, --daemonize and --metrics', (t) => {
  const parsed = config(['--pidfile', '/run/qsd.pid', '--daemonize', '--metrics=127.0.0.1:9100']);
  t.like(parsed, { pidfile: '/run/qsd.pid', daemonize: true, metrics: '127.0.0.1:9100' });
  for (const address of ['unix:/run/metrics.sock', '[::1]:9100', 'localhost:1', '0.0.0.0:65535']) {
    t.is(config(['--metrics', address]).metrics, address);
  }
  for (const address of ['9100', 'host:9100', '127.0.0.1:0', '127.0.0.1:65536', '::1:9100', 'unix:', '[127.0.0.1]:1']) {
    refused(t, ['--metrics', address], /^--metrics takes HOST:PORT/);
  }
  refused(t, ['--pidfile', ''], /--pidfile takes a file's path/);
});

test('-h/--help and -V/--version win over the options after them', (t) => {
  t.deepEqual(parseDaemonArgs(['-h']), { action: 'help' });
  t.deepEqual(parseDaemonArgs(['--help', '--blockdev', 'driver=gluster']), { action: 'help' });
  t.deepEqual(parseDaemonArgs(['--blockdev', 'driver=gluster', '-V']), { action: 'version' }, 'as qsd: help first');
  t.deepEqual(parseDaemonArgs(['--version', '-h']), { action: 'version' });
  refused(t, ['--bogus', '-h'], /^unknown option "--bogus"$/);
  refused(t, ['--help=yes'], /^--help takes no value$/);
});

test('options and arguments we do not serve are named', (t) => {
  refused(t, ['--nbd-server', 'addr.type=inet,addr.host=h,addr.port=10809'], /^--nbd-server is not served/);
  refused(t, ['-T', 'bdrv_*'], /^-T is not served/);
  refused(t, ['--trace=x'], /^--trace is not served/);
  refused(t, ['--bogus=1'], /^unknown option "--bogus"$/);
  refused(t, ['-x'], /^unknown option "-x"$/);
  refused(t, ['disk.img'], /^unexpected argument "disk\.img"$/);
  refused(t, ['--blockdev'], /^--blockdev needs a value$/);
  refused(t, ['--daemonize=on'], /^--daemonize takes no value$/);
});

test('references are checked once all options are read, in any order', (t) => {
  const later = config([...exportOf(''), ...DISK]);
  t.is(later.exports[0]['node-name'], 'disk');
  const nested = config([
    '--blockdev',
    'qcow2,node-name=q,file.driver=file,file.node-name=f,file.filename=x',
    '--export',
    'fuse,id=e,node-name=f,mountpoint=m',
  ]);
  t.is(nested.exports[0]['node-name'], 'f', 'a nested named node can be exported');
});

test('references to things never defined are refused', (t) => {
  refused(t, exportOf(''), /^--export id=exp0: node "disk" is not defined$/);
  refused(t, ['--blockdev', 'qcow2,node-name=q,file=gone'], /^--blockdev node-name=q: node "gone" is not defined$/);
  refused(t, [...DISK, ...exportOf(',iothread=io9')], /^--export id=exp0: iothread "io9" is not defined$/);
  refused(
    t,
    [...DISK, '--object', 'iothread,id=a', ...exportOf(',iothread.0=a,iothread.1=b')],
    /iothread "b" is not defined/,
  );
  refused(
    t,
    [
      '--blockdev',
      'luks,node-name=l,key-secret=s9,file.driver=file,file.filename=x',
      '--export',
      'fuse,id=e,node-name=l,mountpoint=m',
    ],
    /^--export id=e: its image's key-secret "s9" is no --object secret$/,
  );
});

test('node names, export ids and mountpoints are each used once', (t) => {
  refused(t, [...DISK, ...DISK], /^--blockdev: node name "disk" is defined twice$/);
  refused(
    t,
    ['--blockdev', 'qcow2,node-name=q,file.driver=file,file.node-name=q,file.filename=x'],
    /node name "q" is defined twice/,
  );
  const second = ['--export', 'fuse,id=exp0,node-name=disk,mountpoint=other'];
  refused(t, [...DISK, ...exportOf(''), ...second], /^--export: id "exp0" is used twice$/);
  const same = ['--export', 'fuse,id=exp1,node-name=disk,mountpoint=./disk.img'];
  refused(t, [...DISK, ...exportOf(''), ...same], /^--export id=exp1: mountpoint "\.\/disk\.img" is used twice$/);
});

test('exports the node graph cannot serve are refused at once', (t) => {
  refused(
    t,
    ['--blockdev', 'file,node-name=disk,filename=d,read-only=on', ...exportOf(',writable=on')],
    /^--export id=exp0: node "disk" is read-only, so writable=on is not served$/,
  );
  refused(
    t,
    [
      ...DISK,
      '--blockdev',
      'file,node-name=b,filename=b',
      '--blockdev',
      'qcow2,node-name=q,file=disk,backing=b',
      '--export',
      'fuse,id=e,node-name=q,mountpoint=m',
    ],
    /^--export id=e: node "q": backing given explicitly is not served/,
  );
});
