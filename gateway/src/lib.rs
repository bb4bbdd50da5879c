//! The gateway: today its kernel path (XDP program, pinned maps, CLI);
//! the proxy, authentication and limits build on it.
pub mod access_log;
pub mod admin;
pub mod admin_client;
pub mod clock;
pub mod config;
pub mod guard;
pub mod histogram;
pub mod jwt;
pub mod keys;
pub mod limits;
pub mod metrics;
pub mod net;
pub mod proxy;
pub mod shared;
pub mod tokens;
pub mod upstream;
pub mod xdp;
