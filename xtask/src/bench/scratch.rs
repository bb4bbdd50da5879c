//! Scratch directories for the benches' configuration, key, certificate and
//! frame files: `tempfile`'s, removed on drop.
use std::{fs::Permissions, os::unix::fs::PermissionsExt as _};

use anyhow::{Context, Result};
use tempfile::TempDir;

/// A fresh directory in the system's temp dir, its name starting with
/// `prefix`, removed (with its contents) on drop. Readable by everyone, as
/// the directories the benches made themselves were: nginx run as root
/// hands its workers to an unprivileged user.
pub(crate) fn dir(prefix: &str) -> Result<TempDir> {
    tempfile::Builder::new()
        .prefix(prefix)
        .permissions(Permissions::from_mode(0o755))
        .tempdir()
        .with_context(|| format!("creating a temporary directory {prefix}*"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn made_and_removed() {
        let made = dir("gateway-bench-test-").unwrap();
        let path = made.path().to_owned();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        assert!(name.starts_with("gateway-bench-test-"), "{name}");
        std::fs::write(path.join("file"), "x").unwrap();
        drop(made);
        assert!(!path.exists());
    }
}
