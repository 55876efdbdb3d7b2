//go:build tools

// Package tools pins the etcd server the Ferry test bed builds from source.
// etcd cannot be `go install`ed (its go.mod has replace directives); building
// it inside this module uses the published, same-version modules instead.
package tools

import (
	_ "go.etcd.io/etcd/etcdctl/v3"
	_ "go.etcd.io/etcd/server/v3"
)
