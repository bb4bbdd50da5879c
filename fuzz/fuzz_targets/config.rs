//! Any text as a configuration file: `config::Config::parse` (TOML, then
//! every section's validation) and the settings derived from it at start.
#![no_main]

use gateway::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // `Config::load` reads files with `read_to_string`: only UTF-8 gets here.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(config) = Config::parse(text) {
        let _ = config.xdp_settings();
        let _ = config.guard_settings();
    }
});
