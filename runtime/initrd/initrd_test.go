package initrd

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func modulesDir(t *testing.T) string {
	dir, _ := filepath.Abs(filepath.Join("..", "..", "_output", "deps", "kernel", "modules"))
	if _, err := os.Stat(dir); err != nil {
		t.Skip("guest kernel not fetched (make deps)")
	}
	return dir
}

// TestModuleOrder resolves the real Debian cloud kernel's virtio modules:
// dependencies come before the modules that need them.
func TestModuleOrder(t *testing.T) {
	order, err := ModuleOrder(modulesDir(t), DefaultModules)
	if err != nil {
		t.Fatal(err)
	}
	pos := map[string]int{}
	for i, p := range order {
		pos[normalize(strings.TrimSuffix(filepath.Base(p), ".ko"))] = i
	}
	for _, pair := range [][2]string{{"virtio", "virtio_pci"}, {"virtio_ring", "virtio_console"}, {"vsock", "vmw_vsock_virtio_transport"}} {
		a, okA := pos[pair[0]]
		b, okB := pos[pair[1]]
		if !okA || !okB || a > b {
			t.Errorf("%s (%d, %v) must load before %s (%d, %v): %v", pair[0], a, okA, pair[1], b, okB, order)
		}
	}
}

func TestModuleOrderUnknown(t *testing.T) {
	if _, err := ModuleOrder(modulesDir(t), []string{"no_such_module"}); err == nil || !strings.Contains(err.Error(), "no_such_module") {
		t.Fatalf("unknown module: %v", err)
	}
}

func TestBuildRequiresInputs(t *testing.T) {
	if err := Build(Options{Output: filepath.Join(t.TempDir(), "i.img")}); err == nil {
		t.Fatal("built an initrd without an agent")
	}
}
