//go:build integration

package vm

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	taskAPI "github.com/containerd/containerd/api/runtime/task/v3"

	"github.com/raksh-project/raksh/runtime/vm/qemu"
)

func testConfig(t *testing.T) qemu.Config {
	kernel, initrd := os.Getenv("RAKSH_KERNEL"), os.Getenv("RAKSH_INITRD")
	if kernel == "" || initrd == "" {
		t.Skip("RAKSH_KERNEL and RAKSH_INITRD are not set (run through make test)")
	}
	return qemu.Config{
		Path: "qemu-system-x86_64", Name: "raksh-test", Accel: AccelAuto, MemoryMiB: 256, VCPUs: 1,
		Kernel: kernel, Initrd: initrd, KernelParams: []string{"console=ttyS0", "quiet", "panic=-1"},
	}
}

// TestBootAndConnect boots the real kernel and initrd and talks to the agent.
func TestBootAndConnect(t *testing.T) {
	cfg := testConfig(t)
	dir := t.TempDir()
	v := NewQEMU(QEMUOptions{Config: cfg, Dir: dir, AccelCache: filepath.Join(os.TempDir(), "raksh-accel-test")})
	ctx := context.Background()
	start := time.Now()
	if err := v.Start(ctx); err != nil {
		b, _ := os.ReadFile(filepath.Join(dir, "console.log"))
		t.Fatalf("start: %v\nconsole:\n%s", err, b)
	}
	t.Logf("boot to agent: %s", time.Since(start))
	resp, err := taskAPI.NewTTRPCTaskClient(v.Client()).Connect(ctx, &taskAPI.ConnectRequest{ID: "none"})
	if err != nil {
		t.Fatal(err)
	}
	if resp.ShimPid != 1 {
		t.Fatalf("agent pid %d, want 1 (PID 1 of the guest)", resp.ShimPid)
	}
	pid := v.Pid()
	if err := v.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case <-v.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("vm not done after shutdown")
	}
	if err := syscallKill0(pid); err == nil {
		t.Fatalf("qemu %d still alive after shutdown", pid)
	}
}

// TestMissingKernel fails with an error naming the problem.
func TestMissingKernel(t *testing.T) {
	cfg := testConfig(t)
	cfg.Kernel = "/nonexistent/vmlinuz"
	cfg.Accel = qemu.AccelTCG
	v := NewQEMU(QEMUOptions{Config: cfg, Dir: t.TempDir(), BootTimeout: 20 * time.Second})
	err := v.Start(context.Background())
	if err == nil {
		t.Fatal("booted without a kernel")
	}
	t.Logf("error: %v", err)
}

// BenchmarkBootToAgent measures VM start (QEMU launch, kernel boot, agent
// handshake) until the agent answers a ttrpc call, per accelerator that
// works here.
func BenchmarkBootToAgent(b *testing.B) {
	kernel, initrd := os.Getenv("RAKSH_KERNEL"), os.Getenv("RAKSH_INITRD")
	if kernel == "" || initrd == "" {
		b.Skip("RAKSH_KERNEL and RAKSH_INITRD are not set (run through make bench)")
	}
	for _, accel := range []string{qemu.AccelTCG, qemu.AccelKVM} {
		b.Run(accel, func(b *testing.B) {
			if accel == qemu.AccelKVM && ProbeAccel(filepath.Join(os.TempDir(), "raksh-accel-bench")) == qemu.AccelTCG {
				b.Skip("KVM does not boot this kernel here (probe)")
			}
			for i := 0; i < b.N; i++ {
				cfg := qemu.Config{Path: "qemu-system-x86_64", Name: "raksh-bench", Accel: accel, MemoryMiB: 256, VCPUs: 1,
					Kernel: kernel, Initrd: initrd, KernelParams: []string{"console=ttyS0", "quiet", "panic=-1"}}
				v := NewQEMU(QEMUOptions{Config: cfg, Dir: b.TempDir(), BootTimeout: 20 * time.Second})
				ctx := context.Background()
				if err := v.Start(ctx); err != nil {
					if accel == qemu.AccelKVM {
						os.WriteFile(filepath.Join(os.TempDir(), "raksh-accel-bench"), []byte("tcg\n"), 0o644)
						b.Skipf("KVM boot failed: %v", err)
					}
					b.Fatal(err)
				}
				if _, err := taskAPI.NewTTRPCTaskClient(v.Client()).Connect(ctx, &taskAPI.ConnectRequest{}); err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				v.Shutdown(ctx)
				b.StartTimer()
			}
		})
	}
}
