package scratch

import (
	"fmt"
	"path/filepath"
)

// MountPoint is where the guest mounts the scratch filesystem. It is
// fixed by the guest: nothing the node sends chooses it.
const MountPoint = "/run/raksh-scratch"

// Directories of the scratch filesystem.
const (
	// BundlesDir holds the bundle store (container root filesystems,
	// writable layers, guest-pulled and decrypted images); it is bound
	// onto the agent's state root.
	BundlesDir = "bundles"
	// VolumesDir holds the pods' disk-backed emptyDirs.
	VolumesDir = "volumes"
	// TmpDir is bound onto the guest's /tmp (layer blobs are spooled
	// there before they are verified and unpacked).
	TmpDir = "tmp"
)

// Mke2fs is the formatter in the initrd (rakshctl initrd build --mke2fs:
// busybox-static, which dispatches on the name it is run as).
const Mke2fs = "/bin/mke2fs"

// Mke2fsArgs are the arguments formatting the image file img as ext2 of
// size bytes: forced, 4 KiB blocks (dm-crypt's sector size), no blocks
// reserved for root (the pod's containers are the only users), one inode
// per InodeRatio(size) bytes. No journal: the key dies with the VM, so
// nothing on the disk has to survive a crash.
func Mke2fsArgs(img string, size int64) []string {
	return []string{"-F", "-b", fmt.Sprint(BlockSize), "-m", "0", "-i", fmt.Sprint(InodeRatio(size)), img, fmt.Sprint(size / 1024)}
}

// maxInodes bounds the inode count: mke2fs writes the whole inode table
// (256 bytes an inode) and the agent stages it in guest RAM (format).
const maxInodes = 256 << 10

// InodeRatio is the bytes per inode: one per 16 KiB, fewer on a disk so
// large that would make more than maxInodes (a power of two).
func InodeRatio(size int64) int64 {
	r := int64(16384)
	for size/r > maxInodes {
		r *= 2
	}
	return r
}

// minSwapSectors is the smallest swap part worth having (16 MiB).
const minSwapSectors = 16 << 20 / 512

// Split divides the encrypted device of sectors 512-byte sectors into a
// filesystem part (first) and a swap part: a quarter of the device, at
// most the guest's memory (memBytes), so anonymous memory and tmpfs
// (medium Memory emptyDirs, /dev/shm) can still spill while most of the
// disk holds files. Both parts are multiples of BlockSize. A device too
// small for both gets no swap.
func Split(sectors uint64, memBytes int64) (fs, swap uint64) {
	const blk = BlockSize / 512
	sectors -= sectors % blk
	swap = sectors / 4
	if mem := uint64(max(memBytes, 0)) / 512; swap > mem {
		swap = mem
	}
	swap -= swap % blk
	if swap < minSwapSectors {
		swap = 0
	}
	return sectors - swap, swap
}

// LinearParams is a dm-linear table line's parameters: dev
// ("major:minor") from sector offset.
func LinearParams(dev string, offset uint64) string {
	return fmt.Sprintf("%s %d", dev, offset)
}

// dirOf is the directory name of the scratch filesystem mounted at
// mount, or "" when there is none.
func dirOf(mount, name string) string {
	if mount == "" {
		return ""
	}
	return filepath.Join(mount, name)
}
