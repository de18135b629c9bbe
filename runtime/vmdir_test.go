package runtime

import (
	"path/filepath"
	"strings"
	"testing"
)

// TestVMDirSocketsFit: the VM's sockets stay bindable with 64-character
// ids under the longest state directory the config accepts, and distinct
// ids (or namespaces) get distinct dirs.
func TestVMDirSocketsFit(t *testing.T) {
	for _, stateDir := range []string{"/run/raksh", "/tmp/rk-1292683473/raksh", "/" + strings.Repeat("s", 60), "/" + strings.Repeat("s", 72)} {
		cfg := Config{StateDir: stateDir}
		a, b := strings.Repeat("a", 64), strings.Repeat("b", 64)
		da, db := vmDir(cfg, "default", a), vmDir(cfg, "default", b)
		if da == db || da == vmDir(cfg, "k8s.io", a) {
			t.Fatalf("%s: two pods share %s", stateDir, da)
		}
		for _, sock := range []string{"agent.sock", "qmp.sock"} {
			if p := filepath.Join(da, sock); len(p) > maxSocketPath {
				t.Errorf("%s is %d bytes", p, len(p))
			}
		}
		if vmDir(cfg, "default", a) != da {
			t.Fatal("vmDir is not deterministic (cleanup finds the VM by it)")
		}
	}
	if d := vmDir(Config{StateDir: "/run/raksh"}, "k8s.io", "short"); d != "/run/raksh/k8s.io/short" {
		t.Errorf("short ids keep their name: %s", d)
	}
}
