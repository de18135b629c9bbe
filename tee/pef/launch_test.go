package pef

import (
	"bytes"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/json"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containerd/errdefs"

	"github.com/raksh-project/raksh/tee"
)

var update = flag.Bool("update", false, "rewrite golden files")

func golden(t *testing.T, name string, got tee.LaunchArgs) {
	t.Helper()
	b, err := json.MarshalIndent(got, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	b = append(b, '\n')
	path := filepath.Join("testdata", "launch", name+".golden")
	if *update {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update)", err)
	}
	if !bytes.Equal(b, want) {
		t.Errorf("launch args differ from %s:\ngot:\n%s\nwant:\n%s", path, b, want)
	}
}

func TestLaunchArgsGolden(t *testing.T) {
	s256 := sha256.Sum256([]byte("raksh init data v1"))
	s384 := sha512.Sum384([]byte("raksh init data v1"))
	for name, d := range map[string][]byte{"sha256": s256[:], "sha384": s384[:]} {
		t.Run(name, func(t *testing.T) {
			l, err := NewLauncher(LaunchConfig{})
			if err != nil {
				t.Fatal(err)
			}
			args, err := l.LaunchArgs(tee.LaunchParams{InitDataDigest: d, Firmware: "ignored"})
			if err != nil {
				t.Fatal(err)
			}
			golden(t, name, args)
		})
	}
}

func TestLaunchArgsRefused(t *testing.T) {
	l, _ := NewLauncher(LaunchConfig{})
	if _, err := l.LaunchArgs(tee.LaunchParams{}); !errdefs.IsInvalidArgument(err) {
		t.Fatalf("no init data: %v", err)
	}
	if _, err := NewLauncher(LaunchConfig{ObjectID: "x,y"}); !errdefs.IsInvalidArgument(err) {
		t.Fatalf("bad id: %v", err)
	}
}

// TestLaunchToReleaseInitData follows the init-data digest from the
// launcher's kernel parameters into the sealed command line: the
// (simulated) ultravisor releases the keys only to a VM booted with the
// init data they were sealed for.
func TestLaunchToReleaseInitData(t *testing.T) {
	fx := newFixture(t)
	pk, _ := platformKeys(t)
	l, _ := NewLauncher(LaunchConfig{})
	cmdline := func(digest []byte) string {
		args, err := l.LaunchArgs(tee.LaunchParams{InitDataDigest: digest})
		if err != nil {
			t.Fatal(err)
		}
		return strings.Join(append([]string{"console=hvc0"}, args.KernelParams...), " ")
	}
	mine, other := sha256.Sum256([]byte("mine")), sha256.Sum256([]byte("other"))
	sealed, err := SealInitrd(&pk.PublicKey, fx.initramfs, SealInitrdOptions{
		Kernel: fx.kernel, Cmdline: cmdline(mine[:]), Files: map[string][]byte{"workload.key": fx.workloadKey},
	})
	if err != nil {
		t.Fatal(err)
	}
	uv := NewSimUltravisor(pk)
	if _, err := uv.EnterSecureMode(BootParams{Kernel: fx.kernel, Initrd: sealed, Cmdline: cmdline(mine[:])}); err != nil {
		t.Fatalf("boot with the sealed init data: %v", err)
	}
	if _, err := uv.EnterSecureMode(BootParams{Kernel: fx.kernel, Initrd: sealed, Cmdline: cmdline(other[:])}); !errors.Is(err, ErrIntegrity) {
		t.Fatalf("boot with other init data: %v, want ErrIntegrity", err)
	}
}
