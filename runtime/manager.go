package runtime

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	bootapi "github.com/containerd/containerd/api/runtime/bootstrap/v1"
	"github.com/containerd/containerd/api/types"
	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/defaults"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/shim"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/containerd/typeurl/v2"

	"github.com/raksh-project/raksh/agent/scratch"
	"github.com/raksh-project/raksh/internal/version"
	"github.com/raksh-project/raksh/runtime/launch"
	"github.com/raksh-project/raksh/runtime/vm"
	"github.com/raksh-project/raksh/runtime/vm/qemu"
)

// RuntimeName is the containerd runtime type of the Raksh shim.
const RuntimeName = "io.containerd.raksh.v2"

// groupLabels group containers into one shim (and one VM). Order matters.
var groupLabels = []string{
	"io.kubernetes.cri.sandbox-id",
}

// NewManager returns the shim manager of the Raksh runtime.
func NewManager(name string) shim.Shim { return manager{name: name} }

type manager struct{ name string }

func (m manager) Name() string { return m.name }

// Start starts (or, for a container of an existing pod, finds) the shim
// serving the container, grouping the containers of a CRI sandbox into one
// shim and so one VM.
func (m manager) Start(ctx context.Context, opts *bootapi.BootstrapParams) (_ *bootapi.BootstrapResult, retErr error) {
	res := &bootapi.BootstrapResult{Version: 3, Protocol: "ttrpc"}
	id := opts.GetInstanceID()
	grouping := id
	if b, err := os.ReadFile("config.json"); err == nil {
		var spec struct {
			Annotations map[string]string `json:"annotations"`
		}
		if err := json.Unmarshal(b, &spec); err == nil {
			for _, g := range groupLabels {
				if v, ok := spec.Annotations[g]; ok {
					grouping = v
					break
				}
			}
		}
	}
	socketDir := opts.GetSocketDir()
	if socketDir == "" {
		socketDir = filepath.Join(defaults.DefaultStateDir, "s")
	}
	address, err := shim.CreateSocketAddress(ctx, socketDir, opts.GetContainerdGrpcAddress(), grouping, false)
	if err != nil {
		return nil, err
	}
	socket, err := shim.NewSocket(address)
	if err != nil {
		if !shim.SocketEaddrinuse(err) {
			return nil, fmt.Errorf("create shim socket: %w", err)
		}
		if shim.CanConnect(address) {
			res.Address = address
			return res, nil
		}
		if err := shim.RemoveSocket(address); err != nil {
			return nil, fmt.Errorf("remove stale shim socket: %w", err)
		}
		if socket, err = shim.NewSocket(address); err != nil {
			return nil, fmt.Errorf("create shim socket: %w", err)
		}
	}
	defer func() {
		if retErr != nil {
			socket.Close()
			shim.RemoveSocket(address)
		}
	}()
	f, err := socket.File()
	if err != nil {
		return nil, err
	}
	defer f.Close()

	ns, err := namespaces.NamespaceRequired(ctx)
	if err != nil {
		return nil, err
	}
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cwd, err := os.Getwd()
	if err != nil {
		return nil, err
	}
	args := []string{"-namespace", ns, "-id", id, "-address", opts.GetContainerdGrpcAddress()}
	if opts.GetLogLevel() <= bootapi.LogLevel_LOG_LEVEL_DEBUG {
		args = append(args, "-debug")
	}
	cmd := exec.Command(self, args...)
	cmd.Dir = cwd
	cmd.Env = append(os.Environ(), "GOMAXPROCS=4")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.ExtraFiles = append(cmd.ExtraFiles, f)
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	go cmd.Wait()
	if err := shim.AdjustOOMScore(cmd.Process.Pid); err != nil {
		log.G(ctx).WithError(err).Debug("cannot adjust shim OOM score")
	}
	res.Address = address
	return res, nil
}

// Stop cleans up after a shim that is gone: it kills the VM it left
// behind, unmounts the rootfs and removes the VM's state.
func (m manager) Stop(ctx context.Context, id string) (shim.StopStatus, error) {
	cwd, err := os.Getwd()
	if err != nil {
		return shim.StopStatus{}, err
	}
	bundle := filepath.Join(filepath.Dir(cwd), id)
	if err := mount.UnmountRecursive(filepath.Join(bundle, "rootfs"), 0); err != nil {
		log.G(ctx).WithError(err).Warn("failed to clean up rootfs mount")
	}
	ns, _ := namespaces.Namespace(ctx)
	cfg, err := LoadConfig("")
	if err == nil {
		dir := vmDir(cfg, ns, id)
		if b, err := os.ReadFile(filepath.Join(dir, "qemu.pid")); err == nil {
			if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && pid > 0 {
				if comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid)); strings.HasPrefix(string(comm), "qemu") {
					syscall.Kill(pid, syscall.SIGKILL)
				}
			}
		}
		// The virtio-fs share holds bind mounts of node paths: unmounted
		// before anything under dir is removed, and dir kept if one is left.
		shareErr := vm.CleanupShared(vm.SharedDir(dir))
		if shareErr != nil {
			log.G(ctx).WithError(shareErr).WithField("dir", dir).Error("failed to clean up the virtio-fs share; the VM's state directory is kept")
		}
		if cfg.Debug || shareErr != nil {
			// Keep the console log for debugging; the sockets go.
			os.Remove(filepath.Join(dir, "agent.sock"))
			os.Remove(filepath.Join(dir, "qmp.sock"))
		} else if err := os.RemoveAll(dir); err != nil {
			log.G(ctx).WithError(err).WithField("dir", dir).Warn("failed to remove the VM's state directory")
		}
	}
	return shim.StopStatus{ExitedAt: time.Now(), ExitStatus: 128 + int(syscall.SIGKILL)}, nil
}

