//go:build tools

// Pins kubeadm at the test bed's Kubernetes version: the kind node image
// (e2e/kind/node-image.sh) runs `kubeadm init`/`join`.
package tools

import _ "k8s.io/kubernetes/cmd/kubeadm"
