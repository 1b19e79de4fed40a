// From qemu-storage-daemon's graph of block nodes to what one export of
// ours takes: an image (a file, a block device or an NBD URI), its format,
// whether it is read-only, and its cache mode. We serve a format node over
// a protocol node (file, host_device, nbd), or a protocol node alone.
import { FORMATS, type CacheMode, type ImageFormat } from '../options.js';
import { DaemonConfigError, type BlockdevOptions } from './config.js';

export interface ResolvedNode {
  /** A file or block device path, or an NBD URI. */
  image: string;
  format: ImageFormat;
  /** `read-only` somewhere in the chain. */
  readOnly: boolean;
  /** `cache.direct=on` is direct; qemu-storage-daemon's default (off) is writeback. */
  cache: CacheMode;
  /** The id of the secret holding the image's key (luks `key-secret`, qcow2 `encrypt.key-secret`). */
  keySecret?: string;
}

/** The drivers that reach the bytes; anything over them is a format. */
export const PROTOCOL_DRIVERS = ['file', 'host_device', 'nbd'] as const;
/** The formats, each named alike by QEMU's driver and our `format` option. */
export const FORMAT_DRIVERS: readonly ImageFormat[] = FORMATS.filter((format) => format !== 'auto');

/** The keys by which a node names (or nests) another. */
const CHILD_KEYS = ['file', 'backing'] as const;

/** What a node passes down to a child it nests (QEMU's inherited options). */
interface Inherited {
  readOnly: boolean;
  /** cache.direct reaches nested children only; a node referenced by name has its own. */
  direct: boolean | undefined;
}

/** The chain under `nodeName` as one image of ours. */
export function resolveNode(nodes: ReadonlyMap<string, BlockdevOptions>, nodeName: string): ResolvedNode {
  const node = nodes.get(nodeName);
  if (node === undefined) throw new DaemonConfigError(`node "${nodeName}" is not defined`);
  return resolve(nodes, node, `node "${nodeName}"`, { readOnly: false, direct: undefined }, new Set());
}

/**
 * Every named node of `blockdevs`, the nested ones (`file.node-name=...`)
 * too, by name. A name given twice is refused.
 */
export function nodeGraph(blockdevs: readonly BlockdevOptions[]): Map<string, BlockdevOptions> {
  const graph = new Map<string, BlockdevOptions>();
  const add = (node: BlockdevOptions): void => {
    const name = node['node-name'];
    if (name !== undefined) {
      if (graph.has(name)) throw new DaemonConfigError(`node name "${name}" is defined twice`);
      graph.set(name, node);
    }
    nestedChildren(node).forEach(add);
  };
  blockdevs.forEach(add);
  return graph;
}

/** The nodes that name `nodeName` as a child, or nest it: what a blockdev-del of it would break. */
export function nodeUsers(nodes: ReadonlyMap<string, BlockdevOptions>, nodeName: string): string[] {
  return [...nodes].filter(([, node]) => childNames(node).includes(nodeName)).map(([name]) => name);
}

/** The node names `node` refers to, by name or by nesting, at any depth. */
export function childNames(node: BlockdevOptions): string[] {
  return CHILD_KEYS.flatMap((key) => {
    const child = node[key];
    if (typeof child === 'string' && child !== '') return [child];
    if (!isNode(child)) return [];
    const name = child['node-name'];
    return [...(name === undefined ? [] : [name]), ...childNames(child)];
  });
}

function nestedChildren(node: BlockdevOptions): BlockdevOptions[] {
  return CHILD_KEYS.map((key) => node[key]).filter(isNode);
}

function isNode(value: unknown): value is BlockdevOptions {
  return typeof value === 'object' && value !== null && typeof (value as BlockdevOptions).driver === 'string';
}

