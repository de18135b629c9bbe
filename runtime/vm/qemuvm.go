package vm

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/containerd/log"
	"github.com/containerd/ttrpc"
	"github.com/mdlayher/vsock"

	"github.com/raksh-project/raksh/internal/transport"
	"github.com/raksh-project/raksh/runtime/vm/qemu"
)

// QEMUOptions configure a QEMU-backed Instance.
type QEMUOptions struct {
	// Config is the VM; its Accel may be "auto" (see AccelCache).
	Config qemu.Config
	// Dir is the VM's state directory (sockets, console log). Shutdown
	// removes it unless KeepDir is set.
	Dir string
	// KeepDir keeps Dir, with the guest console log, after Shutdown (the
	// runtime's debug setting); its sockets are removed either way.
	KeepDir bool
	// BootTimeout bounds boot until the agent's handshake.
	BootTimeout time.Duration
	// KVMProbeTimeout bounds the first KVM boot when Accel is "auto"; a VM
	// whose agent has not answered by then is restarted under TCG and the
	// result is remembered in AccelCache.
	KVMProbeTimeout time.Duration
	// AccelCache is the file remembering the probe's result.
	AccelCache string
	// VirtioFSD, if set, starts a virtiofsd sharing SharedDir(Dir) with
	// the guest before each QEMU and ends it with QEMU; Shutdown unmounts
	// whatever was bound into the share before removing Dir.
	VirtioFSD *VirtioFSD
}

// AccelAuto picks KVM when a probe boot proves it works, else TCG.
const AccelAuto = "auto"

type qemuVM struct {
	opts QEMUOptions

	mu   sync.Mutex
	proc *qemu.Process
	fsd  *virtiofsd
	// stopping is set once the shim stops the VM.
	stopping bool
	sess     transport.Session
	client   *ttrpc.Client
	done     chan struct{}
	once     sync.Once
	// roSlots places the read-only disks hot-plugged (disks.go).
	roSlots roSlots
}

// NewQEMU returns an Instance that boots opts.Config with QEMU.
func NewQEMU(opts QEMUOptions) Instance {
	if opts.BootTimeout == 0 {
		opts.BootTimeout = 2 * time.Minute
	}
	if opts.KVMProbeTimeout == 0 {
		opts.KVMProbeTimeout = 15 * time.Second
	}
	return &qemuVM{opts: opts, done: make(chan struct{})}
}

// ProbeAccel returns the accelerator to use for "auto": a cached result,
// or "" when a probe boot is needed.
func ProbeAccel(cache string) string {
	if _, err := os.Stat("/dev/kvm"); err != nil {
		return qemu.AccelTCG
	}
	if cache == "" {
		return ""
	}
	b, err := os.ReadFile(cache)
	if err != nil {
		return ""
	}
	switch a := strings.TrimSpace(string(b)); a {
	case qemu.AccelKVM, qemu.AccelTCG:
		return a
	}
	return ""
}

