//! Running commands: each panics with the command's output when it fails,
//! so a test reads as the happy path.
use std::{
    path::Path,
    process::{Command, Output},
};

/// Runs `command` and returns its output; panics with its stdout and
/// stderr if it cannot start or does not exit 0.
pub fn checked(command: &mut Command) -> Output {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    assert!(
        output.status.success(),
        "{command:?} failed ({}): {}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// Runs a command and panics with its output if it fails.
pub fn sh(program: &str, args: &[&str]) -> Output {
    checked(Command::new(program).args(args))
}

/// Runs `openssl` in `dir`; panics with its stderr if it fails. Returns stdout.
pub fn openssl(dir: &Path, args: &[&str]) -> String {
    let output = checked(Command::new("openssl").args(args).current_dir(dir));
    String::from_utf8(output.stdout).unwrap()
}
