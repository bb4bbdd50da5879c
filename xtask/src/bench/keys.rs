//! API keys for the benches that run the gateway from a config file:
//! `gateway keys create --json --count N`, read back.
use std::{path::Path, process::Command};

use anyhow::{bail, ensure, Context, Result};

/// A created key: the secret a client sends, and the client id it maps to.
pub(crate) struct Key {
    pub(crate) api_key: String,
    pub(crate) id: String,
}

/// `count` keys named `name` in `tier`, in the store `config` names (one
/// `{"id", "api_key"}` line per key on `--json`).
pub(crate) fn create(
    gateway_bin: &Path,
    config: &Path,
    name: &str,
    tier: &str,
    count: usize,
) -> Result<Vec<Key>> {
    let created = Command::new(gateway_bin)
        .args(["keys", "create", "--name", name, "--tier", tier])
        .args(["--json", "--count", &count.to_string(), "--config"])
        .arg(config)
        .output()
        .context("creating keys")?;
    if !created.status.success() {
        bail!(
            "gateway keys create failed: {}",
            String::from_utf8_lossy(&created.stderr)
        );
    }
    let keys = parse(&String::from_utf8_lossy(&created.stdout))?;
    ensure!(keys.len() == count, "{} keys created", keys.len());
    Ok(keys)
}

/// The peers' key maps of `(key, client id)` pairs: `SHA-256(key)
/// client-id` lines for HAProxy (its `sha2(256),hex` is uppercase) and
/// `key client-id;` lines for nginx's `map` (no SHA-256 without extra
/// modules).
pub(crate) fn write_maps(sha_map: &Path, raw_map: &Path, keys: &[(String, String)]) -> Result<()> {
    use std::fmt::Write as _;
    let (mut sha, mut raw) = (String::new(), String::new());
    for (key, client) in keys {
        writeln!(sha, "{} {client}", sha256_hex_upper(key))?;
        writeln!(raw, "{key} {client};")?;
    }
    std::fs::write(sha_map, sha)?;
    std::fs::write(raw_map, raw)?;
    Ok(())
}

fn sha256_hex_upper(text: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect()
}

fn parse(json_lines: &str) -> Result<Vec<Key>> {
    json_lines
        .lines()
        .map(|line| {
            let value: serde_json::Value = serde_json::from_str(line)?;
            let field = |name: &str| value[name].as_str().map(str::to_owned);
            Ok(Key {
                api_key: field("api_key").context("no api_key")?,
                id: field("id").context("no client id")?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_one_key_a_line() {
        let keys = parse(
            "{\"id\":\"c1\",\"api_key\":\"gk_1\",\"tier\":\"gold\"}\n{\"id\":\"c2\",\"api_key\":\"gk_2\"}\n",
        )
        .unwrap();
        let pairs: Vec<_> = keys.iter().map(|k| (&*k.api_key, &*k.id)).collect();
        assert_eq!(pairs, [("gk_1", "c1"), ("gk_2", "c2")]);
        assert!(parse("{\"id\":\"c1\"}").is_err());
        assert!(parse("not json").is_err());
    }
}
