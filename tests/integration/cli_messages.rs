//! What the CLI says and does at the edges a new user hits: output piped
//! into `head`, and a component whose memory at start is over its limit.

use std::io::Write;
use std::process::{Command, Stdio};

use crate::fixtures::*;

/// `gatehouse invoke ... | head -c1`: the pipeline exits 0, and the CLI,
/// whose reader went away mid-reply, ends without a panic.
#[tokio::test]
async fn invoke_piped_into_head_exits_quietly() {
    let gh = Gatehouse::start(Toml::new().backend("echo", "builtin:echo").render()).await;
    let addr = gh.dial_addr().to_string();
    let open = Command::new(BIN)
        .args(["open", "echo", "--addr", &addr])
        .output()
        .unwrap();
    assert!(open.status.success(), "{open:?}");
    let sid = String::from_utf8(open.stdout).unwrap().trim().to_string();
    // A reply far larger than a pipe's buffer, so the CLI is still writing
    // when `head` has gone.
    let payload = "x".repeat(1 << 20);
    let out = tokio::task::spawn_blocking(move || {
        let mut child = Command::new("bash")
            .args([
                "-c",
                "\"$0\" invoke \"$1\" echo - --addr \"$2\" 2>\"$3\" | head -c1; \
                 echo \" pipeline=$? cli=${PIPESTATUS[0]}\"",
                BIN,
                &sid,
                &addr,
                "/dev/stderr",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(payload.as_bytes()).unwrap();
        drop(stdin);
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout} {stderr}");
    assert!(stdout.starts_with("x pipeline=0 "), "{stdout}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    // Killed by SIGPIPE (128 + 13), as `yes | head` is, or done first.
    let cli = stdout.rsplit("cli=").next().unwrap().trim();
    assert!(cli == "141" || cli == "0", "{stdout}");
}

/// The echo component starts with 17 pages (1.06 MiB) of memory: under a
/// 1 MiB limit the open is refused, saying it is the memory limit, with
/// the limit and what the component asked for.
#[tokio::test]
async fn an_open_refused_for_its_memory_limit_says_so() {
    let config = Toml::new()
        .backend_with("small", "builtin:echo", &[], &["memory_limit = \"1MiB\""])
        // A larger limit elsewhere: the engine admits the component, the
        // session's own limit refuses it at open.
        .backend("echo", "builtin:echo")
        .render();
    let gh = Gatehouse::start(config).await;
    let out = Command::new(BIN)
        .args(["open", "small", "--addr", &gh.dial_addr().to_string()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    for words in [
        "memory-limit",
        "asks for 1114112 bytes (1.1 MiB) of memory at start",
        "memory_limit of 1048576 bytes (1.0 MiB)",
        "raise [backends.sessions] memory_limit",
    ] {
        assert!(stderr.contains(words), "{words:?} not in {stderr}");
    }
}

/// With every limit under what the component asks for, the gateway does
/// not start, and says why in the same words.
#[tokio::test]
async fn a_component_over_every_memory_limit_is_refused_at_load() {
    let config = Toml::new()
        .backend_with("small", "builtin:echo", &[], &["memory_limit = \"1MiB\""])
        .render();
    let Err(err) = Gatehouse::builder(config).try_start().await else {
        panic!("the gateway must refuse the backend");
    };
    let text = err.stderr().to_string();
    assert!(
        text.contains("asks for 1114112 bytes (1.1 MiB) of memory at start")
            && text.contains("memory_limit of 1048576 bytes"),
        "{text}"
    );
}
