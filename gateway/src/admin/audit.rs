//! The audit log: one JSON line per admin action (who, what, which client,
//! when, from where, with what outcome), appended to a file. Never a key.
use std::{
    fs::{File, OpenOptions},
    io::Write,
    net::SocketAddr,
    path::Path,
    sync::Mutex,
};

use crate::private_files;

pub struct AuditLog {
    file: Mutex<File>,
}

/// One admin action.
#[derive(serde::Serialize)]
pub struct AuditEntry<'a> {
    pub ts: i64,
    /// The admin client that acted.
    pub actor: &'a str,
    pub action: &'a str,
    pub client_id: Option<&'a str>,
    pub peer: SocketAddr,
    pub status: u16,
}

impl AuditLog {
    pub fn open(path: &Path) -> std::io::Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        // Records who acted on which client: owner-only, like the store.
        let file = private_files::open(path, OpenOptions::new().create(true).append(true))?;
        Ok(Self {
            file: Mutex::new(file),
        })
    }

    /// Appends the entry as one line (one write, so lines never interleave).
    pub fn record(&self, entry: &AuditEntry<'_>) {
        let Ok(mut line) = serde_json::to_vec(entry) else {
            return;
        };
        line.push(b'\n');
        let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(error) = file.write_all(&line) {
            tracing::error!(%error, "writing the audit log failed");
        }
    }
}
