// QEMU's key=value syntax (util/keyval.c) as the daemon's options read it,
// and the JSON form --blockdev, --export and --object also take.
import test from 'ava';
import { DaemonConfigError } from '../../ts/daemon/config.js';
import { parseKeyval, parseKeyvalOrJson } from '../../ts/daemon/keyval.js';

function refused(t: import('ava').ExecutionContext, text: string, message: RegExp, impliedKey?: string): void {
  t.throws(() => parseKeyval(text, impliedKey), { instanceOf: DaemonConfigError, message }, text);
}

test('keys and values; an empty text is no keys', (t) => {
  t.deepEqual(parseKeyval('a=1,b=two'), { a: '1', b: 'two' });
  t.deepEqual(parseKeyval(''), {});
});

test('",," in a value is one literal comma, also where it looks like a key', (t) => {
  t.deepEqual(parseKeyval('a=x,,y,b=2'), { a: 'x,y', b: '2' });
  t.deepEqual(parseKeyval('x=,,id=bar'), { x: ',id=bar' });
  t.deepEqual(parseKeyval('a=x,,'), { a: 'x,' });
});

test('empty values, and one trailing comma, are allowed', (t) => {
  t.deepEqual(parseKeyval('a=,b='), { a: '', b: '' });
  t.deepEqual(parseKeyval('x=y,'), { x: 'y' });
});

test('dotted keys nest; values stay strings', (t) => {
  t.deepEqual(parseKeyval('a.b.c=1,a.b.d=on,e=3'), { a: { b: { c: '1', d: 'on' } }, e: '3' });
});

test("a bare first element is the implied key's value, dotted implied keys nest", (t) => {
  t.deepEqual(parseKeyval('fuse,id=x', 'type'), { type: 'fuse', id: 'x' });
  t.deepEqual(parseKeyval('iothread,id=io0', 'qom-type'), { 'qom-type': 'iothread', id: 'io0' });
  t.deepEqual(parseKeyval('socket,id=c', 'backend'), { backend: 'socket', id: 'c' });
  t.deepEqual(parseKeyval('val', 'eins.zwei'), { eins: { zwei: 'val' } });
  t.deepEqual(parseKeyval('type=fuse,id=x', 'type'), { type: 'fuse', id: 'x' }, 'the key may still be given');
});

test('only the first element may be bare, and not without an implied key', (t) => {
  refused(t, 'an', /expected "=" after key "an"/);
  refused(t, 'fuse,writable', /expected "=" after key "writable"/, 'type');
});

test('the implied value holds no comma: ",," there leaves an empty element', (t) => {
  refused(t, 'val,,ue', /a key is missing/, 'implied');
  refused(t, ',,,a=1', /a key is missing/, 'implied');
  refused(t, ',', /a key is missing/, 'implied');
});

test('numeric key parts make a list, in index order, 01 being 1', (t) => {
  t.deepEqual(parseKeyval('iothread.0=a,iothread.1=b'), { iothread: ['a', 'b'] });
  t.deepEqual(parseKeyval('l.2=c,l.0=a,l.01=b'), { l: ['a', 'b', 'c'] });
  t.deepEqual(parseKeyval('a.l.1.x=2,a.l.0.x=1'), { a: { l: [{ x: '1' }, { x: '2' }] } });
});

test('a list has no gaps and does not mix with named keys', (t) => {
  refused(t, 'list.1=lonely', /key "list\.0" is missing/);
  refused(t, 'list.0=a,list.2=c', /key "list\.1" is missing/);
  refused(t, 'a.b.c=1,a.b.0=2', /key "a\.b" has both list items and named keys/);
  refused(t, 'a.0.c=1,a.b.c=2', /key "a" has both list items and named keys/);
});

test('a key given twice is refused by name (QEMU would keep the last)', (t) => {
  refused(t, 'a=1,a=2', /duplicate key "a"/);
  refused(t, 'id=foo,b=1,id=bar', /duplicate key "id"/);
  refused(t, 'a.b=1,a.b=2', /duplicate key "a\.b"/);
  refused(t, 'l.1=x,l.01=y', /duplicate key "l\.1"/);
  refused(t, 'fuse,type=nbd', /duplicate key "type"/, 'type');
});

test('a key is either a value or a group', (t) => {
  refused(t, 'a.b=1,a=2', /key "a" is given both a value and keys below it/);
  refused(t, 'a=2,a.b=1', /key "a" is given both a value and keys below it/);
  refused(t, 'a.b=1,a.b.c=2', /key "a\.b" is given both a value and keys below it/);
});

test('malformed keys are refused by name', (t) => {
  refused(t, ',', /a key is missing/);
  refused(t, '=val', /a key is missing/);
  refused(t, ',a=1', /a key is missing/);
  refused(t, '.=1', /invalid key "\."/);
  refused(t, 'key.=1', /invalid key "key\."/);
  refused(t, '7up=val', /invalid key "7up"/);
  refused(t, 'key[0]=val', /invalid key "key\[0\]"/);
  refused(t, '0=1', /invalid key "0"/); // the top is an object, never a list
  refused(t, 'a.0b=1', /invalid key "a\.0b"/);
});

test('a key part is at most 127 characters', (t) => {
  const long = `a${'b'.repeat(126)}`;
  t.deepEqual(parseKeyval(`k.${long}=v`), { k: { [long]: 'v' } });
  refused(t, `k.${long}c=v`, /has a part longer than 127 characters/);
});

test('keys named like Object members are plain keys', (t) => {
  t.deepEqual(Object.entries(parseKeyval('constructor=1,toString.x=2')), [
    ['constructor', '1'],
    ['toString', { x: '2' }],
  ]);
});

test('JSON when the text starts with "{", its values typed', (t) => {
  t.deepEqual(parseKeyvalOrJson('{"driver":"file","node-name":"n","read-only":true}', 'driver'), {
    driver: 'file',
    'node-name': 'n',
    'read-only': true,
  });
  t.deepEqual(parseKeyvalOrJson('file,node-name=n', 'driver'), { driver: 'file', 'node-name': 'n' });
  t.throws(() => parseKeyvalOrJson('{"driver":'), { instanceOf: DaemonConfigError, message: /invalid JSON/ });
});
