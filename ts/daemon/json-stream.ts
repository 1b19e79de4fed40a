// QMP input is a stream of JSON values with no framing: one value may span
// several reads, and one read may hold several values. QEMU lexes the
// stream (qobject/json-lexer.c, json-streamer.c); this finds where each
// top-level value ends, byte by byte, and leaves the parsing to JSON.parse.
//
// Why not a library: the streaming JSON parsers (jsonparse,
// @streamparser/json, stream-json) stop for good at the first error, while
// a QMP server must go on after one: a client puts the parser back into a
// known state by sending a control byte (qmp-spec, "Forcing the JSON parser
// into known-good state"). Nor does any of them take QEMU's single-quoted
// strings or cap what one value may make it hold.

/** A complete value, or why the bytes it was made of were refused. */
export type JsonItem = { value: unknown } | { error: string };

export interface JsonLimits {
  /** The most bytes one value may take: past it, the value is refused and skipped. */
  maxBytes: number;
  /** The deepest nesting of objects and arrays one value may have. */
  maxNesting: number;
}

/**
 * QEMU takes 64 MiB and 1024 levels (MAX_TOKEN_SIZE, MAX_NESTING); no QMP
 * command comes near a megabyte, so a client gets no more of our memory.
 */
const DEFAULT_JSON_LIMITS: JsonLimits = { maxBytes: 1 << 20, maxNesting: 1024 };

const code = (char: string): number => char.charCodeAt(0);
const SPACE = code(' ');
const DQUOTE = code('"');
const SQUOTE = code("'");
const BACKSLASH = code('\\');
const WHITESPACE = new Set([SPACE, code('\t'), code('\n'), code('\r')]);
const OPENERS = new Set([code('{'), code('[')]);
const CLOSERS = new Set([code('}'), code(']')]);
const SEPARATORS = new Set([code(','), code(':')]);

const utf8 = new TextDecoder('utf-8', { fatal: true });

/**
 * What QEMU's lexer rejects wherever it stands: 0xFE and 0xFF, never in
 * UTF-8, and the control characters, which inside a string are not even
 * tab or newline (JSON wants them escaped there).
 */
function isStray(byte: number, inString: boolean): boolean {
  if (byte >= 0xfe) return true;
  return byte < SPACE && (inString || !WHITESPACE.has(byte));
}

/** Ends a number or keyword standing alone: what cannot be part of one. */
function endsScalar(byte: number): boolean {
  return WHITESPACE.has(byte) || OPENERS.has(byte) || CLOSERS.has(byte) || SEPARATORS.has(byte) || byte === DQUOTE || byte === SQUOTE;
}

function parse(bytes: Uint8Array): JsonItem {
  try {
    return { value: JSON.parse(utf8.decode(bytes)) };
  } catch (error) {
    return { error: `JSON parse error, ${(error as Error).message}` };
  }
}

/**
 * Cuts a byte stream into JSON values. Besides standard JSON it takes
 * QEMU's extensions, single-quoted strings and the `\'` escape, rewriting
 * them as standard JSON on the way.
 */
export class JsonSplitter {
  private buffer = Buffer.allocUnsafe(256);
  private length = 0;
  /** Objects and arrays open in the current value. */
  private depth = 0;
  /** The quote that opened the string being read, or 0 outside strings. */
  private quote = 0;
  /** The byte before was the backslash of an escape in a string. */
  private escaped = false;
  /** A number or keyword at the top level, which only the byte after it ends. */
  private inScalar = false;
  /** A limit was passed: the rest of this value is read to its end and dropped. */
  private skipping = false;
  private items: JsonItem[] = [];

  constructor(private readonly limits: JsonLimits = DEFAULT_JSON_LIMITS) {}

  /** Takes the next bytes; returns the values (and errors) they completed, in order. */
  feed(chunk: Uint8Array): JsonItem[] {
    for (let i = 0; i < chunk.length; i++) this.step(chunk[i]);
    return this.items.splice(0);
  }

  private step(byte: number): void {
    if (isStray(byte, this.quote !== 0)) {
      // QEMU's lexical error: report it, forget the partial value, start afresh.
      this.items.push({ error: `JSON parse error, stray '\\x${byte.toString(16).padStart(2, '0')}'` });
      this.reset();
    } else if (this.quote !== 0) {
      this.inString(byte);
    } else if (this.inScalar && !endsScalar(byte)) {
      this.append(byte);
    } else {
      if (this.inScalar) this.complete();
      if (this.depth === 0) this.atTopLevel(byte);
      else this.inContainer(byte);
    }
  }

  /** Between values: whitespace, or the first byte of the next one. */
  private atTopLevel(byte: number): void {
    if (WHITESPACE.has(byte)) return;
    if (byte === DQUOTE || byte === SQUOTE) return this.openString(byte);
    this.append(byte);
    if (OPENERS.has(byte)) this.depth = 1;
    // A stray `}` or `,` is a value of its own, which JSON.parse refuses.
    else if (CLOSERS.has(byte) || SEPARATORS.has(byte)) this.complete();
    else this.inScalar = true;
  }

  private inContainer(byte: number): void {
    if (byte === DQUOTE || byte === SQUOTE) return this.openString(byte);
    this.append(byte);
    if (OPENERS.has(byte)) this.open();
    else if (CLOSERS.has(byte) && --this.depth === 0) this.complete();
  }

  private open(): void {
    this.depth++;
    if (this.depth > this.limits.maxNesting && !this.skipping) this.skip('JSON nesting depth limit exceeded');
  }

  private openString(quote: number): void {
    this.quote = quote;
    this.append(DQUOTE);
  }

  private inString(byte: number): void {
    if (this.escaped) {
      this.escaped = false;
      // `\'` is QEMU's, and means what `'` alone means in standard JSON.
      if (byte !== SQUOTE) this.append(BACKSLASH);
      this.append(byte);
    } else if (byte === BACKSLASH) {
      this.escaped = true;
    } else if (byte === this.quote) {
      this.quote = 0;
      this.append(DQUOTE);
      if (this.depth === 0) this.complete();
    } else {
      // A `"` here is inside a single-quoted string, where it needs no escape.
      if (byte === DQUOTE) this.append(BACKSLASH);
      this.append(byte);
    }
  }

  private append(byte: number): void {
    if (this.skipping) return;
    if (this.length >= this.limits.maxBytes) return this.skip('JSON token size limit exceeded');
    if (this.length === this.buffer.length) {
      const larger = Buffer.allocUnsafe(Math.min(this.buffer.length * 2, this.limits.maxBytes));
      this.buffer.copy(larger);
      this.buffer = larger;
    }
    this.buffer[this.length++] = byte;
  }

  /**
   * Refuses the value once and reads on to its end without keeping it:
   * starting afresh in its middle would read the rest of it as values of
   * their own, and could swallow the next command into a string.
   */
  private skip(error: string): void {
    this.items.push({ error });
    this.skipping = true;
    this.length = 0;
  }

  private complete(): void {
    if (!this.skipping) this.items.push(parse(this.buffer.subarray(0, this.length)));
    this.reset();
  }

  private reset(): void {
    this.length = 0;
    this.depth = 0;
    this.quote = 0;
    this.escaped = false;
    this.inScalar = false;
    this.skipping = false;
  }
}
