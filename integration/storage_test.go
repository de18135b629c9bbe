//go:build integration

package integration

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/raksh-project/raksh/integration/harness"
)

// TestScratchDisk runs a 512 MiB guest with a 2 GiB encrypted scratch disk:
// a container writes 768 MiB (more than the guest's RAM) into its rootfs
// tmpfs and reads it back intact; the node's scratch file holds none of the
// marker the guest wrote; flipped bytes in the node's file make the read
// fail instead of returning other data; kill -9 of QEMU leaves no disk file
// and no device-mapper device on the node.
func TestScratchDisk(t *testing.T) {
	scratchDir, err := os.MkdirTemp("/var/tmp", "rk-scratch-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(scratchDir)
	dmBefore := hostDMDevices(t)
	h := startWithBusybox(t, harness.Options{RuntimeConfig: fmt.Sprintf("scratch_disk_mib = 2048\nscratch_dir = %q\n", scratchDir)})
	ctx, cancel := context.WithTimeout(context.Background(), 12*time.Minute)
	defer cancel()
	if out, err := h.CtrContext(ctx, "run", "-d", "--runtime", rakshRuntime, busyboxRef, "big", "sleep", "900"); err != nil {
		t.Fatalf("run -d: %v %s", err, out)
	}
	waitStatus(t, h, "big", "RUNNING", 3*time.Minute)
	pids := h.QEMUProcesses()
	if len(pids) != 1 {
		t.Fatalf("QEMU processes: %v", pids)
	}
	qemuPid := pids[0]
	if ents, _ := os.ReadDir(scratchDir); len(ents) != 0 {
		t.Fatalf("scratch dir holds named files: %v", ents)
	}
	disk := scratchFD(t, qemuPid, scratchDir)

	var rb [8]byte
	rand.Read(rb[:])
	marker := "raksh-scratch-marker-" + hex.EncodeToString(rb[:])
	const size = 640 << 20
	want := expectedSum(marker+"\n", size)

	exec := func(id, script string) (string, error, time.Duration) {
		start := time.Now()
		out, err := h.CtrContext(ctx, "task", "exec", "--exec-id", id, "big", "sh", "-c", script)
		return out, err, time.Since(start)
	}
	// One pass: write more than the guest's RAM, then hash it all back
	// (much of it from swap) and show the guest's memory and swap.
	out, err, d := exec("write", fmt.Sprintf("yes %s | head -c %d > /big && sha256sum /big && grep -E 'MemTotal|SwapTotal|SwapFree' /proc/meminfo", marker, size))
	if err != nil || !strings.Contains(out, want) {
		t.Fatalf("write and read back %d MiB: %v %q (want %s)", size>>20, err, out, want)
	}
	t.Logf("wrote and read back %d MiB in %s; QEMU RSS %s; guest: %s", size>>20, d, rss(qemuPid), strings.Join(strings.Fields(out)[2:], " "))
	if !swapUsed(out) {
		t.Fatalf("the guest did not swap: %q", out)
	}

	// The node's file: ciphertext only, and a lot of it.
	dataBytes, found := scanFor(t, disk, []byte(marker))
	if found {
		t.Fatal("the marker written in the guest is in the node's scratch file")
	}
	if dataBytes < 64<<20 {
		t.Fatalf("only %d bytes of the scratch file were written", dataBytes)
	}
	t.Logf("scratch file: %d MiB allocated, marker absent", dataBytes>>20)

	// Flip a byte every 64 KiB of written data past the first MiB.
	flipped := flipBytes(t, disk, 1<<20, 64<<10)
	t.Logf("flipped %d bytes in the node's scratch file", flipped)
	out, err, _ = exec("reread", "sha256sum /big")
	if err == nil {
		t.Fatalf("reading data whose ciphertext the node changed succeeded: %q", out)
	}
	if strings.Contains(out, "/big") && !strings.Contains(out, want) {
		t.Fatalf("the guest read wrong data instead of failing: %q", out)
	}
	t.Logf("read after the flip failed as it should: %v %q", err, strings.TrimSpace(out))

	// kill -9 of QEMU: nothing is left on the node.
	syscall.Kill(qemuPid, syscall.SIGKILL)
	waitStatus(t, h, "big", "STOPPED", 2*time.Minute)
	h.Ctr("task", "rm", "big")
	h.Ctr("container", "rm", "big")
	deadline := time.Now().Add(30 * time.Second)
	for holders := scratchHolders(scratchDir); len(holders) > 0; holders = scratchHolders(scratchDir) {
		if time.Now().After(deadline) {
			t.Fatalf("scratch disk still held after QEMU was killed: %v", holders)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if ents, _ := os.ReadDir(scratchDir); len(ents) != 0 {
		t.Fatalf("scratch dir not empty: %v", ents)
	}
	if after := hostDMDevices(t); after != dmBefore {
		t.Fatalf("device-mapper devices on the node changed: %q -> %q", dmBefore, after)
	}
}

// expectedSum is the sha256 of line repeated and cut at size bytes.
func expectedSum(line string, size int) string {
	h := sha256.New()
	chunk := bytes.Repeat([]byte(line), (1<<20)/len(line)+1)
	for left := size; left > 0; {
		n := min(left, len(chunk))
		h.Write(chunk[:n])
		left -= n
	}
	return hex.EncodeToString(h.Sum(nil))
}

// scratchFD is the path (/proc/pid/fd/N) of QEMU's open scratch file.
func scratchFD(t *testing.T, pid int, dir string) string {
	t.Helper()
	fds, _ := filepath.Glob(fmt.Sprintf("/proc/%d/fd/*", pid))
	for _, fd := range fds {
		if l, err := os.Readlink(fd); err == nil && strings.HasPrefix(l, dir+"/") {
			return fd
		}
	}
	t.Fatalf("QEMU %d holds no file of %s", pid, dir)
	return ""
}

// scratchHolders lists the processes' descriptors still on a file of dir.
func scratchHolders(dir string) []string {
	var held []string
	fds, _ := filepath.Glob("/proc/[0-9]*/fd/*")
	for _, fd := range fds {
		if l, err := os.Readlink(fd); err == nil && strings.HasPrefix(l, dir+"/") {
			held = append(held, fd+" -> "+l)
		}
	}
	return held
}

// hostDMDevices lists the node's device-mapper devices.
func hostDMDevices(t *testing.T) string {
	ents, _ := filepath.Glob("/sys/block/dm-*")
	m, _ := os.ReadDir("/dev/mapper")
	var names []string
	for _, e := range m {
		names = append(names, e.Name())
	}
	return strings.Join(ents, ",") + "|" + strings.Join(names, ",")
}

// dataExtents calls fn on each allocated extent of f.
func dataExtents(f *os.File, fn func(off, end int64)) error {
	st, err := f.Stat()
	if err != nil {
		return err
	}
	for off := int64(0); off < st.Size(); {
		data, err := unix.Seek(int(f.Fd()), off, unix.SEEK_DATA)
		if err != nil {
			return nil // ENXIO: no data past off
		}
		hole, err := unix.Seek(int(f.Fd()), data, unix.SEEK_HOLE)
		if err != nil {
			return err
		}
		fn(data, hole)
		off = hole
	}
	return nil
}

// scanFor reads the allocated parts of the file and reports their size and
// whether needle occurs in them.
func scanFor(t *testing.T, path string, needle []byte) (int64, bool) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var total int64
	found := false
	buf := make([]byte, 4<<20)
	err = dataExtents(f, func(off, end int64) {
		total += end - off
		var tail []byte
		for p := off; p < end && !found; {
			n, err := f.ReadAt(buf[:min(int64(len(buf)), end-p)], p)
			if n > 0 {
				win := append(tail, buf[:n]...)
				if bytes.Contains(win, needle) {
					found = true
				}
				tail = append([]byte(nil), win[max(0, len(win)-len(needle)):]...)
			}
			if err != nil && err != io.EOF {
				t.Fatal(err)
			}
			p += int64(n)
			if n == 0 {
				break
			}
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	return total, found
}

// flipBytes inverts one byte every step bytes of the file's allocated
// extents from offset from on.
func flipBytes(t *testing.T, path string, from, step int64) int {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	n := 0
	var b [1]byte
	err = dataExtents(f, func(off, end int64) {
		for p := max(off, from) + 100; p < end; p += step {
			if _, err := f.ReadAt(b[:], p); err != nil {
				t.Fatal(err)
			}
			b[0] ^= 0xff
			if _, err := f.WriteAt(b[:], p); err != nil {
				t.Fatal(err)
			}
			n++
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	f.Sync()
	return n
}

// swapUsed reports whether /proc/meminfo lines show swap in use.
func swapUsed(meminfo string) bool {
	var total, free int64
	for _, l := range strings.Split(meminfo, "\n") {
		f := strings.Fields(l)
		if len(f) >= 2 {
			switch f[0] {
			case "SwapTotal:":
				fmt.Sscan(f[1], &total)
			case "SwapFree:":
				fmt.Sscan(f[1], &free)
			}
		}
	}
	return total > 0 && total-free > 0
}

// rss is the VmRSS of a process.
func rss(pid int) string {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			return strings.TrimSpace(v)
		}
	}
	return "?"
}
