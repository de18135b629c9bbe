// Package qemu launches Raksh VMs with QEMU. Config renders QEMU's
// arguments in the shape of govmm's qemu.Config; QMP (go-qemu) is used for
// status and shutdown.
package qemu

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"

	"github.com/raksh-project/raksh/tee"
)

// Accelerators.
const (
	AccelKVM = "kvm"
	AccelTCG = "tcg"
)

// Config describes one VM. Args renders it; nothing is started.
type Config struct {
	// Path is the QEMU binary.
	Path string
	// Name names the VM in QEMU (process title, QMP).
	Name string
	// Machine is the machine type ("pc", "q35", "pseries").
	Machine string
	// MachineOptions are appended to -machine.
	MachineOptions []string
	// Accel is "kvm" or "tcg".
	Accel string
	// CPUModel is the -cpu model; empty picks "host" for KVM, "max" for TCG.
	CPUModel string
	// MemoryMiB is the guest memory in MiB.
	MemoryMiB uint
	// VCPUs is the number of virtual CPUs.
	VCPUs uint
	// Kernel, Initrd and KernelParams boot the guest directly.
	Kernel       string
	Initrd       string
	KernelParams []string
	// ConsoleLog receives the guest's serial console; empty discards it.
	ConsoleLog string
	// AgentSocket is the host unix socket of the agent's virtio-serial port,
	// named AgentPort in the guest.
	AgentSocket string
	AgentPort   string
	// VsockCID, if not zero, adds a vhost-vsock device with that guest CID.
	VsockCID uint32
	// QMPSocket is the host unix socket of the QMP monitor.
	QMPSocket string
	// PidFile, if set, is where QEMU writes its pid.
	PidFile string
	// TEE are the confidential-computing options of the TEE backend.
	TEE tee.LaunchArgs
	// NICs are virtio-net devices, each on a tap queue the caller opened;
	// Start passes them to QEMU as inherited file descriptors.
	NICs []NIC
	// Disks are virtio-blk devices on files the caller opened (read-write);
	// Start passes them to QEMU as inherited file descriptors after the
	// NICs', so a file unlinked before the start still reaches the guest.
	Disks []Disk
	// VirtioFS, if set, adds a vhost-user-fs device on a running
	// virtiofsd's socket, and backs the guest memory with a shared memfd
	// (vhost-user maps it).
	VirtioFS *VirtioFS
	// LayerBridges adds that many PCI bridges (ids LayerBridgeID(i)) for
	// hot-plugged read-only layer disks, each with 31 slots beyond the
	// root bus's few free ones.
	LayerBridges int
	// Extra are further raw arguments.
	Extra []string
}

// LayerBridgeID is the QEMU id of the i-th layer disk bridge.
func LayerBridgeID(i int) string { return fmt.Sprintf("rk-layers%d", i) }

// BridgeSlots is the number of hot-pluggable slots of a PCI bridge.
const BridgeSlots = 31

// VirtioFS is a vhost-user-fs device.
type VirtioFS struct {
	// Socket is virtiofsd's vhost-user socket.
	Socket string
	// Tag is the name the guest mounts it by.
	Tag string
}

// Disk is a raw virtio-blk disk on an open file.
type Disk struct {
	// File is the disk image, opened read-write.
	File *os.File
	// Serial is the virtio-blk serial the guest finds the disk by.
	Serial string
}

// NIC is a virtio-net device on an open tap.
type NIC struct {
	// Tap is the tap queue (opened with IFF_TAP|IFF_NO_PI|IFF_VNET_HDR).
	Tap *os.File
	// MAC is the guest NIC's address ("02:42:...").
	MAC string
	// Vhost asks for the vhost-net kernel backend (KVM only).
	Vhost bool
}

// ExtraFiles are the files QEMU inherits, in the order Args numbers them
// (from fd 3).
func (c *Config) ExtraFiles() []*os.File {
	var fs []*os.File
	for _, n := range c.NICs {
		fs = append(fs, n.Tap)
	}
	for _, d := range c.Disks {
		fs = append(fs, d.File)
	}
	return fs
}

// Validate checks the config is complete.
func (c *Config) Validate() error {
	var errs []error
	if c.Path == "" {
		errs = append(errs, errors.New("qemu path is empty"))
	}
	if c.Kernel == "" {
		errs = append(errs, errors.New("kernel path is empty"))
	}
	if c.Initrd == "" {
		errs = append(errs, errors.New("initrd path is empty"))
	}
	if c.AgentSocket == "" && c.VsockCID == 0 {
		errs = append(errs, errors.New("no agent transport: set an agent socket or a vsock CID"))
	}
	if c.Accel != AccelKVM && c.Accel != AccelTCG {
		errs = append(errs, fmt.Errorf("accel %q is neither kvm nor tcg", c.Accel))
	}
	if c.MemoryMiB < 64 {
		errs = append(errs, fmt.Errorf("memory %d MiB is below 64 MiB", c.MemoryMiB))
	}
	if c.VCPUs == 0 {
		errs = append(errs, errors.New("vcpus is 0"))
	}
	if c.VirtioFS != nil && (c.VirtioFS.Socket == "" || c.VirtioFS.Tag == "") {
		errs = append(errs, errors.New("virtio-fs needs a socket and a tag"))
	}
	for i, n := range c.NICs {
		if n.Tap == nil {
			errs = append(errs, fmt.Errorf("nic %d has no tap", i))
		}
		if hw, err := net.ParseMAC(n.MAC); err != nil || len(hw) != 6 {
			errs = append(errs, fmt.Errorf("nic %d: %q is not an Ethernet MAC address", i, n.MAC))
		}
	}
	return errors.Join(errs...)
}

