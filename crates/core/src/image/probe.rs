//! Which format an image is, from its first bytes, and the few qcow2
//! header fields worth checking before imago opens it (so that a bad image
//! gets a message naming the field).

/// "QFI\xfb": the first four bytes of every qcow2 image.
pub const QCOW2_MAGIC: [u8; 4] = *b"QFI\xfb";

/// Bytes read from the start of an image to recognise it.
pub const PROBE_BYTES: usize = 512;

/// The user's choice of `--format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FormatChoice {
    /// qcow2 when the header says so, raw otherwise.
    Auto,
    Raw,
    Qcow2,
}

impl FormatChoice {
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "auto" => Some(FormatChoice::Auto),
            "raw" => Some(FormatChoice::Raw),
            "qcow2" => Some(FormatChoice::Qcow2),
            _ => None,
        }
    }
}

pub fn is_qcow2(first: &[u8]) -> bool {
    first.starts_with(&QCOW2_MAGIC)
}

/// The qcow2 header fields the export checks and reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Qcow2Header {
    pub version: u32,
    pub cluster_bits: u32,
    /// Virtual size in bytes.
    pub size: u64,
    pub backing_file: Option<String>,
    /// (offset, bytes) of the L1 table and of the refcount table.
    pub l1_table: (u64, u64),
    pub refcount_table: (u64, u64),
    /// The number of internal snapshots and where their table starts.
    pub snapshots: (u32, u64),
    /// The data clusters live in another file (a v3 incompatible feature).
    pub external_data_file: bool,
    /// Refcounts are 2^refcount_order bits wide (version 2: always 16).
    pub refcount_order: u32,
}

/// A version 2 image's refcounts are 16 bits wide (order 4).
const V2_REFCOUNT_ORDER: u32 = 4;

/// The incompatible feature bit of an external data file.
const EXTERNAL_DATA_FILE: u64 = 1 << 2;

/// The smallest entry of the snapshot table (its fixed part, 8-byte aligned).
pub const SNAPSHOT_ENTRY_MIN_BYTES: u64 = 40;

impl Qcow2Header {
    /// The first table that lies past `file_size` (a truncated image), named.
    /// The snapshot table counts with its entries' fixed parts: its names
    /// and extra data make it longer, never shorter.
    pub fn table_past_end(&self, file_size: u64) -> Option<String> {
        let (snapshot_count, snapshot_table) = self.snapshots;
        let snapshots = (snapshot_table, u64::from(snapshot_count) * SNAPSHOT_ENTRY_MIN_BYTES);
        [("L1 table", self.l1_table), ("refcount table", self.refcount_table), ("snapshot table", snapshots)]
            .into_iter()
            .filter(|(_, (_, len))| *len > 0)
            .find_map(|(name, (offset, len))| {
                let end = offset.saturating_add(len);
                (end > file_size).then(|| {
                    format!(
                        "its {name} ({len} bytes at offset {offset}) lies past the end of the file \
                         ({file_size} bytes): the file is truncated or the header is corrupt"
                    )
                })
            })
    }
}

fn be32(bytes: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap())
}

fn be64(bytes: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(bytes[at..at + 8].try_into().unwrap())
}

