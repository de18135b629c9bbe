package agent

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"time"

	"github.com/containerd/cgroups/v3/cgroup2"
	"github.com/containerd/containerd/v2/core/events"
	"github.com/containerd/containerd/v2/pkg/oom"
	oomv2 "github.com/containerd/containerd/v2/pkg/oom/v2"
	"github.com/containerd/log"
	"golang.org/x/sys/unix"
)

// ModulesOrder is the file in the initrd listing kernel modules, one path
// per line, in the order they must be loaded.
const ModulesOrder = "/lib/modules/load.order"

// CgroupParent is the guest cgroup holding every container.
const CgroupParent = "/raksh"

// SetupSystem mounts the guest's pseudo filesystems, loads the initrd's
// kernel modules and enables cgroup controllers. It is run by PID 1.
func SetupSystem(ctx context.Context) error {
	mounts := []struct {
		src, target, fstype string
		flags               uintptr
		data                string
	}{
		{"proc", "/proc", "proc", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, ""},
		{"sysfs", "/sys", "sysfs", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, ""},
		{"devtmpfs", "/dev", "devtmpfs", unix.MS_NOSUID, "mode=0755"},
		{"devpts", "/dev/pts", "devpts", unix.MS_NOSUID | unix.MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620"},
		{"tmpfs", "/dev/shm", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=1777"},
		{"tmpfs", "/run", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=0755"},
		{"tmpfs", "/tmp", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=1777"},
		{"cgroup2", "/sys/fs/cgroup", "cgroup2", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, ""},
	}
	for _, m := range mounts {
		if err := os.MkdirAll(m.target, 0o755); err != nil {
			return err
		}
		if err := unix.Mount(m.src, m.target, m.fstype, m.flags, m.data); err != nil && !errors.Is(err, unix.EBUSY) {
			return fmt.Errorf("mount %s on %s: %w", m.fstype, m.target, err)
		}
	}
	os.Symlink("/proc/self/fd", "/dev/fd")
	os.Remove("/dev/ptmx")
	os.Symlink("pts/ptmx", "/dev/ptmx")
	if err := LoadModules(ctx, ModulesOrder); err != nil {
		return err
	}
	for _, c := range []string{"cpu", "cpuset", "io", "memory", "pids"} {
		if err := os.WriteFile("/sys/fs/cgroup/cgroup.subtree_control", []byte("+"+c), 0); err != nil {
			log.G(ctx).WithError(err).WithField("controller", c).Debug("cgroup controller not enabled")
		}
	}
	if err := os.MkdirAll(filepath.Join("/sys/fs/cgroup", CgroupParent), 0o755); err != nil {
		return err
	}
	os.WriteFile(filepath.Join("/sys/fs/cgroup", CgroupParent, "cgroup.subtree_control"), []byte("+cpu +memory +pids +io"), 0)
	return unix.Sethostname([]byte("raksh"))
}

// LoadModules loads the modules listed in the file at order.
func LoadModules(ctx context.Context, order string) error {
	f, err := os.Open(order)
	if err != nil {
		if os.IsNotExist(err) {
			return nil
		}
		return err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		path := strings.TrimSpace(sc.Text())
		if path == "" || strings.HasPrefix(path, "#") {
			continue
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return fmt.Errorf("read module: %w", err)
		}
		if err := unix.InitModule(b, ""); err != nil && !errors.Is(err, unix.EEXIST) {
			if errors.Is(err, unix.ENODEV) {
				// The module's hardware is absent (aesni_intel on a CPU
				// without AES-NI): the kernel's generic code serves.
				log.G(ctx).WithField("module", filepath.Base(path)).Info("kernel module not loaded: no such hardware")
				continue
			}
			return fmt.Errorf("load module %s: %w", filepath.Base(path), err)
		}
	}
	return sc.Err()
}

// FindPort returns the device of the virtio-serial port called name,
// waiting for the driver to create it.
func FindPort(ctx context.Context, name string, timeout time.Duration) (string, error) {
	deadline := time.Now().Add(timeout)
	for {
		ports, _ := filepath.Glob("/sys/class/virtio-ports/*/name")
		for _, p := range ports {
			b, err := os.ReadFile(p)
			if err == nil && strings.TrimSpace(string(b)) == name {
				dev := "/dev/" + filepath.Base(filepath.Dir(p))
				if _, err := os.Stat(dev); err == nil {
					return dev, nil
				}
			}
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("virtio-serial port %q not found after %s", name, timeout)
		}
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// SerialPort is a virtio-serial port whose reads return EOF while the host
// side is not connected; it waits for the host instead.
//
// The port cannot be waited on with poll(2): while the host is not connected
// the virtio console driver reports POLLHUP at once (port_fops_poll) and a
// read returns 0 without blocking, even on a blocking descriptor
// (port_fops_read). What the driver does signal is the host connecting: it
// sends SIGIO to the owner of a port opened with O_ASYNC
// (send_sigio_to_port). So a read that finds no host waits for SIGIO.
type SerialPort struct {
	f     *os.File
	sigio chan os.Signal
}

// hostWaitFallback bounds a wait for the host's SIGIO, should the signal be
// lost (a SIGIO is not queued twice): the read is then retried.
const hostWaitFallback = time.Second

// OpenSerialPort opens the port device.
func OpenSerialPort(dev string) (*SerialPort, error) {
	f, err := os.OpenFile(dev, os.O_RDWR, 0)
	if err != nil {
		return nil, err
	}
	p := &SerialPort{f: f, sigio: make(chan os.Signal, 1)}
	signal.Notify(p.sigio, unix.SIGIO)
	if err := setAsync(f); err != nil {
		signal.Stop(p.sigio)
		f.Close()
		return nil, fmt.Errorf("serial port %s: ask for SIGIO: %w", dev, err)
	}
	return p, nil
}

// setAsync makes the kernel send SIGIO to this process for f.
func setAsync(f *os.File) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	err = rc.Control(func(fd uintptr) {
		if _, serr = unix.FcntlInt(fd, unix.F_SETOWN, os.Getpid()); serr != nil {
			return
		}
		var fl int
		if fl, serr = unix.FcntlInt(fd, unix.F_GETFL, 0); serr != nil {
			return
		}
		_, serr = unix.FcntlInt(fd, unix.F_SETFL, fl|unix.O_ASYNC)
	})
	if err != nil {
		return err
	}
	return serr
}

// Read implements io.Reader, treating EOF as "host not connected yet".
func (p *SerialPort) Read(b []byte) (int, error) {
	for {
		n, err := p.f.Read(b)
		if n > 0 || (err != nil && err != io.EOF) {
			return n, err
		}
		t := time.NewTimer(hostWaitFallback)
		select {
		case <-p.sigio:
		case <-t.C:
			log.L.Debug("serial port: no SIGIO from the host connecting; reading again")
		}
		t.Stop()
	}
}

// Write implements io.Writer.
func (p *SerialPort) Write(b []byte) (int, error) { return p.f.Write(b) }

// Close implements io.Closer.
func (p *SerialPort) Close() error {
	signal.Stop(p.sigio)
	return p.f.Close()
}

// CgroupStats returns the cgroup v2 metrics of a container in the guest.
func CgroupStats(id string) (any, error) {
	m, err := cgroup2.Load(filepath.Join(CgroupParent, id))
	if err != nil {
		return nil, err
	}
	return m.Stat()
}

// WatchOOM publishes an "oom" event each time the kernel OOM-kills a
// process of container id, with containerd's cgroup v2 OOM watcher.
func (s *Service) WatchOOM(ctx context.Context, id string) {
	m, err := cgroup2.Load(filepath.Join(CgroupParent, id))
	if err == nil {
		err = s.oomWatcher(ctx).Add(id, m)
	}
	if err != nil {
		log.G(ctx).WithError(err).WithField("id", id).Warn("cannot watch cgroup for OOM")
	}
}

// oomWatcher returns the agent's OOM watcher, started on first use.
func (s *Service) oomWatcher(ctx context.Context) oom.Watcher {
	s.oomOnce.Do(func() {
		s.oom, _ = oomv2.New(eventPublisher{s}) // never fails
		go s.oom.Run(context.WithoutCancel(ctx))
	})
	return s.oom
}

// eventPublisher publishes on the agent's event stream as containerd's
// events.Publisher.
type eventPublisher struct{ s *Service }

func (p eventPublisher) Publish(ctx context.Context, topic string, event events.Event) error {
	p.s.Publish(ctx, topic, event)
	return nil
}

// PowerOff syncs and powers the VM off.
func PowerOff() {
	unix.Sync()
	unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
}