// Args renders the QEMU command line (without the binary).
func (c *Config) Args() ([]string, error) {
	if err := c.Validate(); err != nil {
		return nil, fmt.Errorf("invalid vm config: %w", err)
	}
	machine := c.Machine
	if machine == "" {
		machine = "pc"
	}
	mopts := append([]string{machine, "accel=" + c.Accel}, c.MachineOptions...)
	mopts = append(mopts, c.TEE.MachineOptions...)
	cpu := c.CPUModel
	if cpu == "" {
		cpu = "max"
		if c.Accel == AccelKVM {
			cpu = "host"
		}
	}
	args := []string{
		"-name", c.Name,
		"-machine", strings.Join(mopts, ","),
		"-cpu", cpu,
		"-m", strconv.FormatUint(uint64(c.MemoryMiB), 10) + "M",
		"-smp", strconv.FormatUint(uint64(c.VCPUs), 10),
		"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
		"-kernel", c.Kernel,
		"-initrd", c.Initrd,
		"-append", strings.Join(append(append([]string{}, c.KernelParams...), c.TEE.KernelParams...), " "),
	}
	if c.ConsoleLog != "" {
		args = append(args, "-chardev", "file,id=console,path="+escape(c.ConsoleLog), "-serial", "chardev:console")
	} else {
		args = append(args, "-serial", "null")
	}
	args = append(args, "-device", "virtio-rng-pci,id=rng0")
	if c.AgentSocket != "" {
		port := c.AgentPort
		if port == "" {
			port = "raksh.agent"
		}
		args = append(args,
			"-device", "virtio-serial-pci,id=vser0",
			"-chardev", "socket,id=agent,path="+escape(c.AgentSocket)+",server=on,wait=off",
			"-device", "virtserialport,bus=vser0.0,chardev=agent,name="+port,
		)
	}
	if c.VsockCID != 0 {
		args = append(args, "-device", fmt.Sprintf("vhost-vsock-pci,id=vsock0,guest-cid=%d", c.VsockCID))
	}
	for i, n := range c.NICs {
		netdev := fmt.Sprintf("tap,id=net%d,fd=%d", i, 3+i)
		if n.Vhost {
			netdev += ",vhost=on"
		}
		// romfile= : no PXE option ROM, the kernel is booted directly.
		args = append(args, "-netdev", netdev,
			"-device", fmt.Sprintf("virtio-net-pci,id=nic%d,netdev=net%d,mac=%s,romfile=", i, i, n.MAC))
	}
	for i, d := range c.Disks {
		// The inherited descriptor, reopened through /proc: the file may
		// have no name on the node at all.
		fd := 3 + len(c.NICs) + i
		args = append(args, "-drive", fmt.Sprintf("if=none,id=disk%d,format=raw,file=/proc/self/fd/%d,discard=unmap", i, fd),
			"-device", fmt.Sprintf("virtio-blk-pci,id=blk%d,drive=disk%d,serial=%s", i, i, escape(d.Serial)))
	}
	if fs := c.VirtioFS; fs != nil {
		args = append(args,
			"-object", fmt.Sprintf("memory-backend-memfd,id=vfsmem,size=%dM,share=on", c.MemoryMiB),
			"-numa", "node,memdev=vfsmem",
			"-chardev", "socket,id=vfs0,path="+escape(fs.Socket),
			"-device", "vhost-user-fs-pci,chardev=vfs0,tag="+escape(fs.Tag))
	}
	for i := 0; i < c.LayerBridges; i++ {
		args = append(args, "-device", fmt.Sprintf("pci-bridge,id=%s,chassis_nr=%d", LayerBridgeID(i), i+1))
	}
	if c.QMPSocket != "" {
		args = append(args, "-qmp", "unix:"+escape(c.QMPSocket)+",server=on,wait=off")
	}
	if c.PidFile != "" {
		args = append(args, "-pidfile", c.PidFile)
	}
	for _, o := range c.TEE.Objects {
		args = append(args, "-object", o)
	}
	args = append(args, c.TEE.Extra...)
	args = append(args, c.Extra...)
	return args, nil
}

// escape doubles commas, QEMU's escape inside option values.
func escape(s string) string { return strings.ReplaceAll(s, ",", ",,") }