/// Parses the fixed part of a qcow2 header from the image's first bytes
/// (`PROBE_BYTES` of them, or the whole file when it is shorter), and the
/// backing file name when it lies within them.
pub fn parse_qcow2_header(bytes: &[u8]) -> Result<Qcow2Header, String> {
    if !is_qcow2(bytes) {
        return Err("it does not start with the qcow2 magic \"QFI\\xfb\"".into());
    }
    if bytes.len() < 72 {
        return Err(format!("its header is truncated ({} bytes, a qcow2 header has at least 72)", bytes.len()));
    }
    let version = be32(bytes, 4);
    if !(2..=3).contains(&version) {
        return Err(format!("its qcow2 version is {version}; only versions 2 and 3 exist"));
    }
    let cluster_bits = be32(bytes, 20);
    if !(9..=21).contains(&cluster_bits) {
        return Err(format!("its cluster size is 2^{cluster_bits} bytes; qcow2 allows 2^9 to 2^21"));
    }
    let (backing_offset, backing_len) = (be64(bytes, 8), be32(bytes, 16) as u64);
    let backing_file = if backing_offset == 0 {
        None
    } else if backing_len > 1023 {
        return Err(format!("its backing file name is {backing_len} bytes long; qcow2 allows at most 1023"));
    } else {
        match backing_offset.checked_add(backing_len) {
            Some(end) if end <= bytes.len() as u64 => {
                let name = &bytes[backing_offset as usize..end as usize];
                Some(String::from_utf8_lossy(name).into_owned())
            }
            Some(_) => None,
            None => return Err("its backing file name lies past any file's end".into()),
        }
    };
    let l1_table = (be64(bytes, 40), u64::from(be32(bytes, 36)) * 8);
    let refcount_table = (be64(bytes, 48), u64::from(be32(bytes, 56)) << cluster_bits);
    let snapshots = (be32(bytes, 60), be64(bytes, 64));
    let external_data_file = version >= 3 && bytes.len() >= 80 && be64(bytes, 72) & EXTERNAL_DATA_FILE != 0;
    let refcount_order = if version >= 3 && bytes.len() >= 100 { be32(bytes, 96) } else { V2_REFCOUNT_ORDER };
    Ok(Qcow2Header {
        version,
        cluster_bits,
        size: be64(bytes, 24),
        backing_file,
        l1_table,
        refcount_table,
        snapshots,
        external_data_file,
        refcount_order,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A header as `qemu-img create -f qcow2 -b base.qcow2 -F qcow2 x 1G` writes it.
    fn header(version: u32, cluster_bits: u32, backing: &str) -> Vec<u8> {
        let mut bytes = vec![0u8; PROBE_BYTES];
        bytes[..4].copy_from_slice(&QCOW2_MAGIC);
        bytes[4..8].copy_from_slice(&version.to_be_bytes());
        if !backing.is_empty() {
            bytes[8..16].copy_from_slice(&200u64.to_be_bytes());
            bytes[16..20].copy_from_slice(&(backing.len() as u32).to_be_bytes());
            bytes[200..200 + backing.len()].copy_from_slice(backing.as_bytes());
        }
        bytes[20..24].copy_from_slice(&cluster_bits.to_be_bytes());
        bytes[24..32].copy_from_slice(&(1u64 << 30).to_be_bytes());
        // 2 L1 entries at 0x30000, a one-cluster refcount table at 0x10000.
        bytes[36..40].copy_from_slice(&2u32.to_be_bytes());
        bytes[40..48].copy_from_slice(&0x30000u64.to_be_bytes());
        bytes[48..56].copy_from_slice(&0x10000u64.to_be_bytes());
        bytes[56..60].copy_from_slice(&1u32.to_be_bytes());
        bytes
    }

    #[test]
    fn qcow2_is_recognised_by_its_magic_and_nothing_else() {
        assert!(is_qcow2(&header(3, 16, "")));
        assert!(!is_qcow2(b"QFI"));
        assert!(!is_qcow2(&[0u8; 512]));
        assert!(!is_qcow2(b"QFI\xfa and more"));
    }

    #[test]
    fn a_header_gives_version_cluster_size_virtual_size_and_backing_file() {
        let parsed = parse_qcow2_header(&header(3, 16, "base.qcow2")).unwrap();
        assert_eq!(
            parsed,
            Qcow2Header {
                version: 3,
                cluster_bits: 16,
                size: 1 << 30,
                backing_file: Some("base.qcow2".into()),
                l1_table: (0x30000, 16),
                refcount_table: (0x10000, 0x10000),
                snapshots: (0, 0),
                external_data_file: false,
                refcount_order: 0,
            }
        );
        assert_eq!(parse_qcow2_header(&header(2, 12, "")).unwrap().backing_file, None);
    }

    #[test]
    fn bad_headers_are_named() {
        assert!(parse_qcow2_header(&header(4, 16, "")).unwrap_err().contains("version is 4"));
        assert!(parse_qcow2_header(&header(3, 30, "")).unwrap_err().contains("cluster size"));
        assert!(parse_qcow2_header(&header(3, 16, "")[..40]).unwrap_err().contains("truncated"));
        assert!(parse_qcow2_header(b"not an image").unwrap_err().contains("magic"));
        let mut long_name = header(3, 16, "b");
        long_name[16..20].copy_from_slice(&4096u32.to_be_bytes());
        assert!(parse_qcow2_header(&long_name).unwrap_err().contains("backing file name"));
    }

    #[test]
    fn tables_past_the_end_of_the_file_are_named() {
        let parsed = parse_qcow2_header(&header(3, 16, "")).unwrap();
        assert_eq!(parsed.table_past_end(0x30010), None);
        assert!(parsed.table_past_end(0x30008).unwrap().contains("L1 table"));
        let mut refcount_far = header(3, 16, "");
        refcount_far[48..56].copy_from_slice(&0x40000u64.to_be_bytes());
        let parsed = parse_qcow2_header(&refcount_far).unwrap();
        assert!(parsed.table_past_end(0x30010).unwrap().contains("refcount table"));
        let mut snapshots_far = header(3, 16, "");
        snapshots_far[60..64].copy_from_slice(&2u32.to_be_bytes());
        snapshots_far[64..72].copy_from_slice(&0x30000u64.to_be_bytes());
        let parsed = parse_qcow2_header(&snapshots_far).unwrap();
        assert_eq!(parsed.table_past_end(0x30050), None, "two snapshot entries of 40 bytes fit");
        assert!(parsed.table_past_end(0x30040).unwrap().contains("snapshot table"));
    }

    #[test]
    fn mutated_headers_never_panic() {
        // Every single-byte change of a real header's first 128 bytes, to
        // every value with one bit set or all bits set: an error or a header.
        let original = header(3, 16, "base.qcow2");
        for at in 0..128 {
            for value in [0u8, 1, 2, 4, 8, 16, 32, 64, 128, 255] {
                let mut mutated = original.clone();
                mutated[at] = value;
                let _ = parse_qcow2_header(&mutated);
                let _ = parse_qcow2_header(&mutated[..at.max(1)]);
            }
        }
    }
}
