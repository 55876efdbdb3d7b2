//! The committed CRD YAML must be exactly what the Rust types generate.

use ferry_operator::crdgen;

#[test]
fn committed_crds_match_the_rust_types() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let fresh = crdgen::render().expect("render CRD");
    for rel in crdgen::CRD_PATHS {
        let path = root.join(rel);
        let committed = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        assert!(
            committed == fresh,
            "{rel} is stale against operator/src/crd.rs: run `make crds` and commit the result"
        );
    }
}

#[test]
fn crd_has_the_printer_columns_users_see() {
    let yaml = crdgen::render().expect("render CRD");
    for column in [
        "name: Phase",
        "name: Progress",
        "name: Mismatches",
        "name: Age",
    ] {
        assert!(yaml.contains(column), "CRD lacks printer column `{column}`");
    }
    assert!(yaml.contains("- cmig"), "CRD lacks the short name cmig");
    assert!(
        yaml.contains("status: {}"),
        "CRD lacks the status subresource"
    );
}
