// Everything the end-to-end tests share.
export * from './proc.js';
export * from './fio.js';
export * from './files.js';
export * from './mounts.js';
export * from './cli.js';
export * from './api.js';
export * from './transports.js';
export * from './uring.js';
export * from './fixture.js';
export * from './qcow2.js';
export * from './loop.js';
export * from './crash-loop.js';
export { register, stopLeftovers } from './registry.js';
export * from './hold.js';
