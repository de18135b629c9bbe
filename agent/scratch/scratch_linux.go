package scratch

import (
	"bufio"
	"context"
	"crypto/rand"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"unsafe"

	"github.com/containerd/log"
	"golang.org/x/sys/unix"
)

const (
	controlPath = "/dev/mapper/control"
	nodeDir     = "/dev/raksh-scratch" // /run is nodev
	integName   = "raksh-scratch-integrity"
	cryptName   = "raksh-scratch-crypt"
)

var swapBytes atomic.Int64

// Setup finds the scratch disk (the virtio-blk device with serial Serial),
// builds dm-integrity and dm-crypt on it with a fresh key and enables it as
// swap. Without a scratch disk it does nothing. It returns the swap size.
func Setup(ctx context.Context) (int64, error) {
	disk, err := findDisk()
	if err != nil || disk == "" {
		return 0, err
	}
	if err := os.MkdirAll(nodeDir, 0o700); err != nil {
		return 0, err
	}
	raw, err := mknod(disk)
	if err != nil {
		return 0, err
	}
	key := make([]byte, KeySize)
	if _, err := rand.Read(key); err != nil {
		return 0, fmt.Errorf("scratch key: %w", err)
	}
	defer clear(key)
	ctl, err := os.OpenFile(controlPath, os.O_RDWR, 0)
	if err != nil {
		return 0, fmt.Errorf("device-mapper control: %w", err)
	}
	defer ctl.Close()
	rawDev, err := devNumber(raw)
	if err != nil {
		return 0, err
	}
	// dm-integrity formats a zeroed device when first loaded; the mapping
	// is then reloaded with the size its superblock provides.
	if _, err := createDevice(ctl, integName, []Target{{Length: BlockSize / 512, Type: "integrity", Params: IntegrityParams(rawDev)}}); err != nil {
		return 0, fmt.Errorf("format dm-integrity on %s: %w", disk, err)
	}
	if err := dmIoctl(ctl, unix.DM_DEV_REMOVE, integName, 0, nil); err != nil {
		return 0, fmt.Errorf("remove probe mapping: %w", err)
	}
	sectors, err := readProvided(raw)
	if err != nil {
		return 0, err
	}
	sectors -= sectors % (BlockSize / 512)
	integDev, err := createDevice(ctl, integName, []Target{{Length: sectors, Type: "integrity", Params: IntegrityParams(rawDev)}})
	if err != nil {
		return 0, fmt.Errorf("dm-integrity on %s: %w", disk, err)
	}
	params, err := CryptParams(fmt.Sprintf("%d:%d", unix.Major(integDev), unix.Minor(integDev)), key)
	if err != nil {
		return 0, err
	}
	cryptDev, err := createDevice(ctl, cryptName, []Target{{Length: sectors, Type: "crypt", Params: params}})
	if err != nil {
		return 0, fmt.Errorf("dm-crypt on %s: %w", disk, err)
	}
	node := filepath.Join(nodeDir, "swap")
	if err := unix.Mknod(node, unix.S_IFBLK|0o600, int(cryptDev)); err != nil && !os.IsExist(err) {
		return 0, fmt.Errorf("mknod %s: %w", node, err)
	}
	size := int64(sectors) * 512
	hdr, err := SwapHeader(size)
	if err != nil {
		return 0, err
	}
	f, err := os.OpenFile(node, os.O_WRONLY, 0)
	if err != nil {
		return 0, err
	}
	_, err = f.WriteAt(hdr, 0)
	if err == nil {
		err = f.Sync()
	}
	f.Close()
	if err != nil {
		return 0, fmt.Errorf("write swap header: %w", err)
	}
	// Swapping through dm-integrity and dm-crypt allocates memory (tag
	// buffers, crypto requests) while the kernel reclaims: keep a reserve
	// so reclaim can make progress instead of stalling.
	if err := reserveMemory(); err != nil {
		log.G(ctx).WithError(err).Warn("cannot raise vm.min_free_kbytes")
	}
	p, err := unix.BytePtrFromString(node)
	if err != nil {
		return 0, err
	}
	if _, _, e := unix.Syscall(unix.SYS_SWAPON, uintptr(unsafe.Pointer(p)), 0, 0); e != 0 {
		return 0, fmt.Errorf("swapon %s: %w", node, e)
	}
	swapBytes.Store(size)
	log.G(ctx).WithField("disk", disk).WithField("bytes", size).Info("encrypted scratch swap enabled")
	return size, nil
}

// findDisk returns the name ("vda") of the virtio-blk disk with serial
// Serial, or "" when there is none.
func findDisk() (string, error) {
	serials, _ := filepath.Glob("/sys/block/vd*/serial")
	for _, s := range serials {
		b, err := os.ReadFile(s)
		if err == nil && strings.TrimSpace(string(b)) == Serial {
			return filepath.Base(filepath.Dir(s)), nil
		}
	}
	return "", nil
}

