//! The OpenAPI document served at `/v1/management/openapi.json`: the
//! committed `openapi.json` with this gateway's tiers filled in, so a
//! client (or a fuzzer) generated from it names only tiers that exist.
use serde_json::{json, Value};

/// The committed document; its `Tier` schema has no enum.
pub const OPENAPI: &str = include_str!("openapi.json");

/// [`OPENAPI`] with `tiers` (the configured ones, in order) as the `Tier`
/// schema's enum.
pub fn document<'a>(tiers: impl Iterator<Item = &'a str>) -> Value {
    // A test parses the committed file; `Null` would only mean it broke.
    let mut doc: Value = serde_json::from_str(OPENAPI).unwrap_or_default();
    if let Some(tier) = doc.pointer_mut("/components/schemas/Tier") {
        tier["enum"] = json!(tiers.collect::<Vec<_>>());
    }
    doc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_served_document_lists_the_configured_tiers() {
        let doc = document(["gold", "bronze"].into_iter());
        assert_eq!(doc["openapi"], "3.0.3");
        assert_eq!(
            doc["components"]["schemas"]["Tier"]["enum"],
            json!(["gold", "bronze"])
        );
        // Create and update name a tier through it.
        for schema in ["CreateClient", "UpdateClient"] {
            assert_eq!(
                doc["components"]["schemas"][schema]["properties"]["tier"]["$ref"],
                "#/components/schemas/Tier"
            );
        }
    }
}
