//! Build script: compiles the client API proto with `protox` (no `protoc`
//! needed) and builds the example wasm plugins for `wasm32-wasip2` so the
//! binary can embed them. Without the `server` feature only the client API
//! is compiled: the client library needs no plugins or reflection
//! descriptors.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use prost::Message;

/// The wasm plugins embedded in the binary: (backend name, crate name).
const PLUGINS: &[(&str, &str)] = &[
    ("chaos", "gatehouse_chaos"),
    ("echo", "gatehouse_echo"),
    ("kv", "gatehouse_kv"),
];

const WASM_TARGET: &str = "wasm32-wasip2";

fn main() {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR"));
    let root = manifest_dir
        .parent()
        .expect("host/ has a parent")
        .to_path_buf();

    let server = env::var_os("CARGO_FEATURE_SERVER").is_some();
    compile_protos(&root, &out_dir, server);
    if server {
        build_plugins(&root, &out_dir);
        pack_relocations(&out_dir);
    }
}

/// Links the binaries with packed relative relocations (DT_RELR) where the
/// toolchain and C library support them. The binary is also the built-in
/// native worker, and its start-up is on the path of every cold native
/// open: without this the loader pages in about 1 MB of relocation
/// entries at each start.
fn pack_relocations(out_dir: &Path) {
    const FLAG: &str = "-Wl,-z,pack-relative-relocs";
    if env::var("CARGO_CFG_TARGET_OS").as_deref() != Ok("linux")
        || env::var("CARGO_CFG_TARGET_ENV").as_deref() != Ok("gnu")
        || env::var("HOST") != env::var("TARGET")
    {
        return;
    }
    // Probe: link and run a small C program with the flag (the linker
    // must know it, and glibc must be 2.36 or newer to load the result).
    let cc = env::var("CC").unwrap_or_else(|_| "cc".into());
    let src = out_dir.join("relr-probe.c");
    let exe = out_dir.join("relr-probe");
    let works = fs::write(&src, "int main(void) { return 0; }\n").is_ok()
        && Command::new(&cc)
            .args(["-fPIE", "-pie", FLAG, "-o"])
            .arg(&exe)
            .arg(&src)
            .output()
            .is_ok_and(|o| o.status.success())
        && Command::new(&exe).status().is_ok_and(|s| s.success());
    if works {
        println!("cargo:rustc-link-arg-bins={FLAG}");
    }
}

fn compile_protos(root: &Path, out_dir: &Path, server: bool) {
    let proto_dir = root.join("proto");
    println!("cargo:rerun-if-changed={}", proto_dir.display());
    let fds = protox::compile(
        [
            "gatehouse/v1/gateway.proto",
            "gatehouse/admin/v1/admin.proto",
        ],
        [&proto_dir],
    )
    .unwrap_or_else(|e| panic!("compiling protos: {e:?}"));
    // The server stubs are generated either way: they need nothing but
    // tonic, and the client's own tests serve a fake gateway with them.
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds.clone())
        .expect("generating gRPC code");
    if !server {
        return;
    }
    // The descriptor set feeds gRPC server reflection.
    fs::write(
        out_dir.join("gatehouse_descriptor.bin"),
        fds.encode_to_vec(),
    )
    .expect("writing descriptor set");
}

