//! The control plane and the data plane agree on which keyspaces are the
//! clusters' own: the operator refuses them in `keyspaces.include`, the
//! proxy never mirrors them and the Jobs never copy them. A keyspace on one
//! list only would be refused but copied, or mirrored but never backfilled.

#[test]
fn operator_and_sidecar_share_the_system_keyspace_list() {
    assert_eq!(
        ferry_sidecar::SYSTEM_KEYSPACES,
        ferry_operator::crd::SYSTEM_KEYSPACES
    );
}
