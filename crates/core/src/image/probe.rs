//! Which format an image is, from its first bytes, and the few qcow2
//! header fields worth checking before imago opens it (so that a bad image
//! gets a message naming the field).
//!
//! `probe_format` names the format QEMU 7.2 would find in the same bytes,
//! for every format QEMU probes, so that an image QEMU would open as a
//! VMDK, a VHDX, a LUKS volume... is never served as raw disk bytes.

/// "QFI\xfb": the first four bytes of every qcow2 image.
pub const QCOW2_MAGIC: [u8; 4] = *b"QFI\xfb";

/// Bytes read from the start of an image to recognise it.
pub const PROBE_BYTES: usize = 512;

/// The user's choice of `--format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FormatChoice {
    /// What the image's first bytes show (`probe_format`).
    #[default]
    Auto,
    Raw,
    Qcow2,
    /// Any other format of QEMU's (`QEMU_FORMATS`), served by QEMU.
    Qemu(&'static str),
}

impl FormatChoice {
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "auto" => Some(FormatChoice::Auto),
            "raw" => Some(FormatChoice::Raw),
            "qcow2" => Some(FormatChoice::Qcow2),
            _ => QEMU_FORMATS.iter().find(|known| **known == name).map(|known| FormatChoice::Qemu(known)),
        }
    }
}

pub fn is_qcow2(first: &[u8]) -> bool {
    first.len() >= 8 && first.starts_with(&QCOW2_MAGIC) && (2..=3).contains(&be32(first, 4))
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
    /// The guest data is encrypted (crypt_method is not 0: AES or LUKS).
    pub encrypted: bool,
}

/// The longest backing file name qcow2 allows.
pub const MAX_BACKING_NAME: usize = 1023;

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
    // The magic alone here, not is_qcow2: a version 1 or 4 image gets the message naming its version.
    if !bytes.starts_with(&QCOW2_MAGIC) {
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
    } else if backing_len > MAX_BACKING_NAME as u64 {
        return Err(format!(
            "its backing file name is {backing_len} bytes long; qcow2 allows at most {MAX_BACKING_NAME}"
        ));
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
        encrypted: be32(bytes, 32) != 0,
    })
}

/// Bytes QEMU 7.2 probes a format in: find_image_format (block.c) reads
/// BLOCK_PROBE_BUF_SIZE bytes, which is 512, and no probe sees more.
/// `probe_format` looks at these only, so that a VMDK descriptor whose
/// `version=` line starts past them is raw here as in QEMU; callers may
/// pass more.
pub const QEMU_PROBE_BYTES: usize = 512;

/// The bytes at the end of a file that `has_vhd_footer` looks at: a VHD's
/// footer is its last 512 bytes.
pub const TAIL_BYTES: usize = 512;

/// The image formats of `qemu-img --help`'s list (QEMU 7.2), those a user
/// can name with `--format`: each lays out a disk in one file of its own
/// (or, for a VMDK descriptor, its extents). The list's other names are
/// protocol drivers (file, host_device, http, nbd, ssh...), which say how
/// the bytes are reached, and filters (blkdebug, copy-on-read, throttle,
/// quorum...), which act on another node's bytes: neither is a format.
pub const QEMU_FORMATS: &[&str] =
    &["bochs", "cloop", "dmg", "luks", "parallels", "qcow", "qcow2", "qed", "raw", "vdi", "vhdx", "vmdk", "vpc"];

/// How sure a probe is, on QEMU's scale; raw_probe answers 1 for anything,
/// so any score above that names a format and none means raw.
type Score = u8;
/// The format's own magic bytes.
const MAGIC: Score = 100;
/// A weak sign: dmg_probe's file name, cloop_probe's shell script line.
const HINT: Score = 2;

type Probe = fn(&[u8; QEMU_PROBE_BYTES], &str) -> Score;

/// QEMU's probes, in the order of its driver list where it matters: of
/// equal scores bdrv_probe_all keeps the first. Only the VDI signature (at
/// byte 64) can hold together with another magic (at byte 0), and dmg's
/// name with cloop's script; the order is the one qemu-img 7.2 shows for
/// such files: qed and parallels before vdi, vdi before the rest, dmg
/// before cloop.
const PROBES: &[(&str, Probe)] = &[
    ("qed", qed),
    ("parallels", parallels),
    ("vdi", vdi),
    ("qcow2", qcow2),
    ("qcow", qcow),
    ("vmdk", vmdk),
    ("vhdx", vhdx),
    ("vpc", vpc),
    ("luks", luks),
    ("bochs", bochs),
    ("dmg", dmg),
    ("cloop", cloop),
];

