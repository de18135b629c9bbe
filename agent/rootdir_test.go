package agent

import (
	"os"
	"path/filepath"
	"testing"
)

// TestMakeRootDir: the container's "/" is 0755 whatever the umask, the
// bundle the agent's alone.
func TestMakeRootDir(t *testing.T) {
	bundle := filepath.Join(t.TempDir(), "c1")
	root := filepath.Join(bundle, "rootfs")
	if err := makeRootDir(bundle, root); err != nil {
		t.Fatal(err)
	}
	for p, want := range map[string]os.FileMode{bundle: 0o700, root: 0o755} {
		st, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != want {
			t.Errorf("%s: mode %o, want %o", p, st.Mode().Perm(), want)
		}
	}
}