// mknod makes a node for the block device name from its sysfs dev file.
func mknod(name string) (string, error) {
	b, err := os.ReadFile(filepath.Join("/sys/block", name, "dev"))
	if err != nil {
		return "", err
	}
	maj, min, ok := strings.Cut(strings.TrimSpace(string(b)), ":")
	if !ok {
		return "", fmt.Errorf("bad dev %q of %s", b, name)
	}
	ma, err1 := strconv.Atoi(maj)
	mi, err2 := strconv.Atoi(min)
	if err1 != nil || err2 != nil {
		return "", fmt.Errorf("bad dev %q of %s", b, name)
	}
	node := filepath.Join(nodeDir, name)
	if err := unix.Mknod(node, unix.S_IFBLK|0o600, int(unix.Mkdev(uint32(ma), uint32(mi)))); err != nil && !os.IsExist(err) {
		return "", fmt.Errorf("mknod %s: %w", node, err)
	}
	return node, nil
}

func devNumber(node string) (string, error) {
	var st unix.Stat_t
	if err := unix.Stat(node, &st); err != nil {
		return "", err
	}
	return fmt.Sprintf("%d:%d", unix.Major(st.Rdev), unix.Minor(st.Rdev)), nil
}

// readProvided reads the dm-integrity superblock straight from the disk.
func readProvided(node string) (uint64, error) {
	f, err := os.OpenFile(node, os.O_RDONLY|unix.O_DIRECT, 0)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	buf, err := unix.Mmap(-1, 0, BlockSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_ANON|unix.MAP_PRIVATE)
	if err != nil {
		return 0, err
	}
	defer unix.Munmap(buf)
	if _, err := f.ReadAt(buf, 0); err != nil {
		return 0, fmt.Errorf("read dm-integrity superblock: %w", err)
	}
	return ProvidedSectors(buf)
}

// createDevice creates, loads and resumes a mapping; it returns its dev_t.
func createDevice(ctl *os.File, name string, targets []Target) (uint64, error) {
	if err := dmIoctl(ctl, unix.DM_DEV_CREATE, name, 0, nil); err != nil {
		return 0, fmt.Errorf("create %s: %w", name, err)
	}
	if err := dmIoctl(ctl, unix.DM_TABLE_LOAD, name, 0, targets); err != nil {
		dmIoctl(ctl, unix.DM_DEV_REMOVE, name, 0, nil)
		return 0, fmt.Errorf("load table of %s: %w", name, err)
	}
	b, err := encodeIoctl(name, 0, nil)
	if err != nil {
		return 0, err
	}
	if err := ioctl(ctl, unix.DM_DEV_SUSPEND, b); err != nil { // flags 0: resume
		dmIoctl(ctl, unix.DM_DEV_REMOVE, name, 0, nil)
		return 0, fmt.Errorf("resume %s: %w", name, err)
	}
	return ioctlDev(b), nil
}

func dmIoctl(ctl *os.File, req uint, name string, flags uint32, targets []Target) error {
	b, err := encodeIoctl(name, flags, targets)
	if err != nil {
		return err
	}
	return ioctl(ctl, req, b)
}

func ioctl(ctl *os.File, req uint, b []byte) error {
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, ctl.Fd(), uintptr(req), uintptr(unsafe.Pointer(&b[0]))); e != 0 {
		return e
	}
	return nil
}

// SwapBytes is the size of the scratch swap (0 without a scratch disk).
func SwapBytes() int64 { return swapBytes.Load() }

// TmpfsSize is the size= to give a guest tmpfs that should hold as much as
// the guest can: its RAM plus the scratch swap. Without swap it is "" (the
// tmpfs default, half the RAM).
func TmpfsSize() string {
	swap := SwapBytes()
	if swap == 0 {
		return ""
	}
	return "size=" + strconv.FormatInt(memTotal()+swap, 10)
}

// memTotal is MemTotal from /proc/meminfo in bytes.
func memTotal() int64 {
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "MemTotal:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb * 1024
		}
	}
	return 0
}

// minFreeKB is the free-memory reserve kept with scratch swap on.
const minFreeKB = 32768

func reserveMemory() error {
	b, err := os.ReadFile("/proc/sys/vm/min_free_kbytes")
	if err != nil {
		return err
	}
	if cur, _ := strconv.Atoi(strings.TrimSpace(string(b))); cur >= minFreeKB {
		return nil
	}
	return os.WriteFile("/proc/sys/vm/min_free_kbytes", []byte(strconv.Itoa(minFreeKB)), 0)
}
