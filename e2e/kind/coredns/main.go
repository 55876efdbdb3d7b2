// Command coredns is CoreDNS with the plugins kubeadm's Corefile names
// (errors, health, ready, kubernetes, prometheus, forward, cache, loop,
// reload, loadbalance) plus log, for the kind node image's
// registry.k8s.io/coredns/coredns image (e2e/kind/node-image.sh). The test
// bed's CoreDNS (e2e/testbed/coredns) has a smaller set and its own Corefile;
// the upstream binary links every cloud provider's SDK.
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/forward"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/loadbalance"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/loop"
	_ "github.com/coredns/coredns/plugin/metrics"
	_ "github.com/coredns/coredns/plugin/ready"
	_ "github.com/coredns/coredns/plugin/reload"
)

// The chain order of these plugins, as in CoreDNS's plugin.cfg.
func init() {
	dnsserver.Directives = []string{"reload", "bind", "ready", "health", "prometheus", "errors",
		"log", "loadbalance", "cache", "kubernetes", "loop", "forward"}
}

func main() { coremain.Run() }
