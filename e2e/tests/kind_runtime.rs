//! The runc wrapper that lets kind's privileged nodes (and the privileged
//! pods inside them) start on a machine whose capability bounding set lacks
//! CAP_SYS_RESOURCE (`e2e/kind/runc-without-sys-resource`, used by
//! `make kind-e2e`). It must drop that one capability from every list of a
//! container's config (create, run) or an exec's process file, keep every
//! other capability and field, leave files without it untouched, and pass
//! the arguments on unchanged. The real runc is replaced by a script that
//! records its arguments.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};

fn wrapper() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("kind/runc-without-sys-resource")
}

/// A scratch folder with a fake runc that writes its arguments to `args`.
fn scratch(name: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("ferry-kind-runtime-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("scratch dir");
    let fake = dir.join("runc");
    fs::write(
        &fake,
        format!(
            "#!/bin/sh\nprintf '%s\\n' \"$@\" > {}/args\n",
            dir.display()
        ),
    )
    .expect("fake runc");
    Command::new("chmod")
        .arg("+x")
        .arg(&fake)
        .status()
        .expect("chmod");
    dir
}

fn run(dir: &Path, args: &[&str]) {
    let status = Command::new(wrapper())
        .args(args)
        .env("FERRY_REAL_RUNC", dir.join("runc"))
        .current_dir(dir)
        .status()
        .expect("run the wrapper");
    assert!(status.success(), "the wrapper failed: {status}");
    let passed = fs::read_to_string(dir.join("args")).expect("the real runc ran");
    let want: Vec<&str> = args.to_vec();
    assert_eq!(
        passed.lines().collect::<Vec<_>>(),
        want,
        "arguments passed on unchanged"
    );
}

const ALL: [&str; 4] = [
    "CAP_CHOWN",
    "CAP_NET_ADMIN",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_ADMIN",
];

fn caps() -> Value {
    json!({"bounding": ALL, "effective": ALL, "permitted": ALL, "inheritable": ALL, "ambient": ["CAP_SYS_RESOURCE"]})
}

fn assert_dropped(caps: &Value) {
    for list in ["bounding", "effective", "permitted", "inheritable"] {
        assert_eq!(
            caps[list],
            json!(["CAP_CHOWN", "CAP_NET_ADMIN", "CAP_SYS_ADMIN"]),
            "{list} keeps every other capability, in order"
        );
    }
    assert_eq!(caps["ambient"], json!([]));
}

#[test]
fn a_privileged_containers_config_loses_only_cap_sys_resource() {
    let dir = scratch("create");
    let bundle = dir.join("bundle");
    fs::create_dir_all(&bundle).expect("bundle");
    let config = json!({"ociVersion": "1.0.2", "process": {"args": ["/sbin/init"], "capabilities": caps()}, "hostname": "node"});
    fs::write(bundle.join("config.json"), config.to_string()).expect("config");
    let bundle_arg = bundle.display().to_string();
    run(
        &dir,
        &[
            "--root",
            "/run/x",
            "--log",
            "/tmp/log.json",
            "create",
            "--bundle",
            &bundle_arg,
            "--pid-file",
            "p",
            "id1",
        ],
    );
    let after: Value =
        serde_json::from_str(&fs::read_to_string(bundle.join("config.json")).expect("read"))
            .expect("json");
    assert_dropped(&after["process"]["capabilities"]);
    assert_eq!(after["process"]["args"], json!(["/sbin/init"]));
    assert_eq!(after["hostname"], json!("node"));
}

#[test]
fn an_exec_process_file_loses_only_cap_sys_resource() {
    let dir = scratch("exec");
    let process = dir.join("process.json");
    fs::write(
        &process,
        json!({"args": ["sh"], "capabilities": caps()}).to_string(),
    )
    .expect("process");
    let process_arg = format!("--process={}", process.display());
    run(
        &dir,
        &["--root", "/run/x", "exec", &process_arg, "--detach", "id1"],
    );
    let after: Value =
        serde_json::from_str(&fs::read_to_string(&process).expect("read")).expect("json");
    assert_dropped(&after["capabilities"]);
}

#[test]
fn a_config_without_the_capability_and_other_commands_are_left_alone() {
    let dir = scratch("other");
    let bundle = dir.join("bundle");
    fs::create_dir_all(&bundle).expect("bundle");
    // Not JSON jq could rewrite: untouched, because it never names the capability.
    let plain = "{\"process\": {\"capabilities\": {\"bounding\": [\"CAP_CHOWN\"]}}}  \n";
    fs::write(bundle.join("config.json"), plain).expect("config");
    let bundle_arg = bundle.display().to_string();
    run(&dir, &["create", "--bundle", &bundle_arg, "id2"]);
    assert_eq!(
        fs::read_to_string(bundle.join("config.json")).expect("read"),
        plain
    );
    // `state` and `delete` carry no capabilities.
    run(&dir, &["--root", "/run/x", "state", "id2"]);
    run(&dir, &["delete", "--force", "id2"]);
}
