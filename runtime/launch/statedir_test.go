package launch

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"
)

// TestStateDirLimit: the loader refuses a state_dir under which a VM's
// sockets would not fit the 108-byte unix socket limit with 64-character
// ids, and accepts the longest one that fits; VMDir then always fits.
func TestStateDirLimit(t *testing.T) {
	id := strings.Repeat("f", 64)
	for _, tc := range []struct {
		dir  string
		want string // error substring; "" accepts
	}{
		{"/run/raksh", ""},
		{"/" + strings.Repeat("d", maxStateDir-1), ""},
		{"/" + strings.Repeat("d", maxStateDir), "108-byte unix socket path limit"},
		{"/var/lib/" + strings.Repeat("very-long-state-directory/", 4), "at most 73 fit"},
		{"run/raksh", "not an absolute path"},
	} {
		t.Run(fmt.Sprint(len(tc.dir)), func(t *testing.T) {
			cfg, err := LoadConfig(writeConfig(t, fmt.Sprintf("state_dir = %q\n", tc.dir)))
			if tc.want != "" {
				if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "state_dir") {
					t.Fatalf("state_dir of %d bytes: error %v, want it to name state_dir and %q", len(tc.dir), err, tc.want)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			for _, ns := range []string{"k8s.io", "default", strings.Repeat("n", 76)} {
				if p := filepath.Join(VMDir(cfg.StateDir, ns, id), "agent.sock"); len(p) > MaxSocketPath {
					t.Errorf("%s is %d bytes", p, len(p))
				}
			}
		})
	}
}