/// The format QEMU 7.2 would open an image as (its driver name, one of
/// `QEMU_FORMATS`), from `head`, the image's first bytes (at least
/// `QEMU_PROBE_BYTES` of them, or the whole file when it is shorter), and
/// `file_name`, the path as the user gave it (dmg is known by its name
/// alone). `None` is raw: nothing matched, or the file is empty.
pub fn probe_format(head: &[u8], file_name: &str) -> Option<&'static str> {
    // find_image_format opens an empty file as raw without probing.
    if head.is_empty() {
        return None;
    }
    // The probes get the whole buffer, zeroes past a short file's end: a
    // file holding the first 5 bytes of cloop's script is raw in QEMU.
    let mut buffer = [0u8; QEMU_PROBE_BYTES];
    let len = head.len().min(QEMU_PROBE_BYTES);
    buffer[..len].copy_from_slice(&head[..len]);
    // max_by_key keeps the last of equal scores: reversed, that is the first.
    PROBES
        .iter()
        .rev()
        .map(|&(name, probe)| (name, probe(&buffer, file_name)))
        .max_by_key(|&(_, score)| score)
        .filter(|&(_, score)| score > 0)
        .map(|(name, _)| name)
}

/// Whether `tail`, the last bytes of a file (`TAIL_BYTES` or more, all of
/// a shorter file), ends in a VHD footer ("conectix" starts the last 512
/// bytes). A fixed VHD has its only footer there; vpc_probe looks at the
/// head alone, so QEMU 7.2 opens it as raw, footer and all, and so does
/// `probe_format`. For the caller to warn that the raw disk may be a VHD.
pub fn has_vhd_footer(tail: &[u8]) -> bool {
    tail.len() >= TAIL_BYTES && tail[tail.len() - TAIL_BYTES..].starts_with(VHD_COOKIE)
}

const VHD_COOKIE: &[u8] = b"conectix";

fn le32(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap())
}

fn magic_if(matched: bool) -> Score {
    if matched {
        MAGIC
    } else {
        0
    }
}

// Every probe below gets QEMU_PROBE_BYTES bytes: the header-size checks of
// QEMU's probes (none asks for more than 512) always pass, as in QEMU.

/// qcow2_probe: any version from 2 up, so that a version QEMU does not know
/// fails in its open ("Unsupported qcow2 version") rather than being raw.
fn qcow2(b: &[u8; QEMU_PROBE_BYTES], _: &str) -> Score {
    magic_if(b.starts_with(&QCOW2_MAGIC) && be32(b, 4) >= 2)
}

/// qcow_probe: the same magic as qcow2; version 1 is the older format.
fn qcow(b: &[u8; QEMU_PROBE_BYTES], _: &str) -> Score {
    magic_if(b.starts_with(&QCOW2_MAGIC) && be32(b, 4) == 1)
}

/// qed_probe: the magic is a little-endian number, "QED\0" on disk.
fn qed(b: &[u8; QEMU_PROBE_BYTES], _: &str) -> Score {
    magic_if(b.starts_with(b"QED\0"))
}

/// vdi_probe: the signature after the 64-byte text line; the text differs
/// between VirtualBox versions and QEMU, so QEMU does not look at it.
fn vdi(b: &[u8; QEMU_PROBE_BYTES], _: &str) -> Score {
    magic_if(le32(b, 64) == 0xbeda_107f)
}

/// vmdk_probe: a sparse extent (monolithicSparse, streamOptimized, the
/// extents of the split kinds) starts with "KDMV", an ESX COW extent with
/// "COWD"; a descriptor file (monolithicFlat, twoGbMaxExtent*, vmfs...) is
/// text whose first line that is no comment nor blank says `version=1`, 2
/// or 3 (QEMU reads the rest, createType included, only in its open).
fn vmdk(b: &[u8; QEMU_PROBE_BYTES], _: &str) -> Score {
    magic_if(b.starts_with(b"KDMV") || b.starts_with(b"COWD") || vmdk_descriptor(b))
}

