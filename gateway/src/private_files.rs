//! Files that hold secrets or records of them (the key store and its WAL,
//! the audit log, the token signing keys, the self-signed TLS key) are
//! readable by their owner only (0600), whatever the umask: created so,
//! and narrowed with a warning when an earlier version left them wider.
use std::{
    fs::{File, OpenOptions, Permissions},
    io,
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::Path,
};

/// Owner read and write, nothing for group or others.
pub const MODE: u32 = 0o600;

/// Opens `path` with `options`, creating it 0600; a file that existed
/// with a wider mode is narrowed to 0600.
pub fn open(path: &Path, options: &mut OpenOptions) -> io::Result<File> {
    let file = options.mode(MODE).open(path)?;
    narrow(path, file.metadata()?.permissions().mode(), |p| {
        file.set_permissions(p)
    })?;
    Ok(file)
}

/// Narrows an existing file to 0600 (with a warning); a missing one is fine.
pub fn restrict(path: &Path) -> io::Result<()> {
    match std::fs::metadata(path) {
        Ok(metadata) => narrow(path, metadata.permissions().mode(), |p| {
            std::fs::set_permissions(path, p)
        }),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(error),
    }
}

/// Creates `path` (empty, 0600) unless it exists, and narrows it and its
/// companions (`path` + each suffix, e.g. SQLite's `-wal`) that exist.
pub fn prepare(path: &Path, companions: &[&str]) -> io::Result<()> {
    match open(path, OpenOptions::new().write(true).create_new(true)) {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => restrict(path)?,
        Err(e) => return Err(e),
    }
    for suffix in companions {
        let mut companion = path.as_os_str().to_owned();
        companion.push(suffix);
        restrict(Path::new(&companion))?;
    }
    Ok(())
}

fn narrow(
    path: &Path,
    mode: u32,
    set: impl FnOnce(Permissions) -> io::Result<()>,
) -> io::Result<()> {
    if mode & 0o077 == 0 {
        return Ok(());
    }
    tracing::warn!(
        path = %path.display(),
        mode = format!("{:o}", mode & 0o777),
        "file holding secrets was readable by others; narrowing it to 0600"
    );
    set(Permissions::from_mode(MODE))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn files_are_made_and_kept_owner_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        open(&path, OpenOptions::new().write(true).create(true)).unwrap();
        assert_eq!(mode(&path), 0o600);
        std::fs::set_permissions(&path, Permissions::from_mode(0o644)).unwrap();
        open(&path, OpenOptions::new().append(true).create(true)).unwrap();
        assert_eq!(mode(&path), 0o600);
        std::fs::set_permissions(&path, Permissions::from_mode(0o640)).unwrap();
        restrict(&path).unwrap();
        assert_eq!(mode(&path), 0o600);
        restrict(&dir.path().join("missing")).unwrap();
    }

    #[test]
    fn prepare_makes_the_file_and_narrows_its_companions() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.db");
        let wal = dir.path().join("store.db-wal");
        std::fs::write(&wal, "x").unwrap();
        std::fs::set_permissions(&wal, Permissions::from_mode(0o644)).unwrap();
        prepare(&path, &["-wal", "-shm"]).unwrap();
        assert_eq!((mode(&path), mode(&wal)), (0o600, 0o600));
        std::fs::write(&path, "kept").unwrap();
        prepare(&path, &[]).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "kept");
    }
}
