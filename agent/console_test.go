package agent

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestConsoleSocketPath: with CRI's 64-character container and exec ids a
// console socket path stays bindable and unique.
func TestConsoleSocketPath(t *testing.T) {
	for _, root := range []string{"/run/raksh", "/" + strings.Repeat("d", 150)} {
		s := &Service{root: root}
		seen := map[string]bool{}
		for range 100 {
			p := s.consoleSocketPath()
			if len(p) > maxSocketPath {
				t.Fatalf("%q is %d bytes, more than a unix socket address holds", p, len(p))
			}
			if seen[p] {
				t.Fatalf("%q handed out twice", p)
			}
			seen[p] = true
		}
	}
	// And a socket actually binds there.
	s := &Service{root: t.TempDir()}
	sock, err := newConsoleSocket(s.consoleSocketPath())
	if err != nil {
		t.Fatal(err)
	}
	sock.Close()
}

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
