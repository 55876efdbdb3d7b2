//go:build tools

// Pins kind: `make kind-e2e` builds it from its Go module (e2e/kind/setup.sh).
package tools

import _ "sigs.k8s.io/kind"