fn build_plugins(root: &Path, out_dir: &Path) {
    let plugins = root.join("plugins");
    for path in ["Cargo.toml", "Cargo.lock"] {
        println!("cargo:rerun-if-changed={}", plugins.join(path).display());
    }
    for entry in fs::read_dir(&plugins).expect("reading plugins/").flatten() {
        let dir = entry.path();
        if dir.join("Cargo.toml").exists() {
            println!(
                "cargo:rerun-if-changed={}",
                dir.join("Cargo.toml").display()
            );
            println!("cargo:rerun-if-changed={}", dir.join("src").display());
        }
    }
    println!("cargo:rerun-if-changed={}", root.join("wit").display());

    ensure_wasm_target();

    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let target_dir = plugins_target_dir(out_dir);
    let mut cmd = Command::new(cargo);
    cmd.arg("build")
        .arg("--release")
        .arg("--target")
        .arg(WASM_TARGET)
        .arg("--manifest-path")
        .arg(plugins.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir);
    // The host build's flags and target settings must not leak into the
    // nested wasm build.
    for var in [
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "CARGO_PROFILE_RELEASE_DEBUG",
        "RUSTC_WORKSPACE_WRAPPER",
    ] {
        cmd.env_remove(var);
    }
    // Cargo shows a build script's output only if it fails, and its
    // `cargo:warning` lines only once it has finished: say afterwards what
    // the minutes in `gatehouse(build)` were.
    let started = Instant::now();
    let out = cmd.output().expect("running cargo for the wasm plugins");
    let took = started.elapsed().as_secs_f64();
    if !out.status.success() {
        // The nested build's own messages, so the failure says why.
        eprintln!("{}", String::from_utf8_lossy(&out.stderr));
        panic!("building the wasm plugins failed ({})", out.status);
    }
    let names: Vec<&str> = PLUGINS.iter().map(|(name, _)| *name).collect();
    println!(
        "cargo:warning=built the example wasm plugins ({}) for {WASM_TARGET} in {took:.0}s \
         (a nested cargo build into {})",
        names.join(", "),
        target_dir.display()
    );

    let mut table = String::from(
        "/// The example wasm components built into the binary: (backend name, component bytes).\n\
         pub const BUILTIN_COMPONENTS: &[(&str, &[u8])] = &[\n",
    );
    for (name, krate) in PLUGINS {
        let built = target_dir
            .join(WASM_TARGET)
            .join("release")
            .join(format!("{krate}.wasm"));
        let dest = out_dir.join(format!("{name}.wasm"));
        fs::copy(&built, &dest).unwrap_or_else(|e| panic!("copying {}: {e}", built.display()));
        table.push_str(&format!(
            "    ({name:?}, include_bytes!(concat!(env!(\"OUT_DIR\"), \"/{name}.wasm\"))),\n"
        ));
    }
    table.push_str("];\n");
    fs::write(out_dir.join("builtin_components.rs"), table).expect("writing component table");

    // Not built in: the compatibility tests load it from a file, as an
    // operator would load a plugin built for an older release.
    let compat = target_dir
        .join(WASM_TARGET)
        .join("release")
        .join("gatehouse_compat_0_1_0.wasm");
    let dest = out_dir.join("compat-0.1.0.wasm");
    fs::copy(&compat, &dest).unwrap_or_else(|e| panic!("copying {}: {e}", compat.display()));
    println!("cargo:rustc-env=GATEHOUSE_COMPAT_PLUGIN={}", dest.display());
}

/// Where the nested build puts its output: `wasm-plugins` next to the
/// host's profile directories, so debug, release, test and clippy builds
/// of the host (each with its own `OUT_DIR`) share one plugin build instead
/// of compiling wit-bindgen and the plugins once each. Cargo locks the
/// directory while it builds, so concurrent host builds wait, not collide.
/// Falls back to `OUT_DIR` if the layout is not the usual one.
fn plugins_target_dir(out_dir: &Path) -> PathBuf {
    // OUT_DIR is <target>[/<triple>]/<profile>/build/<pkg>-<hash>/out.
    let shared = out_dir
        .ancestors()
        .find(|dir| dir.file_name().is_some_and(|n| n == "build"))
        .and_then(Path::parent)
        .and_then(Path::parent)
        .map(|target| target.join("wasm-plugins"));
    shared.unwrap_or_else(|| out_dir.join("plugins-target"))
}

/// Installs the wasm target with rustup when it is missing, so a fresh
/// machine needs nothing but `cargo build`.
fn ensure_wasm_target() {
    let rustc = env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let installed = Command::new(&rustc)
        .args(["--print", "target-libdir", "--target", WASM_TARGET])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
        .is_some_and(|dir| dir.exists());
    if !installed {
        let status = Command::new("rustup")
            .args(["target", "add", WASM_TARGET])
            .status();
        assert!(
            matches!(status, Ok(s) if s.success()),
            "the {WASM_TARGET} target is missing and `rustup target add {WASM_TARGET}` failed"
        );
    }
}
