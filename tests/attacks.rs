//! Attacks on the real binary, the way real tools make them: each case
//! asserts the status the attacker gets AND what the recording upstream
//! (or the store, or the kernel map) saw, which for a refused request is
//! nothing. One module per class of attack.
#[path = "attacks/paths.rs"]
mod paths;

#[path = "attacks/jwt.rs"]
mod jwt;

#[path = "attacks/http.rs"]
mod http;

#[path = "attacks/http_limits.rs"]
mod http_limits;

#[path = "attacks/http2.rs"]
mod http2;

#[path = "attacks/http2_stalls.rs"]
mod http2_stalls;

#[path = "attacks/guard.rs"]
mod guard;

#[path = "attacks/config.rs"]
mod config;

#[path = "attacks/parking.rs"]
mod parking;

#[path = "attacks/descriptors.rs"]
mod descriptors;

#[path = "attacks/tokens.rs"]
mod tokens;

#[path = "attacks/bans.rs"]
mod bans;
