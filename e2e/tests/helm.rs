//! The chart passes `helm lint` and renders with `helm template`, using the
//! helm built by the test bed.

use std::process::Command;

use ferry_e2e::testbed;

fn helm(args: &[&str]) -> (bool, String) {
    let helm = testbed::cache_dir().join("bin/helm");
    if !helm.exists() {
        let status = Command::new("bash")
            .arg(testbed::repo_root().join("e2e/testbed/build-tools.sh"))
            .arg("helm")
            .status()
            .expect("build helm");
        assert!(status.success(), "building helm failed");
    }
    let out = Command::new(&helm)
        .args(args)
        .current_dir(testbed::repo_root())
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", helm.display()));
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

#[test]
fn chart_lints_clean() {
    let (ok, out) = helm(&["lint", "--strict", "charts/ferry"]);
    assert!(ok, "helm lint failed:\n{out}");
}

#[test]
fn chart_renders_the_operator_and_its_rbac() {
    let (ok, out) = helm(&[
        "template",
        "ferry",
        "charts/ferry",
        "--namespace",
        "ferry-system",
        "--include-crds",
    ]);
    assert!(ok, "helm template failed:\n{out}");
    for kind in [
        "kind: Deployment",
        "kind: ClusterRole",
        "kind: ServiceAccount",
        "kind: CustomResourceDefinition",
    ] {
        assert!(out.contains(kind), "rendered chart lacks `{kind}`");
    }
    // Values reach the manifests.
    let (ok, out) = helm(&[
        "template",
        "ferry",
        "charts/ferry",
        "--set",
        "image.tag=v9.9.9",
        "--set",
        "replicaCount=2",
    ]);
    assert!(ok, "helm template with values failed:\n{out}");
    assert!(
        out.contains("ferry-operator:v9.9.9"),
        "image.tag not applied"
    );
    assert!(out.contains("replicas: 2"), "replicaCount not applied");
}
