// QEMU's KEY=VALUE,... syntax (util/keyval.c), which qemu-storage-daemon's
// --blockdev, --export and --object take, and the JSON form they also take.
//
//   a=1,b.c=2           {a: '1', b: {c: '2'}}   dotted keys nest
//   a=x,,y              {a: 'x,y'}              ',,' is a literal comma
//   fuse,id=e           {type: 'fuse', id: 'e'} with the implied key "type"
//   l.1=b,l.0=a         {l: ['a', 'b']}         numeric fragments make a list
//
// Values stay strings: what a key's value means is the caller's schema.
// One departure from QEMU: a key given twice is refused rather than the
// last one winning, as a repeated key is a mistake on a command line.
import { DaemonConfigError } from './config.js';

/** QAPI names: a letter, then letters, digits, '-' and '_'. */
const NAME = /^[A-Za-z][A-Za-z0-9_-]*$/;
const INDEX = /^[0-9]+$/;
/** keyval.c's limit on one fragment of a dotted key. */
const MAX_FRAGMENT = 127;

/** The tree as it is built: a group of keys, each a value or a group. */
type Group = Map<string, Group | string>;

interface Pair {
  fragments: string[];
  value: string;
  /** Where the next pair starts. */
  next: number;
}

/**
 * Parses `text` in QEMU's key=value syntax. The first element may be a
 * bare value of `impliedKey` (`fuse,id=x` with "type" is `type=fuse,id=x`).
 */
export function parseKeyval(text: string, impliedKey?: string): Record<string, unknown> {
  const root: Group = new Map();
  let position = 0;
  while (position < text.length) {
    const pair = readPair(text, position, position === 0 ? impliedKey : undefined);
    put(root, pair.fragments, pair.value);
    position = pair.next;
  }
  return listify(root, '') as Record<string, unknown>;
}

/**
 * An option's argument as qemu-storage-daemon reads it: JSON when it
 * starts with '{' (its values typed), else key=value.
 */
export function parseKeyvalOrJson(text: string, impliedKey?: string): Record<string, unknown> {
  if (!text.startsWith('{')) return parseKeyval(text, impliedKey);
  try {
    return JSON.parse(text) as Record<string, unknown>;
  } catch (error) {
    throw new DaemonConfigError(`invalid JSON: ${(error as Error).message}`);
  }
}

function readPair(text: string, start: number, impliedKey: string | undefined): Pair {
  const keyEnd = indexOfEither(text, start, '=', ',');
  // A bare first element is the implied key's value; it cannot hold ',' or '='.
  if (impliedKey !== undefined && keyEnd > start && text[keyEnd] !== '=') {
    return {
      fragments: impliedKey.split('.'),
      value: text.slice(start, keyEnd),
      next: text[keyEnd] === ',' ? keyEnd + 1 : keyEnd,
    };
  }
  const key = text.slice(start, keyEnd);
  const fragments = keyFragments(key);
  if (text[keyEnd] !== '=') throw new DaemonConfigError(`expected "=" after key "${key}"`);
  return { fragments, ...readValue(text, keyEnd + 1) };
}

/** A value runs to the first single ','; ',,' stands for one comma. */
function readValue(text: string, start: number): { value: string; next: number } {
  let value = '';
  let position = start;
  while (position < text.length) {
    const comma = text.indexOf(',', position);
    if (comma === -1) return { value: value + text.slice(position), next: text.length };
    value += text.slice(position, comma);
    if (text[comma + 1] !== ',') return { value, next: comma + 1 };
    value += ',';
    position = comma + 2;
  }
  return { value, next: position };
}

function indexOfEither(text: string, start: number, a: string, b: string): number {
  for (let i = start; i < text.length; i++) {
    if (text[i] === a || text[i] === b) return i;
  }
  return text.length;
}

function keyFragments(key: string): string[] {
  if (key === '') throw new DaemonConfigError('a key is missing (an empty element, or "=" with nothing before it)');
  const fragments = key.split('.');
  fragments.forEach((fragment, i) => {
    // The root is an object: only keys below it may be list indexes.
    if (!NAME.test(fragment) && !(i > 0 && INDEX.test(fragment))) {
      throw new DaemonConfigError(
        `invalid key "${key}": its parts are names (a letter, then letters, digits, "-", "_") or, below the first, list indexes, joined by "."`,
      );
    }
    if (fragment.length > MAX_FRAGMENT) {
      throw new DaemonConfigError(`key "${key}" has a part longer than ${MAX_FRAGMENT} characters`);
    }
  });
  // list.01 and list.1 are one item.
  return fragments.map((fragment) => (INDEX.test(fragment) ? fragment.replace(/^0+(?=.)/, '') : fragment));
}

function put(root: Group, fragments: readonly string[], value: string): void {
  let group = root;
  fragments.slice(0, -1).forEach((fragment, i) => {
    const child = group.get(fragment) ?? new Map<string, Group | string>();
    if (typeof child === 'string') {
      throw new DaemonConfigError(`key "${joined(fragments, i + 1)}" is given both a value and keys below it`);
    }
    group.set(fragment, child);
    group = child;
  });
  const last = fragments[fragments.length - 1];
  const old = group.get(last);
  if (old instanceof Map) {
    throw new DaemonConfigError(`key "${joined(fragments, fragments.length)}" is given both a value and keys below it`);
  }
  if (old !== undefined) throw new DaemonConfigError(`duplicate key "${joined(fragments, fragments.length)}"`);
  group.set(last, value);
}

function joined(fragments: readonly string[], count: number): string {
  return fragments.slice(0, count).join('.');
}

/** Groups keyed by indexes become lists, which must have no gaps. */
function listify(group: Group, path: string): Record<string, unknown> | unknown[] {
  const entries = [...group].map(([key, value]): [string, unknown] => [
    key,
    typeof value === 'string' ? value : listify(value, path === '' ? key : `${path}.${key}`),
  ]);
  const indexed = entries.filter(([key]) => INDEX.test(key)).length;
  if (indexed === 0) return Object.fromEntries(entries);
  if (indexed < entries.length) {
    throw new DaemonConfigError(`key "${path}" has both list items and named keys below it`);
  }
  const items: unknown[] = [];
  for (const [key, value] of entries) {
    const index = Number(key);
    if (index < entries.length) items[index] = value;
  }
  const missing = Array.from({ length: entries.length }, (_, i) => i).find((i) => !(i in items));
  if (missing !== undefined) {
    throw new DaemonConfigError(`key "${path}.${missing}" is missing: list items count from 0, without gaps`);
  }
  return items;
}
