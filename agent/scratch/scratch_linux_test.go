package scratch

import (
	"context"
	"encoding/binary"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// TestFormat formats a sparse file standing in for the device with
// busybox's mke2fs: the result is ext2 with 4 KiB blocks of the whole
// size, checks clean with e2fsck when present, only the blocks mke2fs wrote are
// allocated, and each is written whole (block aligned extents).
func TestFormat(t *testing.T) {
	busybox, err := exec.LookPath("busybox")
	if err != nil {
		t.Skip("busybox (Debian busybox-static) not installed: hack/deps.sh")
	}
	dir := t.TempDir()
	mke2fs := filepath.Join(dir, "mke2fs") // busybox dispatches on its name
	if err := os.Symlink(busybox, mke2fs); err != nil {
		t.Fatal(err)
	}
	const size = 512 << 20
	dev := filepath.Join(dir, "dev")
	f, err := os.Create(dev)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	if err := format(context.Background(), mke2fs, dir, dev, size); err != nil {
		t.Fatal(err)
	}
	if left, _ := filepath.Glob(filepath.Join(dir, "raksh-scratch-fs-*")); len(left) != 0 {
		t.Fatalf("image left behind: %v", left)
	}
	sb := make([]byte, 1024)
	if _, err := f.ReadAt(sb, 1024); err != nil {
		t.Fatal(err)
	}
	if magic := binary.LittleEndian.Uint16(sb[56:]); magic != 0xef53 {
		t.Fatalf("no ext2 superblock: magic %#x", magic)
	}
	if logBlock := binary.LittleEndian.Uint32(sb[24:]); 1024<<logBlock != BlockSize {
		t.Fatalf("block size %d, want %d", 1024<<logBlock, BlockSize)
	}
	if blocks := binary.LittleEndian.Uint32(sb[4:]); int64(blocks)*BlockSize != size {
		t.Fatalf("%d blocks of %d bytes, want %d bytes", blocks, BlockSize, size)
	}
	var allocated int64
	for off := int64(0); off < size; {
		data, err := unix.Seek(int(f.Fd()), off, unix.SEEK_DATA)
		if err != nil {
			break
		}
		hole, err := unix.Seek(int(f.Fd()), data, unix.SEEK_HOLE)
		if err != nil {
			t.Fatal(err)
		}
		if data%BlockSize != 0 || (hole%BlockSize != 0 && hole != size) {
			t.Fatalf("extent %d-%d not block aligned", data, hole)
		}
		allocated += hole - data
		off = hole
	}
	if allocated == 0 || allocated > size/8 {
		t.Fatalf("%d bytes written of %d: want the metadata only", allocated, size)
	}
	if fsck, err := exec.LookPath("e2fsck"); err == nil {
		if out, err := exec.Command(fsck, "-fn", dev).CombinedOutput(); err != nil {
			t.Fatalf("e2fsck: %v\n%s", err, out)
		}
	}
}

// TestFormatMke2fsFails: a failing formatter is an error naming it and
// its output.
func TestFormatMke2fsFails(t *testing.T) {
	dir := t.TempDir()
	dev := filepath.Join(dir, "dev")
	os.WriteFile(dev, nil, 0o600)
	err := format(context.Background(), "/bin/false", dir, dev, 64<<20)
	if err == nil || !strings.Contains(err.Error(), "/bin/false -F -b 4096") {
		t.Fatalf("failing mke2fs: %v", err)
	}
}
