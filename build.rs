//! Compiles `proto/quarry.proto` (and the etcd KV subset quarry-bench drives) with a
//! vendored protoc, so no system protoc is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The commit every binary's --version names ("unknown" outside a git checkout).
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=QUARRY_GIT_COMMIT={commit}");
    println!("cargo:rerun-if-changed=.git/HEAD");
    println!("cargo:rerun-if-changed=.git/refs/heads");
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; prost-build reads PROTOC from the env.
    unsafe { std::env::set_var("PROTOC", protoc) };
    println!("cargo:rerun-if-changed=proto/quarry.proto");
    tonic_prost_build::configure().bytes(".").compile_protos(&["proto/quarry.proto"], &["proto"])?;
    println!("cargo:rerun-if-changed=proto/etcd/kv.proto");
    tonic_prost_build::configure().build_server(false).compile_protos(&["proto/etcd/kv.proto"], &["proto"])?;
    Ok(())
}
