//go:build integration

package qemu

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestQMPStatusAndStop starts a real QEMU, asks it for its status over QMP
// and stops it with QMP quit.
func TestQMPStatusAndStop(t *testing.T) {
	kernel, initrd := os.Getenv("RAKSH_KERNEL"), os.Getenv("RAKSH_INITRD")
	if kernel == "" || initrd == "" {
		t.Skip("RAKSH_KERNEL and RAKSH_INITRD are not set (run through make test)")
	}
	dir := t.TempDir()
	cfg := Config{Path: "qemu-system-x86_64", Name: "raksh-qmp", Accel: AccelTCG, MemoryMiB: 128, VCPUs: 1,
		Kernel: kernel, Initrd: initrd, KernelParams: []string{"console=ttyS0", "quiet"},
		AgentSocket: filepath.Join(dir, "a.sock"), QMPSocket: filepath.Join(dir, "q.sock"), PidFile: filepath.Join(dir, "q.pid")}
	p, err := Start(cfg)
	if err != nil {
		t.Fatal(err)
	}
	var status string
	deadline := time.Now().Add(20 * time.Second)
	for {
		status, err = p.Status(time.Second)
		if err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil || status != "running" {
		t.Fatalf("status %q, %v", status, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := p.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case <-p.Done():
	default:
		t.Fatal("QEMU still running after Stop")
	}
	if _, err := os.Stat(cfg.PidFile); err == nil {
		t.Error("pid file left behind")
	}
}