// Info reports the runtime's name, Raksh's version and what a container
// in the guest supports (guestFeatures), for containerd's runtime
// introspection.
func (m manager) Info(ctx context.Context, optionsR io.Reader) (*types.RuntimeInfo, error) {
	info := &types.RuntimeInfo{
		Name:    m.name,
		Version: &types.RuntimeVersion{Version: version.Version, Revision: version.Revision},
	}
	f, err := guestFeatures()
	if err != nil {
		return nil, err
	}
	if info.Features, err = typeurl.MarshalAnyToProto(f); err != nil {
		return nil, fmt.Errorf("marshal %T: %w", f, err)
	}
	return info, nil
}

// vsockCID picks a guest CID for a new VM: random above the reserved
// range, so VMs of different shims do not collide in practice.
func vsockCID() uint32 {
	var b [4]byte
	rand.Read(b[:])
	return 3 + binary.LittleEndian.Uint32(b[:])%(1<<30)
}

// vmDir is the state directory of the VM of shim id (launch.VMDir).
func vmDir(cfg Config, ns, id string) string { return launch.VMDir(cfg.StateDir, ns, id) }

// maxSocketPath is the longest path a unix socket address holds.
const maxSocketPath = launch.MaxSocketPath

// NewQEMUVM is the VMFactory of the shim: a QEMU VM per shim, with a
// virtio-net device on each of nics.
func NewQEMUVM(ctx context.Context, cfg Config, id string, nics []qemu.NIC) (vm.Instance, error) {
	ns, _ := namespaces.Namespace(ctx)
	if err := launch.Probe(ctx, cfg, "/"); err != nil {
		return nil, err
	}
	qc, err := launch.QEMUConfig(cfg, cfg.PodInitData)
	if err != nil {
		return nil, err
	}
	// The initrd is [pef] sealed_initrd on PEF.
	for what, p := range map[string]string{"kernel": qc.Kernel, "initrd": qc.Initrd} {
		if _, err := os.Stat(p); err != nil {
			return nil, fmt.Errorf("guest %s: %v (set %s in the runtime config): %w", what, err, what, errdefs.ErrFailedPrecondition)
		}
	}
	var cid uint32
	switch cfg.Transport {
	case "vsock":
		if !vm.HasVhostVsock() {
			return nil, fmt.Errorf("transport vsock: /dev/vhost-vsock is missing: %w", errdefs.ErrFailedPrecondition)
		}
		cid = vsockCID()
	case "auto":
		if vm.HasVhostVsock() {
			cid = vsockCID()
		}
	}
	qc.VsockCID, qc.Name = cid, "raksh-"+id
	qc.NICs = nics
	if cfg.PlainRootfs == launch.PlainRootfsErofs && (qc.Machine == "" || qc.Machine == "pc") {
		// Two bridges: room for 62 layer disks besides the root bus.
		qc.LayerBridges = 2
	}
	if cfg.PodScratchDiskMiB > 0 {
		f, err := openScratch(cfg.ScratchDir, cfg.PodScratchDiskMiB)
		if err != nil {
			return nil, err
		}
		qc.Disks = append(qc.Disks, qemu.Disk{File: f, Serial: scratch.Serial})
	}
	var initrd *os.File
	if launch.PEFSimulated(cfg) {
		if initrd, err = simulatedUltravisorInitrd(ctx, cfg, &qc); err != nil {
			for _, d := range qc.Disks {
				d.File.Close()
			}
			return nil, err
		}
	}
	inst := vm.NewQEMU(vm.QEMUOptions{
		Config:          qc,
		Dir:             vmDir(cfg, ns, id),
		KeepDir:         cfg.Debug,
		BootTimeout:     cfg.BootTimeout,
		KVMProbeTimeout: cfg.KVMProbeTimeout,
		AccelCache:      filepath.Join(cfg.StateDir, "accel"),
		VirtioFSD:       virtioFSD(cfg),
	})
	if initrd != nil {
		return closeAfterStart{Instance: inst, f: initrd}, nil
	}
	return inst, nil
}
