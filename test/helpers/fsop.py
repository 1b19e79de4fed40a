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


def main():
    op, args = sys.argv[1], sys.argv[2:]
    try:
        result = {'ok': globals()['op_' + op](*args)}
    except OSError as e:
        result = {'errno': errname(e.errno), 'message': e.strerror}
    print(json.dumps(result), flush=True)


if __name__ == '__main__':
    main()
