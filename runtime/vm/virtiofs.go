package vm

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"
)

// VirtioFSD configures the pod's virtiofsd (shared_fs = "virtio-fs", see
// docs/volumes.md).
type VirtioFSD struct {
	// Path is the virtiofsd binary.
	Path string
	// Tag is the virtio-fs tag the guest mounts.
	Tag string
}

// SharedDirName is the directory of a VM's state directory that virtiofsd
// shares. The shim attaches each shared volume's node path under an opaque
// id inside virtiofsd's own mount namespace only (runtime/volumes): on the
// node the entries are empty directories or files, so nothing there is a
// mount point of the node's namespace, a node path bound into the share
// never blocks the node's own unmounts or removals, and every such mount
// ends with virtiofsd's namespace, however the pod ends.
const SharedDirName = "shared"

// SharedDir returns the shared directory of the VM whose state directory
// is dir.
func SharedDir(dir string) string { return filepath.Join(dir, SharedDirName) }

// VirtioFSDPidFile is the file in a VM's state directory holding the pid
// of its virtiofsd, whose mount namespace holds the share's mounts.
const VirtioFSDPidFile = "virtiofsd.pid"

// CleanupShared unmounts everything under (and at) a VM's shared
// directory and removes it. It refuses to remove anything while a mount
// is left under it: a bind mount there is a node path, and removing
// through it would delete the node's files.
func CleanupShared(dir string) error {
	if _, err := os.Lstat(dir); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err := mount.UnmountRecursive(dir, unix.MNT_DETACH); err != nil {
		return fmt.Errorf("unmount the virtio-fs share %s: %w", dir, err)
	}
	left, err := mountinfo.GetMounts(mountinfo.PrefixFilter(dir))
	if err != nil {
		return err
	}
	if len(left) > 0 {
		return fmt.Errorf("virtio-fs share %s: %d mounts left under it (first %s): not removed", dir, len(left), left[0].Mountpoint)
	}
	os.Remove(virtioFSDPidFile(filepath.Join(filepath.Dir(dir), virtioFSDSocket)))
	os.Remove(filepath.Join(filepath.Dir(dir), VirtioFSDPidFile))
	return os.RemoveAll(dir)
}

// virtioFSDSocket is virtiofsd's socket in the VM's state directory.
const virtioFSDSocket = "vfs.sock"

// virtioFSDPidFile is the pid (and lock) file Debian's virtiofsd writes
// for a socket and leaves behind: /run/virtiofsd/<socket path with
// slashes as dots>.pid.
func virtioFSDPidFile(socket string) string {
	return filepath.Join("/run/virtiofsd", strings.ReplaceAll(socket, "/", ".")+".pid")
}

// virtiofsd is a running virtiofsd.
type virtiofsd struct {
	socket string
	cmd    *exec.Cmd
	done   chan struct{}
	out    syncBuffer
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.b.Len() > 64<<10 {
		return len(p), nil
	}
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	b := bytes.TrimSpace(s.b.Bytes())
	if len(b) > 2048 {
		b = b[len(b)-2048:]
	}
	return string(b)
}

// startVirtioFSD starts virtiofsd sharing dir on socket and waits for the
// socket. virtiofsd runs sandboxed (its own mount, pid and network
// namespaces, pivoted into dir: nothing outside dir is reachable through
// it), without xattrs, locks or DAX, and serves one QEMU: it exits when
// QEMU goes.
func startVirtioFSD(path, dir, socket string, timeout time.Duration) (*virtiofsd, error) {
	os.Remove(socket)
	v := &virtiofsd{done: make(chan struct{}), socket: socket}
	v.cmd = exec.Command(path, "--socket-path="+socket,
		"-o", "source="+dir, "-o", "sandbox=namespace", "-o", "cache=auto",
		"-o", "no_xattr", "-o", "no_posix_lock", "-o", "no_flock", "-o", "log_level=warn")
	v.cmd.Stdout, v.cmd.Stderr = &v.out, &v.out
	v.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	if err := v.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start virtiofsd %s: %w", path, err)
	}
	go func() {
		v.cmd.Wait()
		close(v.done)
	}()
	deadline := time.After(timeout)
	for {
		if st, err := os.Stat(socket); err == nil && st.Mode()&os.ModeSocket != 0 {
			return v, nil
		}
		select {
		case <-v.done:
			return nil, fmt.Errorf("virtiofsd exited: %s", v.out.String())
		case <-deadline:
			v.kill()
			return nil, fmt.Errorf("virtiofsd socket %s did not appear within %s", socket, timeout)
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// kill ends virtiofsd and its sandboxed child (same process group) and
// waits for it.
func (v *virtiofsd) kill() {
	if v == nil {
		return
	}
	syscall.Kill(-v.cmd.Process.Pid, syscall.SIGKILL)
	select {
	case <-v.done:
	case <-time.After(5 * time.Second):
	}
	os.Remove(virtioFSDPidFile(v.socket))
	os.Remove(v.socket)
}
