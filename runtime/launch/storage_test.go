package launch

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

func TestPodMemoryMiB(t *testing.T) {
	limit := func(n int64) *specs.Spec {
		return &specs.Spec{Linux: &specs.Linux{Resources: &specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: &n}}}}
	}
	ann := func(v string) *specs.Spec {
		return &specs.Spec{Annotations: map[string]string{AnnotationSandboxMemory: v}}
	}
	cfg := Config{MemoryMiB: 512, MemoryMaxMiB: 4096}
	for _, tc := range []struct {
		name string
		cfg  Config
		spec *specs.Spec
		want uint
		err  bool
	}{
		{"no limit", cfg, &specs.Spec{}, 512, false},
		{"CRI annotation", cfg, ann("1073741824"), 1536, false},
		{"rounded up to a MiB", cfg, ann("1048577"), 514, false},
		{"annotation wins over linux.resources", cfg, func() *specs.Spec { s := limit(2 << 30); s.Annotations = ann("268435456").Annotations; return s }(), 768, false},
		{"linux.resources limit", cfg, limit(256 << 20), 768, false},
		{"unlimited (-1)", cfg, limit(-1), 512, false},
		{"zero annotation", cfg, ann("0"), 512, false},
		{"clamped", cfg, ann("68719476736"), 4096, false},
		{"max 0 keeps memory_mib", Config{MemoryMiB: 512}, ann("1073741824"), 512, false},
		{"malformed", cfg, ann("1Gi"), 0, true},
		{"negative", cfg, ann("-5"), 0, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := PodMemoryMiB(tc.cfg, tc.spec)
			if tc.err {
				if err == nil || !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.Contains(err.Error(), AnnotationSandboxMemory) {
					t.Fatalf("err %v, want an invalid-argument error naming the annotation", err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("PodMemoryMiB = %d, %v; want %d", got, err, tc.want)
			}
		})
	}
}

func TestScratchDiskMiB(t *testing.T) {
	cfg := Config{ScratchDiskMiB: 1024, ScratchDiskMaxMiB: 4096}
	for _, tc := range []struct {
		name string
		ann  map[string]string
		want uint
		err  string
	}{
		{"config default", nil, 1024, ""},
		{"annotation", map[string]string{AnnotationScratchDisk: "2048"}, 2048, ""},
		{"annotation at the cap", map[string]string{AnnotationScratchDisk: "4096"}, 4096, ""},
		{"annotation turns it off", map[string]string{AnnotationScratchDisk: "0"}, 0, ""},
		{"above the cap", map[string]string{AnnotationScratchDisk: "4097"}, 0, "scratch_disk_max_mib"},
		{"below the minimum", map[string]string{AnnotationScratchDisk: "10"}, 0, "minimum"},
		{"not a number", map[string]string{AnnotationScratchDisk: "2G"}, 0, "not a size"},
		{"negative", map[string]string{AnnotationScratchDisk: "-1"}, 0, "not a size"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ScratchDiskMiB(cfg, tc.ann)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) || !strings.Contains(err.Error(), AnnotationScratchDisk) || !errors.Is(err, errdefs.ErrInvalidArgument) {
					t.Fatalf("err %v, want one naming %q and the annotation", err, tc.err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("ScratchDiskMiB = %d, %v; want %d", got, err, tc.want)
			}
		})
	}
}

func TestStorageConfig(t *testing.T) {
	for _, tc := range []struct{ toml, err string }{
		{"scratch_disk_mib = 2048\n", ""},
		{"memory_mib = 1024\nmemory_max_mib = 512\n", "memory_max_mib"},
		{"scratch_disk_mib = 100000\n", "scratch_disk_max_mib"},
		{"scratch_disk_mib = 10\n", "minimum"},
		{"scratch_disk_mib = 1024\nscratch_dir = \"relative\"\n", "scratch_dir"},
	} {
		p := filepath.Join(t.TempDir(), "runtime.toml")
		os.WriteFile(p, []byte(tc.toml), 0o644)
		_, err := LoadConfig(p)
		if tc.err == "" && err != nil {
			t.Errorf("%q: %v", tc.toml, err)
		}
		if tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)) {
			t.Errorf("%q: err %v, want one naming %s", tc.toml, err, tc.err)
		}
	}
	if d := DefaultConfig(); d.ScratchDiskMiB != 0 || d.MemoryMaxMiB < d.MemoryMiB {
		t.Errorf("defaults: scratch %d MiB, memory %d..%d MiB", d.ScratchDiskMiB, d.MemoryMiB, d.MemoryMaxMiB)
	}
}
