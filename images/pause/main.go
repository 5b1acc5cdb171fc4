// Command pause is the test bed's pod sandbox image: it holds a pod's namespaces open
// and does nothing until the runtime stops it. The upstream pause image cannot be pulled
// here (no registry is reachable), so the test bed builds this one (CGO_ENABLED=0, a
// static binary in an otherwise empty image).
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	<-sigs
}
