// Command pause is the critest sandbox image's process (the role of
// registry.k8s.io/pause): it sleeps until SIGTERM or SIGINT and, as PID 1 of
// a pod's shared PID namespace, reaps orphans. Its command name is "pause":
// critest looks for "sleep" processes in pods sharing that namespace.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	sig := make(chan os.Signal, 4)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT, syscall.SIGCHLD)
	for s := range sig {
		if s != syscall.SIGCHLD {
			os.Exit(0)
		}
		for {
			pid, err := syscall.Wait4(-1, nil, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}
