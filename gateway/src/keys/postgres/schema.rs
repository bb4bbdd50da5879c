//! The shared store's schema, as numbered migrations: `gateway store
//! migrate` applies the missing ones in one transaction; `gateway run`
//! starts only on the exact version it was built for.
use super::super::store::StoreError;

/// One schema step; versions start at 1 and never change once released.
#[derive(Debug)]
pub struct Migration {
    pub version: i32,
    pub name: &'static str,
    pub sql: &'static str,
}

/// Every migration, in order.
pub const MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    name: "clients, keys and the change counter",
    sql: "
CREATE TABLE api_clients (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    tier        TEXT NOT NULL,
    scopes      TEXT NOT NULL,
    expires_at  BIGINT,
    disabled    BOOLEAN NOT NULL DEFAULT FALSE,
    is_admin    BOOLEAN NOT NULL DEFAULT FALSE,
    external_id TEXT UNIQUE,
    created_at  BIGINT NOT NULL
);
CREATE TABLE api_keys (
    key_id      TEXT PRIMARY KEY,
    client_id   TEXT NOT NULL REFERENCES api_clients(id) ON DELETE CASCADE,
    secret_hash BYTEA NOT NULL,
    expires_at  BIGINT,
    created_at  BIGINT NOT NULL
);
CREATE INDEX api_keys_client ON api_keys (client_id);
CREATE TABLE store_version (
    id      INTEGER PRIMARY KEY CHECK (id = 1),
    version BIGINT NOT NULL
);
INSERT INTO store_version (id, version) VALUES (1, 0);
",
}];

/// Where the applied versions are recorded.
pub const TABLE: &str = "gateway_schema";

/// The version this build runs on.
pub fn latest() -> i32 {
    MIGRATIONS.last().map_or(0, |m| m.version)
}

/// The migrations to apply to a schema at `current`; refused when the
/// schema is newer than anything this build knows (a newer gateway
/// migrated it: running older code on it could lose data).
pub fn plan(current: i32, known: &[Migration]) -> Result<&[Migration], StoreError> {
    let latest = known.last().map_or(0, |m| m.version);
    if current > latest {
        return Err(StoreError::Schema(format!(
            "the database is at schema version {current}, newer than this gateway's {latest}: \
             upgrade the gateway instead of migrating"
        )));
    }
    Ok(&known[known.partition_point(|m| m.version <= current)..])
}

/// Whether `gateway run` may start on a schema at `current`.
pub fn check(current: i32, known: &[Migration]) -> Result<(), StoreError> {
    let latest = known.last().map_or(0, |m| m.version);
    match current.cmp(&latest) {
        std::cmp::Ordering::Equal => Ok(()),
        std::cmp::Ordering::Less => Err(StoreError::Schema(format!(
            "the database is at schema version {current}, this gateway needs {latest}: \
             run `gateway store migrate` first"
        ))),
        std::cmp::Ordering::Greater => Err(StoreError::Schema(format!(
            "the database is at schema version {current}, newer than this gateway's {latest}: \
             upgrade the gateway"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const THREE: &[Migration] = &[
        Migration {
            version: 1,
            name: "a",
            sql: "",
        },
        Migration {
            version: 2,
            name: "b",
            sql: "",
        },
        Migration {
            version: 3,
            name: "c",
            sql: "",
        },
    ];

    fn versions(plan: &[Migration]) -> Vec<i32> {
        plan.iter().map(|m| m.version).collect()
    }

    #[test]
    fn migrate_applies_what_is_missing_in_order() {
        assert_eq!(versions(plan(0, THREE).unwrap()), [1, 2, 3]);
        assert_eq!(versions(plan(2, THREE).unwrap()), [3]);
        assert!(plan(3, THREE).unwrap().is_empty());
    }

    #[test]
    fn migrate_refuses_a_newer_schema() {
        let message = plan(4, THREE).unwrap_err().to_string();
        assert!(
            message.contains("version 4") && message.contains("upgrade"),
            "{message}"
        );
    }

    #[test]
    fn run_needs_exactly_its_version() {
        assert!(check(3, THREE).is_ok());
        for current in [0, 2] {
            let message = check(current, THREE).unwrap_err().to_string();
            assert!(message.contains("gateway store migrate"), "{message}");
        }
        let message = check(4, THREE).unwrap_err().to_string();
        assert!(!message.contains("migrate`"), "{message}");
    }

    #[test]
    fn released_versions_are_consecutive_from_one() {
        for (index, migration) in MIGRATIONS.iter().enumerate() {
            assert_eq!(migration.version, index as i32 + 1, "{}", migration.name);
        }
        assert_eq!(latest(), MIGRATIONS.len() as i32);
    }
}