function resolve(
  nodes: ReadonlyMap<string, BlockdevOptions>,
  node: BlockdevOptions,
  where: string,
  inherited: Inherited,
  seen: Set<BlockdevOptions>,
): ResolvedNode {
  if (seen.has(node)) throw new DaemonConfigError(`${where} is reached again through its own children`);
  seen.add(node);
  const readOnly = inherited.readOnly || node['read-only'] === true;
  const direct = cacheDirect(node) ?? inherited.direct;
  if (isProtocol(node.driver)) {
    return { image: imageOf(node, where), format: 'raw', readOnly, cache: direct === true ? 'direct' : 'writeback' };
  }
  const format = FORMAT_DRIVERS.find((driver) => driver === node.driver);
  if (format === undefined) throw new DaemonConfigError(`${where}: driver "${node.driver}" is not served`);
  refuseBacking(node, where);
  const { child, childWhere, nested } = fileChild(nodes, node, where);
  const below = resolve(nodes, child, childWhere, { readOnly, direct: nested ? direct : undefined }, seen);
  if (isProtocol(child.driver)) return { ...below, format, ...keySecretOf(node) };
  // raw over a format adds nothing (it takes no offset or size here).
  if (format === 'raw') return below;
  throw new DaemonConfigError(
    `${where}: ${format} over ${childWhere} (${child.driver}) is not served: a format goes over ${PROTOCOL_DRIVERS.join(', ')}`,
  );
}

function isProtocol(driver: string): boolean {
  return (PROTOCOL_DRIVERS as readonly string[]).includes(driver);
}

function cacheDirect(node: BlockdevOptions): boolean | undefined {
  const cache = node.cache as { direct?: boolean } | undefined;
  return cache?.direct;
}

/** QEMU opens the image's own backing file unless told otherwise; "" is QEMU's old spelling of null. */
function refuseBacking(node: BlockdevOptions, where: string): void {
  const backing = node.backing;
  if (backing !== undefined && backing !== null && backing !== '') {
    throw new DaemonConfigError(
      `${where}: backing given explicitly is not served: the image's own backing file is followed`,
    );
  }
}

function fileChild(
  nodes: ReadonlyMap<string, BlockdevOptions>,
  node: BlockdevOptions,
  where: string,
): { child: BlockdevOptions; childWhere: string; nested: boolean } {
  const file = node.file;
  if (isNode(file)) return { child: file, childWhere: `${where}'s file`, nested: true };
  if (typeof file !== 'string' || file === '') throw new DaemonConfigError(`${where}: "file" is required`);
  const child = nodes.get(file);
  if (child === undefined) throw new DaemonConfigError(`${where}: its file, node "${file}", is not defined`);
  return { child, childWhere: `node "${file}"`, nested: false };
}

function keySecretOf(node: BlockdevOptions): Pick<ResolvedNode, 'keySecret'> {
  const encrypt = node.encrypt as { 'key-secret'?: string } | undefined;
  const secret = node.driver === 'luks' ? node['key-secret'] : encrypt?.['key-secret'];
  return typeof secret === 'string' ? { keySecret: secret } : {};
}

function imageOf(node: BlockdevOptions, where: string): string {
  if (node.driver === 'nbd') return nbdUri(node, where);
  const filename = node.filename;
  if (typeof filename !== 'string' || filename === '') {
    throw new DaemonConfigError(`${where}: "filename" is required`);
  }
  return filename;
}

interface SocketAddress {
  type?: string;
  path?: string;
  host?: string;
  port?: string;
}

function nbdUri(node: BlockdevOptions, where: string): string {
  const server = (node.server ?? {}) as SocketAddress;
  const exportName = uriPart(typeof node.export === 'string' ? node.export : '');
  if (server.type === 'unix' && server.path) return `nbd+unix:///${exportName}?socket=${uriPart(server.path)}`;
  if (server.type === 'inet' && server.host && server.port) {
    // An IPv6 address is bracketed in a URI.
    const host = server.host.includes(':') ? `[${server.host}]` : server.host;
    return `nbd://${host}:${server.port}/${exportName}`;
  }
  throw new DaemonConfigError(`${where}: "server" needs type=unix with path, or type=inet with host and port`);
}

/** Percent-encoded for a URI, its slashes kept for legibility (they mean the same there). */
function uriPart(text: string): string {
  return encodeURIComponent(text).replace(/%2F/gi, '/');
}
