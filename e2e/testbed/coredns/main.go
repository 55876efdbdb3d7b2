// Command coredns is CoreDNS with only the plugins the Ferry test bed's
// cluster DNS needs (the upstream binary links every cloud provider's SDK).
// node.sh runs it on the host, serving cluster.local from the API server.
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/ready"
	_ "github.com/coredns/coredns/plugin/template"
)

// The chain order of these plugins, as in CoreDNS's plugin.cfg.
func init() {
	dnsserver.Directives = []string{"bind", "ready", "health", "errors", "log", "cache", "template", "kubernetes"}
}

func main() { coremain.Run() }
