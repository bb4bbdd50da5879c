//! `gateway tokens ...`: the token endpoint's signing keys, changed in the
//! state directory a running gateway watches.
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Subcommand;
use gateway::{clock::unix_now, config::Config, tokens::KeyFile};

#[derive(Subcommand)]
pub enum TokensCommand {
    /// A new signing key for the token endpoint; the old one stays in the
    /// JWKS until its last token expires. A running gateway follows within
    /// a second.
    RotateKey {
        /// The configuration whose `state_dir` holds the keys.
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

pub fn tokens_command(command: TokensCommand) -> Result<()> {
    let TokensCommand::RotateKey { config } = command;
    let config = Config::load(config.as_deref()).context("loading the configuration")?;
    let file = KeyFile::new(
        config.state_dir.join("token-keys.json"),
        config.tokens.max_ttl_seconds(),
    );
    let kid = file
        .rotate(unix_now())
        .context("rotating the token signing key")?;
    println!(
        "new token signing key {kid}; the previous one stays published for {} s",
        config.tokens.max_ttl_seconds()
    );
    Ok(())
}
