//go:build tools

// Package tools pins the helm CLI the Ferry test bed builds from source.
package tools

import (
	_ "helm.sh/helm/v3/cmd/helm"
)
