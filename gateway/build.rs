//! Embeds the XDP object built by `cargo xtask build` (nightly, bpfel) into
//! the gateway binary, so there is one file to deploy.
use std::{env, path::PathBuf};

fn main() {
    println!("cargo:rerun-if-env-changed=GATEWAY_XDP_OBJECT");
    println!("cargo:rerun-if-env-changed=CARGO_TARGET_DIR");
    let object = match env::var_os("GATEWAY_XDP_OBJECT") {
        Some(path) => PathBuf::from(path),
        None => {
            let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
            let target = env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| manifest.join("..").join("target"));
            target.join("bpfel-unknown-none/release/gateway-xdp")
        }
    };
    if !object.is_file() {
        panic!(
            "the XDP object {} does not exist: run `cargo xtask build` first \
             (it builds gateway-ebpf with nightly for bpfel-unknown-none), \
             or point GATEWAY_XDP_OBJECT at a built object",
            object.display()
        );
    }
    println!("cargo:rerun-if-changed={}", object.display());
    println!(
        "cargo:rustc-env=GATEWAY_XDP_OBJECT_PATH={}",
        object.display()
    );
}
