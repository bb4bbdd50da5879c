//! The gateway as a library: the proxy (routing, API-key and JWT
//! authentication, rate limits, the token endpoint), the key store and
//! client lifecycle, the admin API, and the XDP kernel path that drops
//! abusive sources before they reach the proxy. The `gateway` binary's
//! command line (`src/cli/`) wires these together; clap stays there.
pub mod accept;
pub mod access_log;
pub mod admin;
pub mod admin_client;
pub mod caps;
pub mod clock;
pub mod config;
pub mod connections;
pub mod fleet;
pub mod guard;
pub mod h1;
pub mod handover;
pub mod histogram;
pub mod host;
pub mod in_flight;
pub mod jwt;
pub mod keys;
pub mod limits;
pub mod metrics;
pub mod net;
pub mod path;
pub mod private_files;
pub mod proxy;
pub mod reload;
pub mod shared;
pub mod tokens;
pub mod upstream;
pub mod xdp;
