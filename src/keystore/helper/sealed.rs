//! A secret the daemon keeps outside its own memory: the PIN of
//! `PIN_SOURCE = env:NAME`, which the daemon must hand to every key helper
//! it starts, is written once into a sealed memfd (an anonymous file in
//! the kernel, never mapped into the process) and the daemon's copy is
//! wiped. A core image or a read of the daemon's memory does not see it;
//! [`SealedSecret::read`] brings it back for the moment it takes to send
//! it to a helper, in a buffer that is wiped when dropped.
//!
//! The memfd is close-on-exec (no helper or post-rotation command
//! inherits it) and sealed against writes, growth and shrinking.

use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::OwnedFd;

use rustix::fs::{MemfdFlags, SealFlags};
use secrecy::{ExposeSecret, SecretString};
use zeroize::Zeroizing;

pub struct SealedSecret {
    file: std::sync::Mutex<std::fs::File>,
}

impl std::fmt::Debug for SealedSecret {
    /// Never the secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SealedSecret(..)")
    }
}

impl SealedSecret {
    /// Seals `secret` into a new memfd; the caller drops (wipes) its copy.
    pub fn new(secret: &SecretString) -> std::io::Result<Self> {
        let fd: OwnedFd = rustix::fs::memfd_create(
            "prov-agent-secret",
            MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
        )?;
        let mut file = std::fs::File::from(fd);
        file.write_all(secret.expose_secret().as_bytes())?;
        rustix::fs::fcntl_add_seals(
            &file,
            SealFlags::WRITE | SealFlags::GROW | SealFlags::SHRINK | SealFlags::SEAL,
        )?;
        Ok(Self {
            file: std::sync::Mutex::new(file),
        })
    }

    /// The secret's bytes, in a buffer wiped when dropped.
    pub fn read(&self) -> std::io::Result<Zeroizing<Vec<u8>>> {
        let mut file = self
            .file
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let len = file.metadata()?.len();
        let mut out = Zeroizing::new(vec![
            0u8;
            usize::try_from(len).map_err(std::io::Error::other)?
        ]);
        file.seek(SeekFrom::Start(0))?;
        file.read_exact(&mut out)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_secret_comes_back_and_cannot_be_changed() {
        let sealed = SealedSecret::new(&SecretString::from("1234-pin".to_string())).unwrap();
        assert_eq!(&**sealed.read().unwrap(), b"1234-pin");
        assert_eq!(&**sealed.read().unwrap(), b"1234-pin", "read twice");
        let file = sealed.file.lock().unwrap();
        // Sealed: neither written nor grown, even through the descriptor.
        assert!((&*file).write_all(b"x").is_err());
        assert!(file.set_len(100).is_err());
        assert!(format!("{sealed:?}").find("1234").is_none());
    }
}
