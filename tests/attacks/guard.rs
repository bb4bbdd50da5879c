//! Guard collateral damage: trusted proxies, allow-lists, key rotation refusals, shared sources; the token endpoint's limits.
