//! Temp directories, from the `tempfile` crate: one audited implementation
//! (unique names created atomically, removal on drop) for every test.
use std::path::{Path, PathBuf};

/// A fresh directory under the system temp dir, removed on drop, named
/// `gw-<tag>-<random>` so a leftover says which test made it.
pub struct TempDir {
    /// Where it is (the same as [`TempDir::path`]).
    pub path: PathBuf,
    _dir: tempfile::TempDir,
}

impl TempDir {
    pub fn new(tag: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix(&format!("gw-{tag}-"))
            .tempdir()
            .unwrap_or_else(|e| panic!("cannot create a temp dir: {e}"));
        Self {
            path: dir.path().to_owned(),
            _dir: dir,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `contents` to `name` in this directory; its path.
    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.path.join(name);
        std::fs::write(&path, contents)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        path
    }
}
