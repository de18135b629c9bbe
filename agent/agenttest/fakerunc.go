// Package agenttest has fakes for testing the agent and the shim without
// root, runc or a VM.
package agenttest

import (
	"bufio"
	"crypto/sha256"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	runc "github.com/containerd/go-runc"

	"github.com/raksh-project/raksh/agent"
)

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

// fakeRunc builds the fake runc (./fakerunc) without the race detector
// whatever the test's flags, so it starts fast. The binary is kept in the
// temporary directory under a name derived from its source, go.sum and the
// Go version: test binaries share it and runs do not pile copies up.
func fakeRunc() (string, error) {
	buildOnce.Do(func() {
		_, file, _, _ := runtime.Caller(0)
		src := filepath.Join(filepath.Dir(file), "fakerunc")
		b, err := os.ReadFile(filepath.Join(src, "main.go"))
		if err != nil {
			buildErr = err
			return
		}
		mod, _ := os.ReadFile(filepath.Join(src, "..", "..", "..", "go.sum"))
		sum := sha256.Sum256(append(append(b, mod...), runtime.Version()...))
		binPath = filepath.Join(os.TempDir(), fmt.Sprintf("raksh-fakerunc-%x", sum[:8]))
		if _, err := os.Stat(binPath); err == nil {
			return
		}
		tmp := fmt.Sprintf("%s.%d", binPath, os.Getpid())
		cmd := exec.Command("go", "build", "-o", tmp, ".")
		cmd.Dir = src
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOFLAGS=")
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("build the fake runc: %w: %s", err, out)
			return
		}
		buildErr = os.Rename(tmp, binPath)
	})
	return binPath, buildErr
}

// NewRuntime returns an agent.Runtime whose runc is a fake (the fakerunc
// command, built on first use): it speaks runc's command line to
// containerd's process package and runs a container's process as a plain
// host process (no isolation) in the rootfs directory. Each process has a
// supervisor that reports its exit, as the agent's reaper would. It needs no
// root, runc or VM. Terminals are not supported.
func NewRuntime(t testing.TB) *agent.Runtime {
	bin, err := fakeRunc()
	if err != nil {
		t.Fatal(err)
	}
	// Short: the exits socket's path must fit a unix socket address.
	dir, err := os.MkdirTemp("", "rkrunc")
	if err != nil {
		t.Fatal(err)
	}
	root := filepath.Join(dir, "state")
	if err := os.Mkdir(root, 0o700); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("unix", filepath.Join(root, "exits.sock"))
	if err != nil {
		t.Fatal(err)
	}
	exits := make(chan runc.Exit, 128)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				var pid, status int
				if _, err := fmt.Fscan(bufio.NewReader(c), &pid, &status); err == nil {
					exits <- runc.Exit{Timestamp: time.Now(), Pid: pid, Status: status}
				}
			}()
		}
	}()
	t.Cleanup(func() {
		l.Close()
		// Leave no process behind: kill the supervisors (so they write
		// no more state), then what they ran.
		for _, pat := range []string{"sups", "pids"} {
			files, _ := filepath.Glob(filepath.Join(root, "*", pat, "*"))
			for _, p := range files {
				if pid, err := strconv.Atoi(filepath.Base(p)); err == nil {
					syscall.Kill(-pid, syscall.SIGKILL)
				}
			}
		}
		os.RemoveAll(dir)
	})
	return &agent.Runtime{Binary: bin, Root: root, Exits: exits}
}
