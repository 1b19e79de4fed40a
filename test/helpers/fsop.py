#!/usr/bin/python3
"""One file-system operation on a path, answered as one JSON line.

    fsop.py OP PATH [ARGS...]

Prints {"ok": RESULT} or {"errno": "ENAME", "message": "..."}. The tests run
it as a child process (with a timeout) so that I/O on a FUSE mount can never
freeze the test runner, and so that it can run as another user.
"""
import ctypes
import errno
import json
import mmap
import os
import sys

libc = ctypes.CDLL(None, use_errno=True)
libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]

def errname(number):
    """ENOTSUP and EOPNOTSUPP are one number on Linux: always say EOPNOTSUPP."""
    if number == errno.EOPNOTSUPP:
        return 'EOPNOTSUPP'
    return errno.errorcode.get(number, str(number))


OPEN_FLAGS = {
    'r': os.O_RDONLY,
    'w': os.O_WRONLY,
    'rw': os.O_RDWR,
    'trunc': os.O_WRONLY | os.O_TRUNC,
    'rwtrunc': os.O_RDWR | os.O_TRUNC,
    'direct': os.O_RDWR | os.O_DIRECT,
    'rdirect': os.O_RDONLY | os.O_DIRECT,
}


def open_(path, how='rw'):
    return os.open(path, OPEN_FLAGS[how])


def op_stat(path):
    st = os.stat(path)
    return {
        'mode': st.st_mode,
        'ino': st.st_ino,
        'nlink': st.st_nlink,
        'uid': st.st_uid,
        'gid': st.st_gid,
        'size': st.st_size,
        'blocks': st.st_blocks,
    }


def op_read(path, offset, length, how='r'):
    fd = open_(path, how)
    try:
        if how.endswith('direct'):
            buf = mmap.mmap(-1, int(length))
            n = os.preadv(fd, [buf], int(offset))
            return buf[:n].hex()
        return os.pread(fd, int(length), int(offset)).hex()
    finally:
        os.close(fd)


def op_write(path, offset, hexdata, how='rw', sync='0'):
    """Writes hex bytes, or stdin when hexdata is '-'; returns the count written."""
    data = sys.stdin.buffer.read() if hexdata == '-' else bytes.fromhex(hexdata)
    fd = open_(path, how)
    try:
        if how.endswith('direct'):
            buf = mmap.mmap(-1, len(data))
            buf[:] = data
            n = os.pwritev(fd, [buf], int(offset))
        else:
            n = os.pwrite(fd, data, int(offset))
        if sync == '1':
            os.fsync(fd)
        return n
    finally:
        os.close(fd)


def op_open(path, how='r'):
    os.close(open_(path, how))
    return True


def op_truncate(path, size):
    os.truncate(path, int(size))
    return True


def op_ftruncate(path, size):
    fd = open_(path, 'rw')
    try:
        os.ftruncate(fd, int(size))
        return True
    finally:
        os.close(fd)


def op_fallocate(path, mode, offset, length):
    fd = open_(path, 'rw')
    try:
        if libc.fallocate(fd, int(mode, 0), int(offset), int(length)) != 0:
            e = ctypes.get_errno()
            raise OSError(e, os.strerror(e))
        return True
    finally:
        os.close(fd)


def op_lseek(path, offset, whence):
    fd = open_(path, 'r')
    try:
        return os.lseek(fd, int(offset), {'data': os.SEEK_DATA, 'hole': os.SEEK_HOLE}[whence])
    finally:
        os.close(fd)


def op_chmod(path, mode):
    os.chmod(path, int(mode, 8))
    return True


def op_chown(path, uid, gid):
    os.chown(path, int(uid), int(gid))
    return True


def op_utime(path, seconds):
    os.utime(path, (int(seconds), int(seconds)))
    return True


def op_getxattr(path, name):
    return os.getxattr(path, name).hex()


def op_setxattr(path, name, value):
    os.setxattr(path, name, value.encode())
    return True


def op_listxattr(path):
    return os.listxattr(path)


def op_fsync(path, hexdata):
    """Writes at 0, fsyncs, fdatasyncs, closes (FLUSH): each must succeed."""
    fd = open_(path, 'rw')
    os.pwrite(fd, bytes.fromhex(hexdata), 0)
    os.fsync(fd)
    os.fdatasync(fd)
    os.close(fd)
    return True


def op_mmapwrite(path, offset, hexdata):
    """Writes through a MAP_SHARED mapping, msyncs, unmaps and closes."""
    data = bytes.fromhex(hexdata)
    fd = open_(path, 'rw')
    try:
        size = os.fstat(fd).st_size
        m = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        before = m[int(offset):int(offset) + len(data)].hex()
        m[int(offset):int(offset) + len(data)] = data
        m.flush()
        m.close()
        return before
    finally:
        os.close(fd)


def op_acked_writes(path, block, count):
    """Writes block i (filled with i % 251 + 1) at i * block, fsyncs, and
    prints each acknowledged index, until count or the first error."""
    fd = open_(path, 'direct')
    block, count = int(block), int(count)
    buf = mmap.mmap(-1, block)
    done = 0
    try:
        for i in range(count):
            buf[:] = bytes([i % 251 + 1]) * block
            os.pwritev(fd, [buf], i * block)
            os.fsync(fd)
            done = i + 1
            print(json.dumps({'acked': i}), flush=True)
    except OSError as e:
        return {'done': done, 'errno': errname(e.errno)}
    return {'done': done}


FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, FALLOC_FL_ZERO_RANGE = 0x01, 0x02, 0x10


def op_random_ops(path, seed, steps, shrink, limit, align='1'):
    """Random writes, reads, punched holes, zeroed ranges, truncates and
    fsyncs at random offsets and sizes, each answer checked against a model
    of the file (the whole file compared every 64 steps and at the end).
    `shrink` is what a smaller truncate must give: 'ok' or an errno name;
    the file never grows past `limit`; it grows in steps of `align` bytes
    (qcow2: 512), and a truncate to another size must fail EINVAL. Returns the count of each operation;
    the first difference raises, naming the step."""
    import random
    rng = random.Random(int(seed))
    steps, limit, align = int(steps), int(limit), int(align)
    fd = open_(path, 'rw')
    model = bytearray(os.pread(fd, os.fstat(fd).st_size, 0))
    counts = {}

    def fail(step, what):
        raise OSError(errno.EIO, f'step {step} (seed {seed}): {what}')

    def compare(step, offset, length):
        got = os.pread(fd, length, offset)
        want = bytes(model[offset:offset + length])
        if got != want:
            at = next((i for i in range(min(len(got), len(want))) if got[i] != want[i]), min(len(got), len(want)))
            fail(step, f'read {length} at {offset}: differs from the model at {offset + at} ({len(got)} bytes read)')

    def falloc(mode, offset, length):
        if libc.fallocate(fd, mode, offset, length) != 0:
            e = ctypes.get_errno()
            raise OSError(e, os.strerror(e))

    ops = ['write', 'read', 'punch', 'zero', 'truncate', 'fsync']
    for step in range(steps):
        op = rng.choices(ops, weights=[40, 25, 10, 10, 5, 10])[0]
        counts[op] = counts.get(op, 0) + 1
        size = len(model)
        length = rng.choice([1, 511, 4096, 65536, rng.randrange(1, 300_000)])
        offset = rng.randrange(0, max(size, 1))
        if rng.random() < 0.3:
            offset -= offset % 4096
        if op == 'write':
            offset = min(offset + (rng.randrange(0, 8192) if rng.random() < 0.05 else 0), limit - 1)
            length = min(length, limit - offset)
            data = rng.randbytes(length)
            written = os.pwrite(fd, data, offset)
            if written != length:
                fail(step, f'write of {length} at {offset} wrote {written}')
            if offset + length > size:
                model.extend(bytes(-(-(offset + length) // align) * align - size))
            model[offset:offset + length] = data
            compare(step, offset, length)
        elif op == 'read':
            compare(step, offset, length)
        elif op in ('punch', 'zero'):
            mode = FALLOC_FL_KEEP_SIZE | (FALLOC_FL_PUNCH_HOLE if op == 'punch' else FALLOC_FL_ZERO_RANGE)
            falloc(mode, offset, length)
            end = min(offset + length, size)
            model[offset:end] = bytes(end - offset)
            compare(step, max(offset - 100, 0), end - offset + 200)
        elif op == 'truncate':
            new = rng.randrange(size // 2, min(size * 3 // 2, limit) + 1)
            try:
                os.ftruncate(fd, new)
                outcome = 'ok'
            except OSError as e:
                outcome = errname(e.errno)
            want = 'EINVAL' if new % align else 'ok' if new >= size else shrink
            if outcome != want:
                fail(step, f'truncate {size} -> {new}: {outcome}, expected {want}')
            if outcome == 'ok':
                model = model[:new] if new < size else model + bytes(new - size)
            if os.fstat(fd).st_size != len(model):
                fail(step, f'size {os.fstat(fd).st_size}, expected {len(model)}')
        else:
            os.fsync(fd)
        if step % 64 == 63:
            compare(step, 0, len(model) + 4096)
    compare(steps, 0, len(model) + 4096)
    if os.fstat(fd).st_size != len(model):
        fail(steps, f'final size {os.fstat(fd).st_size}, expected {len(model)}')
    os.close(fd)
    return counts


def op_scan(path, block, limit, spread):
    """Reads the first `limit` bytes block by block, then `spread` blocks
    spaced evenly over the rest of the file; a failed read is counted by
    its errno and the scan goes on. Returns {"bytes": n, "EIO": m, ...}."""
    block, limit, spread = int(block), int(limit), int(spread)
    fd = open_(path, 'r')
    counts = {}
    try:
        size = os.fstat(fd).st_size
        offsets = list(range(0, min(size, limit), block))
        if size > limit:
            step = max(block, (size - limit) // max(spread, 1))
            offsets += list(range(limit, size, step))[:spread]
        for offset in offsets:
            try:
                os.pread(fd, block, offset)
                outcome = 'bytes'
            except OSError as e:
                outcome = errname(e.errno)
            counts[outcome] = counts.get(outcome, 0) + 1
        return counts
    finally:
        os.close(fd)


def main():
    op, args = sys.argv[1], sys.argv[2:]
    try:
        result = {'ok': globals()['op_' + op](*args)}
    except OSError as e:
        result = {'errno': errname(e.errno), 'message': e.strerror}
    print(json.dumps(result), flush=True)


if __name__ == '__main__':
    main()
