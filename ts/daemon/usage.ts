// `fuse-export-storage-daemon --help`.
export const USAGE = `Usage: fuse-export-storage-daemon [options]

qemu-storage-daemon's command line and QMP for FUSE exports: block nodes
exported as regular files through FUSE (FUSE-over-io_uring where the kernel
offers it), added and removed over QMP while it runs.

  --blockdev [driver=]DRIVER,node-name=NAME[,KEY=VALUE...] | '{JSON}'
        a block node: driver file, host_device, raw, qcow2, nbd, or a format
        QEMU serves (vmdk, vhdx, vdi, vpc, qed, qcow, luks, parallels, bochs,
        cloop, dmg); read-only, cache.direct, discard, file, backing (null),
        aio and locking as QEMU takes them
  --export [type=]fuse,id=ID,node-name=NAME,mountpoint=FILE[,writable=on|off]
        [,growable=on|off][,allow-other=on|off|auto][,iothread=ID]
        [,io-uring=on|off|auto][,passthrough=on|off|auto][,queue-depth=N]
        [,poll-max-us=N]
        a FUSE export of a node onto an existing regular file
  --object iothread,id=ID          a set of I/O threads (iothread=ID in --export)
  --object secret,id=ID,data=TEXT|file=PATH
                                   a LUKS key (key-secret=ID in --blockdev)
  --chardev socket,id=ID,path=PATH,server=on,wait=off
  --monitor chardev=ID             QMP on that socket
  --metrics HOST:PORT | unix:PATH  Prometheus metrics of every export
  --pidfile PATH                   written once the exports serve
  --daemonize                      run in the background once the exports serve
  -h, --help                       this text
  -V, --version

Without --daemonize, READY=1 goes to NOTIFY_SOCKET once the command line's
exports serve, and STOPPING=1 at shutdown (systemd Type=notify).
SIGINT / SIGTERM or QMP's quit drain and unmount every export, exit 0.
`;