/// The descriptor rule of vmdk_probe, to the byte: lines starting with '#'
/// are skipped (one without its newline ends the text: no version line);
/// a line starting with a space must hold only spaces and a CR; any other
/// line (an empty one too) must be the version line, LF or CRLF ended.
fn vmdk_descriptor(text: &[u8]) -> bool {
    let mut at = 0;
    while at < text.len() {
        let line = &text[at..];
        match line[0] {
            b'#' => match line.iter().position(|&c| c == b'\n') {
                Some(newline) => at += newline + 1,
                None => return false,
            },
            b' ' => {
                let spaces = line.iter().take_while(|&&c| c == b' ').count();
                let rest = &line[spaces..];
                let ending = if rest.starts_with(b"\r") { 1 } else { 0 };
                if rest.get(ending) != Some(&b'\n') {
                    return false;
                }
                at += spaces + ending + 1;
            }
            _ => {
                let version = line.strip_prefix(b"version=").and_then(|rest| rest.split_first());
                return match version {
                    Some((b'1'..=b'3', ending)) => ending.starts_with(b"\n") || ending.starts_with(b"\r\n"),
                    _ => false,
                };
            }
        }
    }
    false
}

/// vhdx_probe: the file type identifier's signature.
fn vhdx(b: &[u8; QEMU_PROBE_BYTES], _: &str) -> Score {
    magic_if(b.starts_with(b"vhdxfile"))
}

/// vpc_probe: the footer's copy that dynamic and differencing VHDs keep
/// at their start; a fixed VHD has none (see `has_vhd_footer`).
fn vpc(b: &[u8; QEMU_PROBE_BYTES], _: &str) -> Score {
    magic_if(b.starts_with(VHD_COOKIE))
}

/// block_crypto_probe_luks (qcrypto_block_luks_has_format): version 1 only,
/// QEMU 7.2 has no LUKS2, so a LUKS2 volume is raw to it.
fn luks(b: &[u8; QEMU_PROBE_BYTES], _: &str) -> Score {
    magic_if(b.starts_with(b"LUKS\xba\xbe") && u16::from_be_bytes([b[6], b[7]]) == 1)
}

/// parallels_probe: either of the two magics, and format version 2.
fn parallels(b: &[u8; QEMU_PROBE_BYTES], _: &str) -> Score {
    magic_if((b.starts_with(b"WithoutFreeSpace") || b.starts_with(b"WithouFreSpacExt")) && le32(b, 16) == 2)
}

/// bochs_probe: a growing redolog of header version 1 or 2. QEMU compares
/// the fixed-size text fields with strcmp, so each must hold its word
/// followed by a NUL.
fn bochs(b: &[u8; QEMU_PROBE_BYTES], _: &str) -> Score {
    let field = |at: usize, word: &[u8]| b[at..].starts_with(word) && b[at + word.len()] == 0;
    let version = le32(b, 64);
    magic_if(
        field(0, b"Bochs Virtual HD Image")
            && field(32, b"Redolog")
            && field(48, b"Growing")
            && (version == 0x0002_0000 || version == 0x0001_0000),
    )
}

/// dmg_probe: QEMU knows a dmg by its name only (any path ending in ".dmg"
/// after at least one character, case and all), and weakly: a magic wins.
fn dmg(_: &[u8; QEMU_PROBE_BYTES], file_name: &str) -> Score {
    if file_name.len() > 4 && file_name.ends_with(".dmg") {
        HINT
    } else {
        0
    }
}

/// The first lines of a V2.0 cloop image: a shell script that mounts it.
const CLOOP_MAGIC: &[u8] = b"#!/bin/sh\n#V2.0 Format\nmodprobe cloop file=$0 && mount -r -t iso9660 /dev/cloop $1\n";

