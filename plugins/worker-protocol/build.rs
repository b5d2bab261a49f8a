//! Compiles the worker protocol (`proto/gatehouse/worker/v1/worker.proto`)
//! with `protox`, so no `protoc` is needed.

use std::env;
use std::path::PathBuf;

fn main() {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let proto_dir = manifest_dir.join("../../proto");
    let file = "gatehouse/worker/v1/worker.proto";
    println!("cargo:rerun-if-changed={}", proto_dir.join(file).display());
    let fds =
        protox::compile([file], [&proto_dir]).unwrap_or_else(|e| panic!("compiling {file}: {e:?}"));
    prost_build::Config::new()
        .compile_fds(fds)
        .expect("generating the worker protocol code");
}
