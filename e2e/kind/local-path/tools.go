//go:build tools

// Pins rancher's local-path-provisioner, the dynamic provisioner kind ships
// as its default StorageClass, built here from its Go module for the kind
// node image (e2e/kind/node-image.sh).
package tools

import _ "github.com/rancher/local-path-provisioner"
