//go:build tools

// Package tools pins the etcd server this wrapper module builds. It is its own
// module so that etcd and Kubernetes each keep the dependency versions they were
// released with.
package tools

import _ "go.etcd.io/etcd/server/v3"
