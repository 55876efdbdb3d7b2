//! What the `restricted` Pod Security Standard asks of a container Ferry
//! makes: one definition for the proxy and the Jobs.

use k8s_openapi::api::core::v1::{Capabilities, SeccompProfile, SecurityContext};

/// The runtime's default seccomp profile.
pub fn runtime_default_seccomp() -> SeccompProfile {
    SeccompProfile {
        type_: "RuntimeDefault".to_owned(),
        ..SeccompProfile::default()
    }
}

/// A container that runs as a non-root user, on a read-only root, with no
/// capability and no way to gain one.
pub fn restricted() -> SecurityContext {
    SecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(65532),
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".to_owned()]),
            ..Capabilities::default()
        }),
        seccomp_profile: Some(runtime_default_seccomp()),
        ..SecurityContext::default()
    }
}
