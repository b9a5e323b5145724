//! Compiles `proto/quarry.proto` (and the etcd KV subset quarry-bench drives) with a
//! vendored protoc, so no system protoc is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; prost-build reads PROTOC from the env.
    unsafe { std::env::set_var("PROTOC", protoc) };
    println!("cargo:rerun-if-changed=proto/quarry.proto");
    tonic_prost_build::configure().bytes(".").compile_protos(&["proto/quarry.proto"], &["proto"])?;
    println!("cargo:rerun-if-changed=proto/etcd/kv.proto");
    tonic_prost_build::configure().build_server(false).compile_protos(&["proto/etcd/kv.proto"], &["proto"])?;
    Ok(())
}
