//! `probe_format` on images qemu-img makes, of every format it can make,
//! and on files that are raw to QEMU: the name must be the one
//! `qemu-img info` (QEMU 7.2) finds, and no head, however short, may
//! panic. The tests need qemu-img (`npm test` installs it) and fail
//! without it.

use fuse_export_core::image::probe::{
    has_vhd_footer, is_qcow2, parse_qcow2_header, probe_format, QEMU_FORMATS, QEMU_PROBE_BYTES, TAIL_BYTES,
};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The head callers read: more than QEMU looks at.
const HEAD_BYTES: usize = 2048;

/// A folder of its own for one test, removed with it.
struct Scratch(PathBuf);

impl Scratch {
    fn new(test: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("fuse-export-probe-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    fn path(&self, name: &str) -> String {
        self.0.join(name).to_str().unwrap().to_owned()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// QEMU times its LUKS key derivation on the thread's CPU clock, and on a
/// loaded machine that clock may show no progress: it then fails with
/// "Unable to get accurate CPU usage". Tried again a few times.
const CPU_USAGE_TRIES: usize = 5;

fn qemu_img(args: &[&str]) {
    for _ in 1..CPU_USAGE_TRIES {
        let output = Command::new("qemu-img").args(args).output().expect("qemu-img (Debian's qemu-utils) runs");
        let stderr = String::from_utf8_lossy(&output.stderr);
        if output.status.success() {
            return;
        }
        assert!(stderr.contains("accurate CPU usage"), "qemu-img {args:?}: {stderr}");
    }
    let output = Command::new("qemu-img").args(args).output().expect("qemu-img runs");
    assert!(output.status.success(), "qemu-img {args:?}: {}", String::from_utf8_lossy(&output.stderr));
}

/// The format `qemu-img info` finds, `None` where it cannot open the file.
fn qemu_format(path: &str) -> Option<String> {
    let output = Command::new("qemu-img").args(["info", "--output=json", path]).output().expect("qemu-img runs");
    let json = String::from_utf8_lossy(&output.stdout);
    // The image's own "format" comes before the extents' in "format-specific".
    let key = "\"format\": \"";
    let start = json.find(key)? + key.len();
    let end = json[start..].find('"')?;
    output.status.success().then(|| json[start..start + end].to_owned())
}

fn head_of(path: &str) -> Vec<u8> {
    let mut bytes = std::fs::read(path).unwrap();
    bytes.truncate(HEAD_BYTES);
    bytes
}

fn tail_of(path: &str) -> Vec<u8> {
    let bytes = std::fs::read(path).unwrap();
    bytes[bytes.len().saturating_sub(TAIL_BYTES)..].to_vec()
}

/// Every check of one file: the probe's name is QEMU's (raw for `None`),
/// with QEMU's 512 bytes as with more, and no prefix of its head panics.
fn assert_probed(path: &str, expected: Option<&str>) {
    let head = head_of(path);
    let name = Path::new(path).file_name().unwrap().to_str().unwrap();
    assert_eq!(probe_format(&head, path), expected, "{name}");
    assert_eq!(probe_format(&head[..head.len().min(QEMU_PROBE_BYTES)], path), expected, "{name}: 512 bytes");
    assert!(expected.is_none_or(|format| QEMU_FORMATS.contains(&format)), "{name}: {expected:?} is a format");
    assert_eq!(qemu_format(path).as_deref(), Some(expected.unwrap_or("raw")), "{name}: qemu-img info agrees");
    for len in 0..64.min(head.len()) {
        let prefix = &head[..len];
        let _ = (probe_format(prefix, path), is_qcow2(prefix), has_vhd_footer(prefix), parse_qcow2_header(prefix));
    }
}

#[test]
fn every_format_qemu_img_makes_is_probed_by_its_name() {
    let scratch = Scratch::new("made");
    let data = scratch.path("data.raw");
    // 4 MiB of data for the conversions.
    std::fs::write(&data, [0xa5u8; 65536].repeat(64)).unwrap();
    // (file, qemu-img arguments before the file, after it, the format)
    let made: &[(&str, &[&str], &[&str], &str)] = &[
        ("sparse.vmdk", &["create", "-f", "vmdk", "-o", "subformat=monolithicSparse"], &["4M"], "vmdk"),
        ("stream.vmdk", &["convert", "-O", "vmdk", "-o", "subformat=streamOptimized", &data], &[], "vmdk"),
        ("flat.vmdk", &["create", "-f", "vmdk", "-o", "subformat=monolithicFlat"], &["4M"], "vmdk"),
        ("split.vmdk", &["create", "-f", "vmdk", "-o", "subformat=twoGbMaxExtentSparse"], &["4M"], "vmdk"),
        ("disk.vhdx", &["convert", "-O", "vhdx", &data], &[], "vhdx"),
        ("disk.vdi", &["create", "-f", "vdi"], &["4M"], "vdi"),
        ("dynamic.vhd", &["create", "-f", "vpc", "-o", "subformat=dynamic"], &["4M"], "vpc"),
        ("disk.qed", &["convert", "-O", "qed", &data], &[], "qed"),
        ("disk.qcow", &["create", "-f", "qcow"], &["4M"], "qcow"),
        (
            "disk.luks",
            &["create", "--object", "secret,id=s,data=abc", "-f", "luks", "-o", "key-secret=s,iter-time=200"],
            &["4M"],
            "luks",
        ),
        ("disk.parallels", &["convert", "-O", "parallels", &data], &[], "parallels"),
        ("v2.qcow2", &["create", "-f", "qcow2", "-o", "compat=0.10"], &["4M"], "qcow2"),
        ("v3.qcow2", &["convert", "-O", "qcow2", "-o", "compat=1.1", &data], &[], "qcow2"),
    ];
    for (file, before, after, format) in made {
        let path = scratch.path(file);
        qemu_img(&[&before[..1], &["-q"], &before[1..], &[path.as_str()], after].concat());
        assert_probed(&path, Some(format));
        assert_eq!(has_vhd_footer(&tail_of(&path)), *format == "vpc", "{file}: a VHD footer");
    }
    // The descriptors' extents: a flat one is raw; a sparse one starts with
    // the VMDK magic, which QEMU probes as vmdk but will not open alone.
    assert_probed(&scratch.path("flat-flat.vmdk"), None);
    let extent = scratch.path("split-s001.vmdk");
    assert_eq!(probe_format(&head_of(&extent), &extent), Some("vmdk"));
    assert_eq!(qemu_format(&extent), None, "qemu-img probes it as vmdk and fails to open it");
    for (file, version) in [("v2.qcow2", 2), ("v3.qcow2", 3)] {
        let head = head_of(&scratch.path(file));
        assert!(is_qcow2(&head), "{file}");
        let header = parse_qcow2_header(&head[..512]).unwrap();
        assert_eq!((header.version, header.encrypted), (version, false), "{file}");
    }
    assert!(!is_qcow2(&head_of(&scratch.path("disk.qcow"))), "qcow version 1 is not qcow2");
}

#[test]
fn a_fixed_vhd_is_raw_to_qemu_with_its_footer_at_the_end() {
    let scratch = Scratch::new("fixed-vhd");
    let path = scratch.path("fixed.vhd");
    qemu_img(&["create", "-q", "-f", "vpc", "-o", "subformat=fixed", &path, "4M"]);
    assert_probed(&path, None);
    assert!(has_vhd_footer(&tail_of(&path)));
    assert!(has_vhd_footer(&std::fs::read(&path).unwrap()), "the whole file ends in it too");
}

#[test]
fn an_encrypted_qcow2_says_so() {
    let scratch = Scratch::new("encrypted");
    let path = scratch.path("encrypted.qcow2");
    let options = "encrypt.format=luks,encrypt.key-secret=s,encrypt.iter-time=200";
    qemu_img(&["create", "-q", "--object", "secret,id=s,data=abc", "-f", "qcow2", "-o", options, &path, "4M"]);
    assert_probed(&path, Some("qcow2"));
    assert!(parse_qcow2_header(&head_of(&path)[..512]).unwrap().encrypted);
}

/// xorshift64: the same "random" bytes every run.
fn pseudo_random(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

/// The start of an ext4 file system: a boot block of zeroes, then the
/// superblock (magic 0xef53 at its byte 56) at 1024.
fn ext4_like() -> Vec<u8> {
    let mut bytes = vec![0u8; 4096];
    let superblock = &mut bytes[1024..];
    superblock[0..4].copy_from_slice(&2048u32.to_le_bytes()); // inodes
    superblock[4..8].copy_from_slice(&8192u32.to_le_bytes()); // blocks
    superblock[24..28].copy_from_slice(&2u32.to_le_bytes()); // 4 KiB blocks
    superblock[56..58].copy_from_slice(&0xef53u16.to_le_bytes());
    superblock[120..124].copy_from_slice(b"root");
    bytes
}

/// A master boot record: boot code, one Linux partition from sector 2048, 0x55aa.
fn mbr_like() -> Vec<u8> {
    let mut bytes = pseudo_random(7, 4096);
    bytes[0..3].copy_from_slice(&[0xeb, 0x63, 0x90]);
    let entry = &mut bytes[446..462];
    entry.fill(0);
    entry[0] = 0x80;
    entry[4] = 0x83;
    entry[8..12].copy_from_slice(&2048u32.to_le_bytes());
    entry[12..16].copy_from_slice(&204800u32.to_le_bytes());
    bytes[462..510].fill(0);
    bytes[510..512].copy_from_slice(&[0x55, 0xaa]);
    bytes
}

#[test]
fn raw_data_is_raw_to_the_probe_and_to_qemu() {
    let scratch = Scratch::new("raw");
    let mut files = vec![
        ("zeros.img", vec![0u8; 65536]),
        ("one-byte.img", vec![0u8]),
        ("ext4.img", ext4_like()),
        ("mbr.img", mbr_like()),
        ("text.img", b"version=1 is not the first line\n".repeat(64)),
    ];
    for seed in 1..=8 {
        files.push(("random.img", pseudo_random(seed, 4096)));
    }
    for (name, bytes) in &files {
        let path = scratch.path(name);
        std::fs::write(&path, bytes).unwrap();
        assert_probed(&path, None);
        assert!(!has_vhd_footer(&tail_of(&path)), "{name}");
    }
    let empty = scratch.path("empty.dmg");
    std::fs::write(&empty, []).unwrap();
    assert_eq!(probe_format(&[], &empty), None);
    assert_eq!(qemu_format(&empty).as_deref(), Some("raw"), "an empty file is raw whatever its name");
}

/// Heads written by hand, each a file: raw to the probe exactly where
/// `qemu-img info` opens it as raw (an image it names may fail to open,
/// which is not raw either).
#[test]
fn crafted_heads_are_raw_exactly_where_qemu_img_says_raw() {
    let scratch = Scratch::new("crafted");
    let cloop: &[u8] = b"#!/bin/sh\n#V2.0 Format\nmodprobe cloop file=$0 && mount -r -t iso9660 /dev/cloop $1\n";
    let mut bochs = vec![0u8; 512];
    bochs[..22].copy_from_slice(b"Bochs Virtual HD Image");
    bochs[32..39].copy_from_slice(b"Redolog");
    bochs[48..55].copy_from_slice(b"Growing");
    bochs[64..68].copy_from_slice(&0x0002_0000u32.to_le_bytes());
    let mut late_version = vec![b'#'; 600];
    late_version.extend_from_slice(b"\nversion=1\n");
    let heads: Vec<(&str, Vec<u8>, Option<&str>)> = vec![
        ("script.img", cloop.to_vec(), Some("cloop")),
        ("script-prefix.img", cloop[..20].to_vec(), None),
        ("bochs.img", bochs, Some("bochs")),
        ("zeros.dmg", vec![0u8; 4096], Some("dmg")),
        ("ZEROS.DMG", vec![0u8; 4096], None),
        ("descriptor.img", b"# Disk DescriptorFile\nversion=1\n".to_vec(), Some("vmdk")),
        ("blank-first.img", b"\nversion=1\n".to_vec(), None),
        ("spaces-first.img", b"  \r\nversion=2\n".to_vec(), Some("vmdk")),
        ("version-4.img", b"version=4\n".to_vec(), None),
        ("late-version.img", late_version, None),
        ("luks2.img", b"LUKS\xba\xbe\x00\x02".to_vec(), None),
        ("qcow2-v9.img", b"QFI\xfb\x00\x00\x00\x09".to_vec(), Some("qcow2")),
        ("qed-short.img", b"QED".to_vec(), Some("qed")),
        ("cookie-at-end.img", [vec![0u8; 3584], b"conectix".to_vec(), vec![0u8; 504]].concat(), None),
    ];
    for (name, bytes, expected) in heads {
        let path = scratch.path(name);
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(probe_format(&bytes, &path), expected, "{name}");
        let qemu = qemu_format(&path);
        assert_eq!(expected.is_none(), qemu.as_deref() == Some("raw"), "{name}: qemu-img info found {qemu:?}");
        if let (Some(expected), Some(qemu)) = (expected, qemu) {
            assert_eq!(expected, qemu, "{name}");
        }
    }
}
