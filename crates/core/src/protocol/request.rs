//! Turning the bytes of a request into a typed operation.

use super::abi::*;

/// What a request asks for, with its fixed arguments copied out of the
/// buffer. WRITE data stays where it arrived: the transport knows where.
#[derive(Debug, Clone, Copy)]
pub enum Operation {
    Init {
        arg: InitIn,
        flags: u64,
    },
    Lookup,
    Getattr,
    Setattr(SetattrIn),
    Open(OpenIn),
    Read(ReadIn),
    Write(WriteIn),
    Release,
    Statfs,
    Flush,
    Fsync(FsyncIn),
    Fallocate(FallocateIn),
    Lseek(LseekIn),
    /// Requests that must never be answered.
    Forget,
    Interrupt,
    Destroy,
    /// Anything else: answered with ENOSYS.
    Unsupported(u32),
}

impl Operation {
    /// Whether it reads, writes or reshapes the image's data (or asks where
    /// the data is): what a drain holds back. Flushes are not: they only make
    /// durable what was acknowledged, and a `close()` or `fsync()` that comes
    /// during a stop must not wait for it.
    pub fn moves_data(&self) -> bool {
        match self {
            Operation::Read(_) | Operation::Write(_) | Operation::Fallocate(_) | Operation::Lseek(_) => true,
            Operation::Setattr(set) => set.valid & fattr::SIZE != 0,
            Operation::Open(open) => open.flags & libc::O_TRUNC as u32 != 0,
            _ => false,
        }
    }

