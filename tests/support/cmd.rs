//! Running commands: each panics with the command's output when it fails,
//! so a test reads as the happy path.
use std::{
    path::{Path, PathBuf},
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
/// `openssl genpkey` arguments for a 2048-bit RSA key.
pub const RSA_2048: &[&str] = &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"];
/// `openssl genpkey` arguments for a P-256 EC key.
pub const EC_P256: &[&str] = &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"];

/// A key pair made by openssl in `dir` as `NAME.key` and `NAME.pub`
/// (`algorithm`: [`RSA_2048`] or [`EC_P256`]): the private PEM's bytes and
/// the public PEM's path.
pub fn openssl_key_pair(dir: &Path, name: &str, algorithm: &[&str]) -> (Vec<u8>, PathBuf) {
    let (private, public) = (format!("{name}.key"), format!("{name}.pub"));
    let mut args = vec!["genpkey"];
    args.extend_from_slice(algorithm);
    args.extend_from_slice(&["-out", &private]);
    openssl(dir, &args);
    openssl(dir, &["pkey", "-in", &private, "-pubout", "-out", &public]);
    (
        std::fs::read(dir.join(&private)).unwrap(),
        dir.join(&public),
    )
}

pub fn openssl(dir: &Path, args: &[&str]) -> String {
    let output = checked(Command::new("openssl").args(args).current_dir(dir));
    String::from_utf8(output.stdout).unwrap()
}
