//! Fleet mode: several gateways acting as one through existing engines
//! (Redis for what is fast and shared), never a home-made cluster protocol.
//! [`bans`] carries every node's bans and tier budgets to every other
//! node's kernel; [`limits`] shares tier quotas with a stated error bound.
pub mod bans;
mod follow;
pub mod limits;
pub mod redis;
mod reply;
pub mod wire;
#[cfg(test)]
mod wire_tests;

/// This process's identity among the fleet's nodes: what it publishes is
/// tagged with it so it can skip its own entries. Random per start, so a
/// restarted node is a new node (its old heartbeat simply expires).
pub fn node_id() -> &'static str {
    static ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ID.get_or_init(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        let host: String = host
            .trim()
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '.')
            .take(64)
            .collect();
        format!("{host}-{}-{:08x}", std::process::id(), fastrand::u32(..))
    })
}