    /// FORGET and INTERRUPT: the kernel waits for no answer, not even an error.
    pub fn expects_reply(&self) -> bool {
        !matches!(self, Operation::Forget | Operation::Interrupt)
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Request {
    pub header: InHeader,
    pub operation: Operation,
}

/// Why a request could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Malformed {
    /// The header itself is unusable: the stream cannot be trusted.
    Header,
    /// The header is fine but its arguments do not add up: answer EINVAL.
    Arguments { unique: u64 },
}

/// Reads the in-header from the first bytes of a request.
pub fn decode_header(bytes: &[u8]) -> Result<InHeader, Malformed> {
    read_struct::<InHeader>(bytes).ok_or(Malformed::Header)
}

/// Decodes a request whose header was read already. `args` are the bytes
/// that follow the in-header (the opcode's arguments), `payload_len` the
/// length of the data that came with a WRITE.
pub fn decode(header: InHeader, args: &[u8], payload_len: usize) -> Result<Request, Malformed> {
    let bad = Malformed::Arguments { unique: header.unique };
    let operation = match header.opcode {
        opcode::INIT => {
            let init: InitIn = read_struct(args).ok_or(bad)?;
            // Widen as unsigned: the top bit of `flags` must not leak into flags2.
            let mut flags = u64::from(init.flags);
            if flags & init_flag::INIT_EXT != 0 {
                let flags2: u32 = args.get(16..).and_then(read_struct).ok_or(bad)?;
                flags |= u64::from(flags2) << 32;
            }
            Operation::Init { arg: init, flags }
        }
        opcode::LOOKUP => Operation::Lookup,
        opcode::GETATTR => Operation::Getattr,
        opcode::SETATTR => Operation::Setattr(read_struct(args).ok_or(bad)?),
        opcode::OPEN => Operation::Open(read_struct(args).ok_or(bad)?),
        opcode::READ => Operation::Read(read_struct(args).ok_or(bad)?),
        opcode::WRITE => {
            let write: WriteIn = read_struct(args).ok_or(bad)?;
            if write.size as usize != payload_len || write.size > MAX_WRITE {
                return Err(bad);
            }
            Operation::Write(write)
        }
        opcode::RELEASE => Operation::Release,
        opcode::STATFS => Operation::Statfs,
        opcode::FLUSH => Operation::Flush,
        opcode::FSYNC => Operation::Fsync(read_struct(args).ok_or(bad)?),
        opcode::FALLOCATE => Operation::Fallocate(read_struct(args).ok_or(bad)?),
        opcode::LSEEK => Operation::Lseek(read_struct(args).ok_or(bad)?),
        opcode::FORGET | opcode::BATCH_FORGET => Operation::Forget,
        opcode::INTERRUPT => Operation::Interrupt,
        opcode::DESTROY => Operation::Destroy,
        other => Operation::Unsupported(other),
    };
    Ok(Request { header, operation })
}

/// Decodes one message read from /dev/fuse: the header's length must be
/// exactly what the read returned.
pub fn decode_message(message: &[u8]) -> Result<Request, Malformed> {
    let header = decode_header(message)?;
    if header.len as usize != message.len() {
        return Err(Malformed::Header);
    }
    let args = &message[IN_HEADER_SIZE..];
    let payload_len = match header.opcode {
        opcode::WRITE => message.len().saturating_sub(WRITE_HEADER_SIZE),
        _ => 0,
    };
    decode(header, args, payload_len)
}

/// Decodes a request delivered in a ring entry: header and opcode arguments
/// in the entry's header, data in its payload buffer.
pub fn decode_ring_entry(entry: &UringReqHeader) -> Result<Request, Malformed> {
    let header = decode_header(&entry.in_out)?;
    let payload_len = entry.ring_ent_in_out.payload_sz as usize;
    decode(header, &entry.op_in, payload_len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::ByteValued;

    fn message(opcode: u32, unique: u64, args: &[u8]) -> Vec<u8> {
        let header = InHeader {
            len: (IN_HEADER_SIZE + args.len()) as u32,
            opcode,
            unique,
            nodeid: 1,
            uid: 1000,
            gid: 1000,
            pid: 42,
            padding: 0,
        };
        let mut bytes = header.as_slice().to_vec();
        bytes.extend_from_slice(args);
        bytes
    }

    #[test]
    fn decodes_a_read_from_its_wire_bytes() {
        let mut args = Vec::new();
        args.extend_from_slice(&7u64.to_ne_bytes()); // fh
        args.extend_from_slice(&4096u64.to_ne_bytes()); // offset
        args.extend_from_slice(&512u32.to_ne_bytes()); // size
        args.extend_from_slice(&[0; 20]); // read_flags, lock_owner, flags, padding
        let request = decode_message(&message(opcode::READ, 9, &args)).unwrap();
        assert_eq!(request.header.unique, 9);
        assert_eq!(request.header.uid, 1000);
        match request.operation {
            Operation::Read(read) => {
                assert_eq!((read.fh, read.offset, read.size), (7, 4096, 512));
            }
            other => panic!("decoded {other:?}"),
        }
    }

    #[test]
    fn write_data_length_must_match_its_size_field() {
        let write = WriteIn { offset: 0, size: 4, ..Default::default() };
        let mut args = write.as_slice().to_vec();
        args.extend_from_slice(b"abcd");
        let ok = decode_message(&message(opcode::WRITE, 3, &args)).unwrap();
        assert!(matches!(ok.operation, Operation::Write(w) if w.size == 4));

        args.push(b'e');
        let err = decode_message(&message(opcode::WRITE, 3, &args)).unwrap_err();
        assert_eq!(err, Malformed::Arguments { unique: 3 });
    }

    #[test]
    fn short_arguments_are_answered_not_trusted() {
        let err = decode_message(&message(opcode::SETATTR, 5, &[0; 10])).unwrap_err();
        assert_eq!(err, Malformed::Arguments { unique: 5 });
    }

    #[test]
    fn a_header_whose_length_lies_breaks_the_stream() {
        let mut bytes = message(opcode::GETATTR, 1, &[0; 16]);
        bytes[0] = 200;
        assert_eq!(decode_message(&bytes).unwrap_err(), Malformed::Header);
        assert_eq!(decode_message(&bytes[..20]).unwrap_err(), Malformed::Header);
    }

    #[test]
    fn init_flags_are_widened_without_sign_extension() {
        let init = InitIn { major: 7, minor: 45, max_readahead: 131072, flags: 0xC000_0000 };
        let mut args = init.as_slice().to_vec();
        args.extend_from_slice(&(1u32 << 9).to_ne_bytes());
        args.extend_from_slice(&[0; 44]);
        let request = decode_message(&message(opcode::INIT, 1, &args)).unwrap();
        let Operation::Init { flags, .. } = request.operation else { panic!() };
        assert_eq!(flags, 0xC000_0000 | init_flag::OVER_IO_URING);
    }

    #[test]
    fn unknown_opcodes_are_unsupported_not_errors() {
        let request = decode_message(&message(22, 4, &[0; 8])).unwrap();
        assert!(matches!(request.operation, Operation::Unsupported(22)));
    }

    #[test]
    fn ring_entries_carry_arguments_in_op_in_and_data_in_the_payload() {
        let mut entry = UringReqHeader::default();
        let header = InHeader { len: 84, opcode: opcode::WRITE, unique: 77, ..Default::default() };
        entry.in_out[..IN_HEADER_SIZE].copy_from_slice(header.as_slice());
        let write = WriteIn { offset: 8192, size: 4, ..Default::default() };
        entry.op_in[..40].copy_from_slice(write.as_slice());
        entry.ring_ent_in_out.payload_sz = 4;
        let request = decode_ring_entry(&entry).unwrap();
        assert!(matches!(request.operation, Operation::Write(w) if w.offset == 8192));
        entry.ring_ent_in_out.payload_sz = 5;
        assert!(decode_ring_entry(&entry).is_err());
    }
}