func (v *qemuVM) Start(ctx context.Context) error {
	cfg := v.opts.Config
	// QEMU holds its disks once started (a probe boot's fallback restarts
	// it within Start); the shim's copies go, so a disk file without a
	// name lives exactly as long as QEMU.
	defer func() {
		for _, d := range cfg.Disks {
			d.File.Close()
		}
	}()
	if err := os.MkdirAll(v.opts.Dir, 0o700); err != nil {
		return err
	}
	if cfg.VsockCID == 0 {
		cfg.AgentSocket = filepath.Join(v.opts.Dir, "agent.sock")
	}
	cfg.QMPSocket = filepath.Join(v.opts.Dir, "qmp.sock")
	cfg.PidFile = filepath.Join(v.opts.Dir, "qemu.pid")
	if cfg.ConsoleLog == "" {
		cfg.ConsoleLog = filepath.Join(v.opts.Dir, "console.log")
	}
	if fs := v.opts.VirtioFSD; fs != nil {
		if err := os.MkdirAll(SharedDir(v.opts.Dir), 0o700); err != nil {
			return err
		}
		cfg.VirtioFS = &qemu.VirtioFS{Socket: filepath.Join(v.opts.Dir, virtioFSDSocket), Tag: fs.Tag}
	}
	probing := false
	if cfg.Accel == AccelAuto {
		cfg.Accel = ProbeAccel(v.opts.AccelCache)
		if cfg.Accel == "" {
			cfg.Accel, probing = qemu.AccelKVM, true
		}
	}
	start := time.Now()
	if probing {
		err := v.boot(ctx, cfg, v.opts.KVMProbeTimeout)
		if err == nil {
			v.remember(qemu.AccelKVM)
			log.G(ctx).WithField("elapsed", time.Since(start)).Info("kvm probe boot succeeded; using kvm")
			return nil
		}
		log.G(ctx).WithError(err).Warn("kvm probe boot failed; falling back to tcg")
		v.stopProcess(ctx)
		v.mu.Lock()
		v.stopping = false
		v.mu.Unlock()
		v.remember(qemu.AccelTCG)
		cfg.Accel = qemu.AccelTCG
		start = time.Now()
	}
	if err := v.boot(ctx, cfg, v.opts.BootTimeout); err != nil {
		v.stopProcess(ctx)
		return err
	}
	log.G(ctx).WithField("accel", cfg.Accel).WithField("elapsed", time.Since(start)).Info("vm booted, agent connected")
	return nil
}

func (v *qemuVM) remember(accel string) {
	if v.opts.AccelCache == "" {
		return
	}
	os.MkdirAll(filepath.Dir(v.opts.AccelCache), 0o755)
	os.WriteFile(v.opts.AccelCache, []byte(accel+"\n"), 0o644)
}

func (v *qemuVM) boot(ctx context.Context, cfg qemu.Config, timeout time.Duration) error {
	os.Remove(cfg.AgentSocket)
	os.Remove(cfg.QMPSocket)
	os.Remove(cfg.ConsoleLog)
	cfg.NICs = withVhost(cfg.NICs, cfg.Accel)
	if cfg.VirtioFS != nil {
		// One virtiofsd per QEMU: it serves one connection.
		fsd, err := startVirtioFSD(v.opts.VirtioFSD.Path, SharedDir(v.opts.Dir), cfg.VirtioFS.Socket, 30*time.Second)
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(v.opts.Dir, VirtioFSDPidFile), []byte(strconv.Itoa(fsd.cmd.Process.Pid)+"\n"), 0o600); err != nil {
			fsd.kill()
			return err
		}
		v.mu.Lock()
		v.fsd = fsd
		v.mu.Unlock()
		go func() {
			<-fsd.done
			v.mu.Lock()
			current := v.fsd == fsd
			v.mu.Unlock()
			if current && !v.isStopping() {
				log.G(ctx).WithField("output", fsd.out.String()).Warn("virtiofsd exited")
			}
		}()
	}
	proc, err := qemu.Start(cfg)
	if err != nil {
		return err
	}
	v.mu.Lock()
	v.proc = proc
	v.mu.Unlock()

	bctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var conn net.Conn
	for conn == nil {
		c, err := dialAgent(cfg)
		if err == nil {
			conn = c
			break
		}
		select {
		case <-proc.Done():
			return fmt.Errorf("vm failed to start: %w", proc.ExitError())
		case <-bctx.Done():
			return fmt.Errorf("vm agent socket did not appear within %s", timeout)
		case <-time.After(10 * time.Millisecond):
		}
	}
	go func() {
		select {
		case <-proc.Done():
			conn.Close() // unblocks the handshake
		case <-bctx.Done():
		}
	}()
	sess, err := transport.Client(bctx, conn)
	if err != nil {
		conn.Close()
		select {
		case <-proc.Done():
			return fmt.Errorf("vm exited before its agent answered: %w", proc.ExitError())
		case <-time.After(500 * time.Millisecond): // a reset connection usually means QEMU is exiting
		}
		if errors.Is(bctx.Err(), context.DeadlineExceeded) {
			where := cfg.ConsoleLog
			if !v.opts.KeepDir {
				where += ", kept with debug = true in the runtime config"
			}
			return fmt.Errorf("agent did not answer within %s (accel %s; see %s): %w", timeout, cfg.Accel, where, err)
		}
		return fmt.Errorf("agent handshake: %w", err)
	}
	ctrl, err := sess.Open(ctx, transport.ControlStream)
	if err != nil {
		sess.Close()
		return err
	}
	v.mu.Lock()
	v.sess = sess
	v.client = ttrpc.NewClient(ctrl)
	v.mu.Unlock()
	go func() {
		select {
		case <-proc.Done():
			// Why the VM ended, unless the shim ended it.
			if !v.isStopping() {
				log.G(ctx).WithError(proc.ExitError()).Warn("vm exited")
			}
		case <-sess.Done():
		}
		v.once.Do(func() { close(v.done) })
	}()
	return nil
}

