package qemu

import (
	"os"
	"strings"
	"testing"
)

// TestDiskArgs checks a disk's descriptor follows the NICs' in both the
// arguments and the inherited files.
func TestDiskArgs(t *testing.T) {
	cfg := base()
	disk, err := os.CreateTemp(t.TempDir(), "disk")
	if err != nil {
		t.Fatal(err)
	}
	defer disk.Close()
	cfg.NICs = []NIC{{Tap: os.Stdin, MAC: "02:42:0a:c7:26:02"}}
	cfg.Disks = []Disk{{File: disk, Serial: "raksh-scratch"}}
	args, err := cfg.Args()
	if err != nil {
		t.Fatal(err)
	}
	got := strings.Join(args, " ")
	want := "-drive if=none,id=disk0,format=raw,file=/proc/self/fd/4,discard=unmap -device virtio-blk-pci,id=blk0,drive=disk0,serial=raksh-scratch"
	if !strings.Contains(got, want) {
		t.Fatalf("args %q lack %q", got, want)
	}
	files := cfg.ExtraFiles()
	if len(files) != 2 || files[0] != os.Stdin || files[1] != disk {
		t.Fatalf("extra files %v", files)
	}
}
