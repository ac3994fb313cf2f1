//! The registry's database file holds the CA's private key and the
//! ownership token key: it is created mode 0600 before SQLite opens it
//! (SQLite would create it 0644 under the usual umask). SQLite gives the
//! `-wal`, `-shm` and `-journal` files it creates beside it the mode of
//! the database file, so they are 0600 too.

use std::fs::{OpenOptions, Permissions};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::RegistryError;

/// The mode of the database and its companion files.
pub(super) const DATABASE_MODE: u32 = 0o600;

/// Creates `path` (mode [`DATABASE_MODE`]) if it does not exist. A
/// database left readable by others (by an emulator before this rule) is
/// made private, with its companion files; failing that only warns, as the
/// database itself is still usable.
pub(super) fn ensure_private_database(path: &Path) -> Result<(), RegistryError> {
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(DATABASE_MODE)
        .open(path)
        .map_err(|source| RegistryError::Io {
            what: format!("creating the registry database {}", path.display()),
            source,
        })?;
    drop(file);
    for p in std::iter::once(path.to_path_buf()).chain(companions(path)) {
        let Ok(meta) = std::fs::metadata(&p) else {
            continue;
        };
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 == 0 {
            continue;
        }
        match std::fs::set_permissions(&p, Permissions::from_mode(DATABASE_MODE)) {
            Ok(()) => tracing::warn!(
                "{} was mode {mode:04o}, readable by other users although it holds the CA key: made {DATABASE_MODE:04o}",
                p.display()
            ),
            Err(e) => tracing::warn!(
                "{} is mode {mode:04o}, readable by other users although it holds the CA key, and could not be made {DATABASE_MODE:04o}: {e}; chmod 600 it",
                p.display()
            ),
        }
    }
    Ok(())
}

/// The files SQLite keeps beside the database.
fn companions(path: &Path) -> impl Iterator<Item = PathBuf> + '_ {
    ["-wal", "-shm", "-journal"].into_iter().map(move |suffix| {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        PathBuf::from(name)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn created_private_and_old_ones_made_private() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("registry.sqlite3");
        ensure_private_database(&db).unwrap();
        assert_eq!(mode(&db), DATABASE_MODE);
        // An older database and WAL left 0644.
        let wal = dir.path().join("registry.sqlite3-wal");
        std::fs::write(&wal, b"").unwrap();
        for p in [&db, &wal] {
            std::fs::set_permissions(p, Permissions::from_mode(0o644)).unwrap();
        }
        std::fs::write(&db, b"kept").unwrap();
        ensure_private_database(&db).unwrap();
        assert_eq!(mode(&db), DATABASE_MODE);
        assert_eq!(mode(&wal), DATABASE_MODE);
        // Never truncated.
        assert_eq!(std::fs::read(&db).unwrap(), b"kept");
    }
}
