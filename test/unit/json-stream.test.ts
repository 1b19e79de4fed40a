// The splitter under QMP's input: values found wherever the reads cut
// them, QEMU's extensions taken, and after an error or a limit the stream
// goes on with the next value.
import test from 'ava';
import { JsonSplitter, type JsonItem } from '../../ts/daemon/json-stream.js';

function feedAll(splitter: JsonSplitter, ...chunks: Array<string | Uint8Array>): JsonItem[] {
  return chunks.flatMap((chunk) => splitter.feed(typeof chunk === 'string' ? Buffer.from(chunk) : chunk));
}

test('objects cut anywhere, byte by byte included, come out whole and in order', (t) => {
  const text = '{"execute": "a", "arguments": {"s": "}{\\"é"}} {"execute": "b"}';
  const whole = feedAll(new JsonSplitter(), text);
  t.deepEqual(whole, [{ value: { execute: 'a', arguments: { s: '}{"é' } } }, { value: { execute: 'b' } }]);
  const bytes = Buffer.from(text);
  const byByte = feedAll(new JsonSplitter(), ...[...bytes].map((byte) => Uint8Array.of(byte)));
  t.deepEqual(byByte, whole, 'a UTF-8 character cut between reads too');
});

test("QEMU's single-quoted strings and \\' escape become standard JSON", (t) => {
  const items = feedAll(new JsonSplitter(), `{'execute': 'say', 'arguments': {'text': 'a "b" \\'c\\'', "d": "\\'"}}`);
  t.deepEqual(items, [{ value: { execute: 'say', arguments: { text: `a "b" 'c'`, d: "'" } } }]);
});

test('values other than objects stand alone: numbers and keywords end at the next delimiter', (t) => {
  t.deepEqual(feedAll(new JsonSplitter(), '42 "x"[1]true', ' '), [{ value: 42 }, { value: 'x' }, { value: [1] }, { value: true }]);
  t.deepEqual(feedAll(new JsonSplitter(), '4', '2'), [], 'a number may go on in the next read');
});

test('malformed JSON is refused and the next value is read', (t) => {
  const items = feedAll(new JsonSplitter(), '{"execute": } } {"execute": "ok"}');
  t.is(items.length, 3);
  t.regex((items[0] as { error: string }).error, /^JSON parse error, /);
  t.regex((items[1] as { error: string }).error, /^JSON parse error, /, 'the stray } alone');
  t.deepEqual(items[2], { value: { execute: 'ok' } });
});

test('a control byte or 0xFF drops a partial value (the reset of qmp-spec)', (t) => {
  const items = feedAll(new JsonSplitter(), '{"execute": "lost', Uint8Array.of(0xff), '{"execute": "ok"}');
  t.deepEqual(items, [{ error: "JSON parse error, stray '\\xff'" }, { value: { execute: 'ok' } }]);
  const control = feedAll(new JsonSplitter(), '{"a": [1, \x01{"b": 2}');
  t.deepEqual(control, [{ error: "JSON parse error, stray '\\x01'" }, { value: { b: 2 } }]);
  t.deepEqual(feedAll(new JsonSplitter(), '["a\nb')[0], { error: "JSON parse error, stray '\\x0a'" }, 'a raw newline in a string is one');
});

test('a value past the size limit is refused once and skipped to its end', (t) => {
  const splitter = new JsonSplitter({ maxBytes: 64, maxNesting: 8 });
  const huge = `{"s": "${'x'.repeat(200)}", "t": {"u": "}"}}`;
  t.deepEqual(feedAll(splitter, huge.slice(0, 100), huge.slice(100), '{"ok": 1}'), [{ error: 'JSON token size limit exceeded' }, { value: { ok: 1 } }]);
  t.deepEqual(feedAll(splitter, `"${'y'.repeat(100)}" 7 `), [{ error: 'JSON token size limit exceeded' }, { value: 7 }], 'a string alone too');
});

test('a value nested past the limit is refused once and skipped to its end', (t) => {
  const splitter = new JsonSplitter({ maxBytes: 1024, maxNesting: 8 });
  const deep = `${'['.repeat(20)}${']'.repeat(20)}`;
  t.deepEqual(feedAll(splitter, deep, '[[1]]'), [{ error: 'JSON nesting depth limit exceeded' }, { value: [[1]] }]);
});

test('bytes that are not UTF-8 are a parse error', (t) => {
  const items = feedAll(new JsonSplitter(), Buffer.concat([Buffer.from('{"a": "'), Uint8Array.of(0xc3, 0x28), Buffer.from('"}')]));
  t.is(items.length, 1);
  t.regex((items[0] as { error: string }).error, /^JSON parse error, .*utf-8/i);
});
