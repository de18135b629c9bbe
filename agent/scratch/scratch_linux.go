package scratch

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/containerd/log"
	"golang.org/x/sys/unix"
)

const (
	controlPath = "/dev/mapper/control"
	nodeDir     = "/dev/raksh-scratch" // /run is nodev
	integName   = "raksh-scratch-integrity"
	cryptName   = "raksh-scratch-crypt"
	fsName      = "raksh-scratch-fs"
	swapName    = "raksh-scratch-swap"
)

// fsMount is MountPoint once the scratch filesystem is mounted.
var fsMount atomic.Value

// Setup finds the scratch disk (the virtio-blk device with serial Serial)
// and builds dm-integrity and dm-crypt on it with a fresh key. The
// encrypted device is split with dm-linear (Split): the first part is
// formatted ext2 with /bin/mke2fs and mounted at MountPoint (nodev), its
// TmpDir bound onto /tmp; the rest, if any, is swap. Without a scratch
// disk it does nothing.
func Setup(ctx context.Context) error {
	disk, err := findDisk()
	if err != nil || disk == "" {
		return err
	}
	// Fail before touching the disk when the initrd cannot format it.
	if _, err := os.Stat(Mke2fs); err != nil {
		return fmt.Errorf("the initrd has no %s to format the scratch disk (rakshctl initrd build --mke2fs): %w", Mke2fs, err)
	}
	if err := os.MkdirAll(nodeDir, 0o700); err != nil {
		return err
	}
	raw, err := mknod(disk)
	if err != nil {
		return err
	}
	key := make([]byte, KeySize)
	if _, err := rand.Read(key); err != nil {
		return fmt.Errorf("scratch key: %w", err)
	}
	defer clear(key)
	ctl, err := os.OpenFile(controlPath, os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("device-mapper control: %w", err)
	}
	defer ctl.Close()
	rawDev, err := devNumber(raw)
	if err != nil {
		return err
	}
	// dm-integrity formats a zeroed device when first loaded; the mapping
	// is then reloaded with the size its superblock provides.
	if _, err := createDevice(ctl, integName, []Target{{Length: BlockSize / 512, Type: "integrity", Params: IntegrityParams(rawDev)}}); err != nil {
		return fmt.Errorf("format dm-integrity on %s: %w", disk, err)
	}
	if err := dmIoctl(ctl, unix.DM_DEV_REMOVE, integName, 0, nil); err != nil {
		return fmt.Errorf("remove probe mapping: %w", err)
	}
	sectors, err := readProvided(raw)
	if err != nil {
		return err
	}
	sectors -= sectors % (BlockSize / 512)
	integDev, err := createDevice(ctl, integName, []Target{{Length: sectors, Type: "integrity", Params: IntegrityParams(rawDev)}})
	if err != nil {
		return fmt.Errorf("dm-integrity on %s: %w", disk, err)
	}
	params, err := CryptParams(devString(integDev), key)
	if err != nil {
		return err
	}
	cryptDev, err := createDevice(ctl, cryptName, []Target{{Length: sectors, Type: "crypt", Params: params}})
	if err != nil {
		return fmt.Errorf("dm-crypt on %s: %w", disk, err)
	}
	fsSectors, swapSectors := Split(sectors, memTotal())
	fsDev, err := createDevice(ctl, fsName, []Target{{Length: fsSectors, Type: "linear", Params: LinearParams(devString(cryptDev), 0)}})
	if err != nil {
		return fmt.Errorf("scratch filesystem part: %w", err)
	}
	fsNode, err := mknodDev(fsDev, "fs")
	if err != nil {
		return err
	}
	start := time.Now()
	if err := format(ctx, Mke2fs, "/tmp", fsNode, int64(fsSectors)*512); err != nil {
		return err
	}
	formatted := time.Since(start)
	if err := os.MkdirAll(MountPoint, 0o700); err != nil {
		return err
	}
	// nodev (as the bundle store on tmpfs: no device node of an image
	// opens a guest device) but not nosuid (images ship setuid binaries).
	if err := unix.Mount(fsNode, MountPoint, "ext4", unix.MS_NODEV|unix.MS_NOATIME, ""); err != nil {
		return fmt.Errorf("mount the scratch filesystem on %s: %w", MountPoint, err)
	}
	for _, d := range []string{BundlesDir, VolumesDir, TmpDir} {
		if err := os.MkdirAll(filepath.Join(MountPoint, d), 0o700); err != nil {
			return err
		}
	}
	tmp := filepath.Join(MountPoint, TmpDir)
	if err := os.Chmod(tmp, 0o1777); err != nil {
		return err
	}
	if err := bindFlags(tmp, "/tmp", unix.MS_NOSUID|unix.MS_NODEV); err != nil {
		return err
	}
	fsMount.Store(MountPoint)
	// Swapping through dm-integrity and dm-crypt allocates memory (tag
	// buffers, crypto requests) while the kernel reclaims: keep a reserve
	// so reclaim can make progress instead of stalling.
	if err := reserveMemory(); err != nil {
		log.G(ctx).WithError(err).Warn("cannot raise vm.min_free_kbytes")
	}
	if swapSectors > 0 {
		if err := enableSwap(ctl, devString(cryptDev), fsSectors, swapSectors); err != nil {
			return err
		}
	}
	log.G(ctx).WithField("disk", disk).WithField("fs_bytes", int64(fsSectors)*512).WithField("swap_bytes", int64(swapSectors)*512).
		WithField("mke2fs", formatted).Info("encrypted scratch filesystem and swap enabled")
	return nil
}

