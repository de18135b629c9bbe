package main

import (
	"os"
	"os/exec"
	"strings"
	"testing"
)

// TestGuestImportsNoHostPackages keeps the guest out of host code: the
// agent must not link the snapshotter, the shim or the NRI plugin (what
// crosses from them is the agent API, api/agent/v1).
func TestGuestImportsNoHostPackages(t *testing.T) {
	const module = "github.com/raksh-project/raksh/"
	cmd := exec.Command("go", "list", "-deps", ".")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux") // as hack/build-guest.sh builds it
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list -deps ./cmd/raksh-agent: %v", err)
	}
	n := 0
	for _, pkg := range strings.Fields(string(out)) {
		rel, ok := strings.CutPrefix(pkg, module)
		if !ok {
			continue
		}
		n++
		for _, host := range []string{"snapshotter", "runtime", "nri"} {
			if rel == host || strings.HasPrefix(rel, host+"/") {
				t.Errorf("the guest agent imports host package %s", pkg)
			}
		}
	}
	if n == 0 {
		t.Fatalf("go list found no package of %s: %q", module, out)
	}
}
