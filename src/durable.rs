//! Durable, private file writes.
//!
//! Everything the agent writes (keys of the file backend, TPM blobs,
//! certificates, the journal) goes through here: a temp file in the same
//! directory created with mode 0600, written, `fsync`ed, renamed over the
//! target, and the directory `fsync`ed, so that a crash leaves either the
//! old or the new file and never a torn one.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Mode of every file the agent writes.
pub const FILE_MODE: u32 = 0o600;
/// Mode of every directory the agent creates.
pub const DIR_MODE: u32 = 0o700;

/// Creates `dir` and its missing parents with mode 0700. An existing
/// directory is left as it is (its mode is checked by `prov-agent check`).
pub fn create_dir_all(dir: &Path) -> io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)
}

/// Atomically replaces `path` with `contents`, mode 0600.
pub fn write_file(path: &Path, contents: &[u8]) -> io::Result<()> {
    write_file_mode(path, contents, FILE_MODE)
}

/// [`write_file`] with another `mode`, for the few files a consumer group
/// must read (`[EXPORT] GROUP`).
pub fn write_file_mode(path: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
    let dir = parent_dir(path);
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    // An unpredictable name, created exclusively: nothing planted in the
    // directory (a symlink to a file elsewhere, say) is opened or followed.
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        hex::encode(rand::random::<[u8; 8]>())
    ));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        // The umask may have taken bits off.
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.write_all(contents)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, path)?;
        sync_dir(&dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Atomically renames `from` to `to` (same directory) and makes it durable.
pub fn rename(from: &Path, to: &Path) -> io::Result<()> {
    fs::rename(from, to)?;
    sync_dir(&parent_dir(to))?;
    let from_dir = parent_dir(from);
    if from_dir != parent_dir(to) {
        sync_dir(&from_dir)?;
    }
    Ok(())
}

/// Removes `path` and makes the removal durable. A missing file is not an
/// error.
pub fn remove_file(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Ok(()) => sync_dir(&parent_dir(path)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Overwrites a file's contents with zeros, syncs, then removes it. Used
/// for `claim import --shred`. On flash storage with wear levelling this
/// is best effort, which the docs say.
pub fn shred(path: &Path) -> io::Result<()> {
    let len = fs::metadata(path)?.len();
    let mut f = OpenOptions::new().write(true).open(path)?;
    let zeros = vec![0u8; 4096];
    let mut left = len;
    while left > 0 {
        let n = left.min(zeros.len() as u64) as usize;
        f.write_all(&zeros[..n])?;
        left -= n as u64;
    }
    f.sync_all()?;
    drop(f);
    remove_file(path)
}

fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Makes the entries of `dir` (a rename, a new symlink) durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_is_private_and_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("state");
        create_dir_all(&sub).unwrap();
        assert_eq!(
            fs::metadata(&sub).unwrap().permissions().mode() & 0o777,
            0o700
        );
        let p = sub.join("a.json");
        write_file(&p, b"one").unwrap();
        write_file(&p, b"two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        // No temp file is left behind.
        assert_eq!(fs::read_dir(&sub).unwrap().count(), 1);
    }

    /// A symlink planted where the file goes is replaced, not followed:
    /// the file it points to is untouched.
    #[test]
    fn a_planted_symlink_is_replaced_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside");
        fs::write(&outside, b"precious").unwrap();
        let state = dir.path().join("state");
        create_dir_all(&state).unwrap();
        let target = state.join("journal.json");
        std::os::unix::fs::symlink(&outside, &target).unwrap();
        write_file(&target, b"token").unwrap();
        assert_eq!(fs::read(&outside).unwrap(), b"precious");
        let meta = fs::symlink_metadata(&target).unwrap();
        assert!(meta.file_type().is_file());
        assert_eq!(fs::read(&target).unwrap(), b"token");
    }

    #[test]
    fn shred_removes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k.pem");
        fs::write(&p, b"secret").unwrap();
        shred(&p).unwrap();
        assert!(!p.exists());
    }
}
