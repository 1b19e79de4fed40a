// What a QMP command handler works with: the client it serves, the error it
// throws, and the check of its arguments against a schema stated once, in
// the words QEMU's QAPI input visitor (qapi/qobject-input-visitor.c) uses,
// so that scripts written against qemu-storage-daemon read the same errors.

/** The error classes QMP knows (QEMU's QapiErrorClass). */
export type QmpErrorClass = 'GenericError' | 'CommandNotFound' | 'DeviceNotActive' | 'DeviceNotFound' | 'KVMMissingCap';

/** A command's failure as the client is to see it: `{"error": {"class", "desc"}}`. */
export class QmpError extends Error {
  override name = 'QmpError';

  constructor(
    desc: string,
    readonly errorClass: QmpErrorClass = 'GenericError',
  ) {
    super(desc);
  }
}

/** The client a command came from. */
export interface ClientInfo {
  /** Unique among the clients of one server, from 1 in the order they connected. */
  readonly id: number;
}

/** Runs one command: returns (or resolves to) its `return` value, or throws a QmpError or any Error. */
export type QmpHandler = (args: Record<string, unknown>, client: ClientInfo) => Promise<unknown> | unknown;

/** A type an argument may have, named as the schema names it. */
export type ArgType = 'str' | 'int' | 'bool' | 'number' | 'object' | 'array' | 'any';

/** One of the listed strings (a QAPI enum). */
export interface EnumSpec {
  readonly values: readonly string[];
  readonly optional?: boolean;
}

/** An argument's type; a `?` after it makes the argument optional. */
export type ArgSpec = ArgType | `${ArgType}?` | EnumSpec;

export type ArgSchema = Readonly<Record<string, ArgSpec>>;

interface ArgTypes {
  str: string;
  int: number;
  bool: boolean;
  number: number;
  object: Record<string, unknown>;
  array: unknown[];
  any: unknown;
}

type ValueOf<S extends ArgSpec> = S extends EnumSpec
  ? S['values'][number]
  : S extends `${infer T extends ArgType}?`
    ? ArgTypes[T]
    : S extends ArgType
      ? ArgTypes[S]
      : never;

type OptionalKeys<S extends ArgSchema> = {
  [K in keyof S]: S[K] extends `${string}?` | { optional: true } ? K : never;
}[keyof S];

/** The arguments a schema describes, typed: the optional ones may be absent. */
export type Arguments<S extends ArgSchema> = {
  -readonly [K in Exclude<keyof S, OptionalKeys<S>>]: ValueOf<S[K]>;
} & {
  -readonly [K in OptionalKeys<S>]?: ValueOf<S[K]>;
};

/** The word QEMU's message uses for each type. */
const EXPECTED: Record<Exclude<ArgType, 'any'>, string> = {
  str: 'string',
  int: 'integer',
  bool: 'boolean',
  number: 'number',
  object: 'object',
  array: 'array',
};

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/**
 * JSON.parse makes every number a double: an integer past 2^53 has already
 * been rounded, so it is refused rather than acted on as another number.
 */
const HAS_TYPE: Record<Exclude<ArgType, 'any'>, (value: unknown) => boolean> = {
  str: (value) => typeof value === 'string',
  int: (value) => Number.isSafeInteger(value),
  bool: (value) => typeof value === 'boolean',
  number: (value) => typeof value === 'number',
  object: isObject,
  array: (value) => Array.isArray(value),
};

function isOptional(spec: ArgSpec): boolean {
  return typeof spec === 'string' ? spec.endsWith('?') : spec.optional === true;
}

function checkValue(name: string, value: unknown, spec: ArgSpec): void {
  if (typeof spec !== 'string') return checkEnum(name, value, spec);
  const type = spec.replace(/\?$/, '') as ArgType;
  if (type !== 'any' && !HAS_TYPE[type](value)) {
    throw new QmpError(`Invalid parameter type for '${name}', expected: ${EXPECTED[type]}`);
  }
}

/** An enum member is read as a string first, as QEMU's visitor does. */
export function checkEnum(name: string, value: unknown, spec: EnumSpec): void {
  if (typeof value !== 'string') throw new QmpError(`Invalid parameter type for '${name}', expected: string`);
  if (!spec.values.includes(value)) throw new QmpError(`Parameter '${name}' does not accept value '${value}'`);
}

/**
 * Checks a command's arguments against its schema and returns them typed:
 * each argument in the schema's order (missing, then of the wrong type),
 * then any argument the schema does not name, as QEMU checks them.
 *
 *   const { 'node-name': node, size } = checkArguments(args, { 'node-name': 'str', size: 'int' });
 */
export function checkArguments<const S extends ArgSchema>(args: Record<string, unknown>, schema: S): Arguments<S> {
  for (const [name, spec] of Object.entries(schema)) {
    if (!Object.hasOwn(args, name)) {
      if (isOptional(spec)) continue;
      throw new QmpError(`Parameter '${name}' is missing`);
    }
    checkValue(name, args[name], spec);
  }
  const unexpected = Object.keys(args).find((name) => !Object.hasOwn(schema, name));
  if (unexpected !== undefined) throw new QmpError(`Parameter '${unexpected}' is unexpected`);
  return args as Arguments<S>;
}
