//! Embeds the XDP object built by `cargo xtask build-ebpf`, so the
//! `dataplane` binary is one file to copy to a host.

use std::path::PathBuf;

fn main() {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap())
        .parent()
        .unwrap()
        .to_path_buf();
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let object = std::env::var_os("DATAPLANE_EBPF_OBJECT")
        .map(PathBuf::from)
        .unwrap_or_else(|| target.join("bpfel-unknown-none/release/dataplane-ebpf"));
    println!("cargo:rerun-if-env-changed=DATAPLANE_EBPF_OBJECT");
    println!("cargo:rerun-if-changed={}", object.display());
    if !object.exists() {
        panic!(
            "\n\nThe XDP object {} is missing.\nBuild it first with `cargo xtask build-ebpf` \
             (or build everything with `cargo xtask build`).\n\n",
            object.display()
        );
    }
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("dataplane-ebpf.o");
    std::fs::copy(&object, &out).expect("copy the XDP object into OUT_DIR");
}
