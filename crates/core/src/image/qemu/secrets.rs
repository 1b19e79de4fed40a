//! Keys and passwords for QEMU: read from the user's files, handed to each
//! QEMU process through pipes it reads as `/dev/fd/N`, named there by the
//! ids of `--object secret` objects. Never in argv, the environment or a
//! file another process could open.

use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

/// The id of the image's key (LUKS, encrypted qcow2) in QEMU's options.
pub const KEY_SECRET: &str = "fuse-export-key";
/// The id of the place's password (HTTP basic authentication).
pub const PASSWORD_SECRET: &str = "fuse-export-password";
/// The child's descriptor of the first secret (3 is the listening socket).
pub const FIRST_SECRET_FD: RawFd = 4;
/// A pipe holds this much before a write blocks: secrets are far smaller.
const PIPE_CAPACITY: usize = 64 * 1024;

#[derive(Clone, Default)]
pub struct Secrets {
    entries: Vec<(&'static str, Vec<u8>)>,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: Vec<_> = self.entries.iter().map(|(id, _)| *id).collect();
        write!(f, "Secrets({ids:?})")
    }
}

impl Secrets {
    pub fn add(&mut self, id: &'static str, value: Vec<u8>) {
        self.entries.retain(|(known, _)| *known != id);
        self.entries.push((id, value));
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn has(&self, id: &str) -> bool {
        self.entries.iter().any(|(known, _)| *known == id)
    }

    /// `--object secret,...` for each, reading descriptor FIRST_SECRET_FD + i.
    pub fn object_args(&self) -> Vec<String> {
        let descriptors = FIRST_SECRET_FD..;
        self.entries
            .iter()
            .zip(descriptors)
            .flat_map(|((id, _), fd)| ["--object".to_string(), format!("secret,id={id},file=/dev/fd/{fd}")])
            .collect()
    }

    /// One pipe per secret, filled and closed for writing: the read ends,
    /// in the order of `object_args`. A process reads each once, so every
    /// process (every restart) gets pipes of its own.
    pub fn pipes(&self) -> io::Result<Vec<OwnedFd>> {
        self.entries.iter().map(|(_, value)| filled_pipe(value)).collect()
    }
}

/// (our descriptor, the child's number) of each pipe of `pipes()`, in the
/// order of `object_args`.
pub fn handover(pipes: &[OwnedFd]) -> impl Iterator<Item = (RawFd, RawFd)> + '_ {
    pipes.iter().zip(FIRST_SECRET_FD..).map(|(fd, to)| (fd.as_raw_fd(), to))
}

fn filled_pipe(value: &[u8]) -> io::Result<OwnedFd> {
    if value.len() > PIPE_CAPACITY {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "a secret of more than 64 KiB"));
    }
    let mut ends = [0 as RawFd; 2];
    // SAFETY: `ends` has room for the two descriptors pipe2 returns.
    if unsafe { libc::pipe2(ends.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just created and are ours alone.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(ends[0]), OwnedFd::from_raw_fd(ends[1])) };
    std::fs::File::from(write).write_all(value)?;
    Ok(read)
}

/// A key or password file's contents; one trailing newline (as `echo`
/// leaves) is not part of the secret.
pub fn read_secret_file(path: &Path, what: &str) -> Result<Vec<u8>, String> {
    let mut value = std::fs::read(path)
        .map_err(|e| format!("Failed to read the {what} file {}: {}", path.display(), crate::os_error::describe(&e)))?;
    if value.last() == Some(&b'\n') {
        value.pop();
    }
    if value.is_empty() {
        return Err(format!("The {what} file {} is empty", path.display()));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn each_secret_is_named_by_its_descriptor_and_read_from_a_pipe() {
        let mut secrets = Secrets::default();
        secrets.add(KEY_SECRET, b"abc".to_vec());
        secrets.add(PASSWORD_SECRET, b"pw".to_vec());
        assert_eq!(
            secrets.object_args(),
            [
                "--object",
                "secret,id=fuse-export-key,file=/dev/fd/4",
                "--object",
                "secret,id=fuse-export-password,file=/dev/fd/5"
            ]
        );
        let mut contents = Vec::new();
        for pipe in secrets.pipes().unwrap() {
            let mut text = String::new();
            std::fs::File::from(pipe).read_to_string(&mut text).unwrap();
            contents.push(text);
        }
        assert_eq!(contents, ["abc", "pw"]);
        assert!(!format!("{secrets:?}").contains("abc"));
    }
}