// format makes an ext2 filesystem of size bytes on dev. A block of the
// AEAD device that was never written does not read (its tag fails), and
// mke2fs writes some blocks in part (the superblock is 1 KiB), which the
// page cache would complete by reading the block: so mke2fs formats a
// sparse image in guest tmpfs and the blocks it wrote are copied to dev
// whole (the rest stays unwritten: the filesystem allocates a block before
// it reads it).
//
// mke2fs is the formatter's path and tmp the tmpfs directory for the image.
func format(ctx context.Context, mke2fs, tmp, dev string, size int64) error {
	img, err := os.CreateTemp(tmp, "raksh-scratch-fs-")
	if err != nil {
		return err
	}
	defer os.Remove(img.Name())
	defer img.Close()
	if err := img.Truncate(size); err != nil {
		return err
	}
	args := Mke2fsArgs(img.Name(), size)
	if out, err := exec.CommandContext(ctx, mke2fs, args...).CombinedOutput(); err != nil {
		return fmt.Errorf("%s %s: %w: %s", mke2fs, strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	out, err := os.OpenFile(dev, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	defer out.Close()
	buf := make([]byte, 1<<20)
	for off := int64(0); off < size; {
		data, err := unix.Seek(int(img.Fd()), off, unix.SEEK_DATA)
		if err != nil {
			break // ENXIO: no data past off
		}
		hole, err := unix.Seek(int(img.Fd()), data, unix.SEEK_HOLE)
		if err != nil {
			return err
		}
		// Whole blocks (tmpfs allocates whole pages anyway).
		data -= data % BlockSize
		hole = min(size, (hole+BlockSize-1)/BlockSize*BlockSize)
		for p := data; p < hole; {
			n, err := img.ReadAt(buf[:min(int64(len(buf)), hole-p)], p)
			if n > 0 {
				if _, werr := out.WriteAt(buf[:n], p); werr != nil {
					return fmt.Errorf("write the scratch filesystem: %w", werr)
				}
			}
			if err != nil && err != io.EOF {
				return err
			}
			if n == 0 {
				break
			}
			p += int64(n)
		}
		off = hole
	}
	if err := out.Sync(); err != nil {
		return fmt.Errorf("write the scratch filesystem: %w", err)
	}
	return nil
}

// enableSwap maps the swap part of the encrypted device (from sector
// offset, length sectors), writes a swap header and swaps on it.
func enableSwap(ctl *os.File, crypt string, offset, length uint64) error {
	dev, err := createDevice(ctl, swapName, []Target{{Length: length, Type: "linear", Params: LinearParams(crypt, offset)}})
	if err != nil {
		return fmt.Errorf("scratch swap part: %w", err)
	}
	node, err := mknodDev(dev, "swap")
	if err != nil {
		return err
	}
	size := int64(length) * 512
	hdr, err := SwapHeader(size)
	if err != nil {
		return err
	}
	f, err := os.OpenFile(node, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	_, err = f.WriteAt(hdr, 0)
	if err == nil {
		err = f.Sync()
	}
	f.Close()
	if err != nil {
		return fmt.Errorf("write swap header: %w", err)
	}
	p, err := unix.BytePtrFromString(node)
	if err != nil {
		return err
	}
	if _, _, e := unix.Syscall(unix.SYS_SWAPON, uintptr(unsafe.Pointer(p)), 0, 0); e != 0 {
		return fmt.Errorf("swapon %s: %w", node, e)
	}
	return nil
}

// bindFlags binds src onto dst with exactly flags (plus MS_BIND).
func bindFlags(src, dst string, flags uintptr) error {
	if err := unix.Mount(src, dst, "", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("bind %s on %s: %w", src, dst, err)
	}
	if err := unix.Mount("", dst, "", unix.MS_BIND|unix.MS_REMOUNT|flags, ""); err != nil {
		unix.Unmount(dst, unix.MNT_DETACH)
		return fmt.Errorf("remount %s: %w", dst, err)
	}
	return nil
}

// Dir is the directory name (BundlesDir, VolumesDir, TmpDir) of the
// scratch filesystem, or "" when the guest has none (no scratch disk).
func Dir(name string) string {
	m, _ := fsMount.Load().(string)
	return dirOf(m, name)
}

// Bind binds the scratch directory src onto dst with exactly nodev (the
// flags of the bundle store and of emptyDirs on tmpfs).
func Bind(src, dst string) error { return bindFlags(src, dst, unix.MS_NODEV) }

func devString(dev uint64) string { return fmt.Sprintf("%d:%d", unix.Major(dev), unix.Minor(dev)) }

// mknodDev makes the node name under nodeDir for the block device dev.
func mknodDev(dev uint64, name string) (string, error) {
	node := filepath.Join(nodeDir, name)
	if err := unix.Mknod(node, unix.S_IFBLK|0o600, int(dev)); err != nil && !os.IsExist(err) {
		return "", fmt.Errorf("mknod %s: %w", node, err)
	}
	return node, nil
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