/// cloop_probe: the script, weakly.
fn cloop(b: &[u8; QEMU_PROBE_BYTES], _: &str) -> Score {
    if b.starts_with(CLOOP_MAGIC) {
        HINT
    } else {
        0
    }
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
    fn qcow2_is_recognised_by_its_magic_and_version_and_nothing_else() {
        assert!(is_qcow2(&header(3, 16, "")));
        assert!(is_qcow2(&header(2, 16, "")));
        assert!(is_qcow2(b"QFI\xfb\0\0\0\x03"), "8 bytes say it; the header parser says truncated");
        assert!(!is_qcow2(&header(1, 16, "")), "qcow, the older format");
        assert!(!is_qcow2(&header(4, 16, "")));
        assert!(!is_qcow2(b"QFI"));
        assert!(!is_qcow2(b"QFI\xfb\0\0\0"));
        assert!(!is_qcow2(&[0u8; 512]));
        assert!(!is_qcow2(b"QFI\xfa and more"));
    }

    #[test]
    fn crypt_method_makes_a_header_encrypted() {
        let mut encrypted = header(3, 16, "");
        assert!(!parse_qcow2_header(&encrypted).unwrap().encrypted);
        for method in [1u32, 2] {
            encrypted[32..36].copy_from_slice(&method.to_be_bytes());
            assert!(parse_qcow2_header(&encrypted).unwrap().encrypted, "crypt_method {method}");
        }
    }

    /// `bytes` at `at` of a zeroed probe buffer.
    fn head_with(parts: &[(usize, &[u8])]) -> Vec<u8> {
        let mut head = vec![0u8; QEMU_PROBE_BYTES];
        for (at, bytes) in parts {
            head[*at..*at + bytes.len()].copy_from_slice(bytes);
        }
        head
    }

    fn bochs_head(magic: &[u8], kind: &[u8], subtype: &[u8], version: u32) -> Vec<u8> {
        head_with(&[(0, magic), (32, kind), (48, subtype), (64, &version.to_le_bytes())])
    }

    #[test]
    fn bochs_growing_redologs_of_version_1_and_2_are_bochs() {
        let probe = |head: Vec<u8>| probe_format(&head, "disk.img");
        for version in [0x0001_0000, 0x0002_0000] {
            assert_eq!(probe(bochs_head(b"Bochs Virtual HD Image", b"Redolog", b"Growing", version)), Some("bochs"));
        }
        assert_eq!(probe(bochs_head(b"Bochs Virtual HD Image", b"Redolog", b"Growing", 0x0003_0000)), None);
        assert_eq!(probe(bochs_head(b"Bochs Virtual HD Image", b"Redolog", b"Undoable", 0x0002_0000)), None);
        assert_eq!(probe(bochs_head(b"Bochs Virtual HD Image", b"Redolog2", b"Growing", 0x0002_0000)), None);
        // strcmp: the word must end in a NUL within its field.
        assert_eq!(probe(bochs_head(b"Bochs Virtual HD Image!", b"Redolog", b"Growing", 0x0002_0000)), None);
    }

    #[test]
    fn cloop_is_its_whole_script_and_loses_to_any_magic() {
        assert_eq!(probe_format(CLOOP_MAGIC, "image.cloop"), Some("cloop"), "83 bytes, zeroes after");
        assert_eq!(probe_format(&head_with(&[(0, CLOOP_MAGIC), (128, &[0, 0, 0x10, 0])]), "x"), Some("cloop"));
        // A short file is probed padded with zeroes: a prefix of the script is not enough.
        assert_eq!(probe_format(&CLOOP_MAGIC[..5], "x"), None);
        assert_eq!(probe_format(&CLOOP_MAGIC[..CLOOP_MAGIC.len() - 1], "x"), None);
        // The VDI signature at byte 64 lies within the script: the magic wins.
        let mut both = head_with(&[(0, CLOOP_MAGIC)]);
        both[64..68].copy_from_slice(&0xbeda_107fu32.to_le_bytes());
        assert_eq!(probe_format(&both, "x"), Some("vdi"));
    }

    #[test]
    fn dmg_is_a_name_ending_in_dot_dmg_and_loses_to_any_magic() {
        let zeros = [0u8; 4096];
        assert_eq!(probe_format(&zeros, "install.dmg"), Some("dmg"));
        assert_eq!(probe_format(&zeros, "a.dmg"), Some("dmg"));
        assert_eq!(probe_format(&zeros, "dir/.dmg"), Some("dmg"), "QEMU looks at the whole path");
        assert_eq!(probe_format(&zeros, ".dmg"), None, "four characters are not enough");
        assert_eq!(probe_format(&zeros, "INSTALL.DMG"), None);
        assert_eq!(probe_format(&zeros, "install.dmg.img"), None);
        assert_eq!(probe_format(&[], "install.dmg"), None, "an empty file is raw");
        assert_eq!(probe_format(&header(3, 16, ""), "disk.dmg"), Some("qcow2"));
        assert_eq!(probe_format(CLOOP_MAGIC, "disk.dmg"), Some("dmg"), "dmg comes first in QEMU's list");
    }

    #[test]
    fn vmdk_descriptors_follow_qemus_line_rules() {
        let vmdk = |text: &[u8]| probe_format(text, "disk.vmdk");
        let descriptors: [(&[u8], bool); 12] = [
            (b"version=1\n", true),
            (b"version=3\r\n", true),
            (b"# Disk DescriptorFile\nversion=1\nCID=fffffffe\ncreateType=\"monolithicFlat\"\n", true),
            (b"#a\n \n#b\nversion=2\r\n", true),
            (b"   \r\nversion=1\n", true),
            (b"\nversion=1\n", false),
            (b"version=4\n", false),
            (b"version=1", false),
            (b"version=1\r", false),
            (b" x\nversion=1\n", false),
            (b"#only a comment", false),
            (b"createType=\"monolithicFlat\"\nversion=1\n", false),
        ];
        for (text, is_vmdk) in descriptors {
            assert_eq!(vmdk(text), is_vmdk.then_some("vmdk"), "{}", String::from_utf8_lossy(text));
        }
        // QEMU sees 512 bytes: a version line past them is not seen.
        let mut late = vec![b'#'; QEMU_PROBE_BYTES - 5];
        late.extend_from_slice(b"\nversion=1\n");
        assert_eq!(vmdk(&late), None);
        assert_eq!(vmdk(&late[QEMU_PROBE_BYTES - 400..]), Some("vmdk"));
    }

    #[test]
    fn magics_at_byte_0_each_name_their_format() {
        let cases: [(&[u8], &str); 12] = [
            (b"KDMV\x01\0\0\0", "vmdk"),
            (b"COWD\x01\0\0\0", "vmdk"),
            (b"vhdxfile", "vhdx"),
            (b"conectix", "vpc"),
            (b"QED\0", "qed"),
            (b"QFI\xfb\0\0\0\x01", "qcow"),
            (b"QFI\xfb\0\0\0\x02", "qcow2"),
            (b"QFI\xfb\0\0\0\x09", "qcow2"),
            (b"LUKS\xba\xbe\0\x01", "luks"),
            (b"WithoutFreeSpace\x02\0\0\0", "parallels"),
            (b"WithouFreSpacExt\x02\0\0\0", "parallels"),
            (b"QED", "qed"), // the zeroes after a short file complete the magic
        ];
        for (magic, format) in cases {
            assert_eq!(probe_format(magic, "disk.img"), Some(format), "{magic:?}");
            assert!(QEMU_FORMATS.contains(&format));
        }
        for not_quite in [
            &b"LUKS\xba\xbe\0\x02"[..],
            b"QFI\xfb\0\0\0\0",
            b"WithoutFreeSpace\x03\0\0\0",
            b"QEE\0",
            b"vhdxfil",
            b"KDM",
        ] {
            assert_eq!(probe_format(not_quite, "disk.img"), None, "{not_quite:?}");
        }
        let vdi = head_with(&[(64, &0xbeda_107fu32.to_le_bytes())]);
        assert_eq!(probe_format(&vdi, "disk.img"), Some("vdi"));
    }

    #[test]
    fn where_two_magics_hold_qemus_list_order_decides() {
        let signature = 0xbeda_107fu32.to_le_bytes();
        for (magic, winner) in [
            (&b"QED\0"[..], "qed"),
            (b"WithoutFreeSpace\x02\0\0\0", "parallels"),
            (b"QFI\xfb\0\0\0\x03", "vdi"),
            (b"QFI\xfb\0\0\0\x01", "vdi"),
            (b"KDMV", "vdi"),
            (b"vhdxfile", "vdi"),
            (b"conectix", "vdi"),
            (b"LUKS\xba\xbe\0\x01", "vdi"),
        ] {
            assert_eq!(probe_format(&head_with(&[(0, magic), (64, &signature)]), "x"), Some(winner), "{magic:?}");
        }
    }

    #[test]
    fn a_vhd_footer_is_the_last_512_bytes_starting_with_conectix() {
        let mut tail = vec![0u8; 4096];
        assert!(!has_vhd_footer(&tail));
        tail[4096 - TAIL_BYTES..][..8].copy_from_slice(b"conectix");
        assert!(has_vhd_footer(&tail));
        assert!(has_vhd_footer(&tail[4096 - TAIL_BYTES..]));
        assert!(!has_vhd_footer(&tail[..4096 - 1]), "511 bytes after the cookie make no footer");
        assert!(!has_vhd_footer(&tail[4096 - TAIL_BYTES + 1..]));
        assert!(!has_vhd_footer(b"conectix"));
        assert_eq!(probe_format(&tail, "fixed.vhd"), None, "QEMU probes the head only");
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
                encrypted: false,
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