// withVhost returns nics with the vhost-net backend asked for when the VM
// runs under KVM and /dev/vhost-net opens (never under TCG).
func withVhost(nics []qemu.NIC, accel string) []qemu.NIC {
	if len(nics) == 0 {
		return nics
	}
	vhost := false
	if accel == qemu.AccelKVM {
		if f, err := os.OpenFile("/dev/vhost-net", os.O_RDWR, 0); err == nil {
			f.Close()
			vhost = true
		}
	}
	out := make([]qemu.NIC, len(nics))
	for i, n := range nics {
		n.Vhost = vhost
		out[i] = n
	}
	return out
}

// VsockPort is the AF_VSOCK port the agent listens on.
const VsockPort = 1024

// dialAgent connects to the agent's transport: the virtio-serial port's
// host socket, or the guest's vsock port.
func dialAgent(cfg qemu.Config) (net.Conn, error) {
	if cfg.VsockCID != 0 {
		return vsock.Dial(cfg.VsockCID, VsockPort, nil)
	}
	return net.Dial("unix", cfg.AgentSocket)
}

// HasVhostVsock reports whether the host can give VMs AF_VSOCK.
func HasVhostVsock() bool {
	_, err := os.Stat("/dev/vhost-vsock")
	return err == nil
}

func (v *qemuVM) Client() *ttrpc.Client {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.client
}

func (v *qemuVM) StartStream(ctx context.Context, name string) (net.Conn, error) {
	v.mu.Lock()
	sess := v.sess
	v.mu.Unlock()
	if sess == nil {
		return nil, errors.New("vm is not running")
	}
	return sess.Open(ctx, name)
}

func (v *qemuVM) AcceptStream() (string, net.Conn, error) {
	v.mu.Lock()
	sess := v.sess
	v.mu.Unlock()
	if sess == nil {
		return "", nil, errors.New("vm is not running")
	}
	return sess.Accept()
}

func (v *qemuVM) stopProcess(ctx context.Context) {
	v.mu.Lock()
	proc, sess, client, fsd := v.proc, v.sess, v.client, v.fsd
	v.sess, v.client, v.fsd = nil, nil, nil
	v.stopping = true
	v.mu.Unlock()
	defer fsd.kill()
	if client != nil {
		client.Close()
	}
	if sess != nil {
		sess.Close()
	}
	if proc != nil {
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		proc.Stop(sctx)
	}
}

func (v *qemuVM) Shutdown(ctx context.Context) error {
	v.stopProcess(ctx)
	v.once.Do(func() { close(v.done) })
	if v.opts.VirtioFSD != nil {
		// Before anything under Dir is removed: the share holds node paths.
		if err := CleanupShared(SharedDir(v.opts.Dir)); err != nil {
			return err
		}
	}
	if v.opts.KeepDir {
		os.Remove(filepath.Join(v.opts.Dir, "agent.sock"))
		os.Remove(filepath.Join(v.opts.Dir, "qmp.sock"))
		return nil
	}
	if err := os.RemoveAll(v.opts.Dir); err != nil {
		return fmt.Errorf("remove the VM's state directory: %w", err)
	}
	return nil
}

func (v *qemuVM) Done() <-chan struct{} { return v.done }

func (v *qemuVM) Pid() int {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.proc == nil {
		return 0
	}
	return v.proc.Pid()
}

func (v *qemuVM) isStopping() bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.stopping
}
