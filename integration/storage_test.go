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
	mrand "math/rand/v2"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/raksh-project/raksh/agent/image/imagetest"
	"github.com/raksh-project/raksh/integration/harness"
)

// TestScratchDisk runs a 512 MiB guest with a 2 GiB encrypted scratch disk:
// a container writes 1 GiB (twice the guest's RAM) into a disk-backed
// emptyDir, which is on the guest's ext2 filesystem on dm-crypt, and reads
// it back intact; its root filesystem's writable layer is there too; the
// node's scratch file holds none of the marker the guest wrote; flipped
// bytes in the node's file make the read fail instead of returning other
// data; kill -9 of QEMU leaves no disk file and no device-mapper device on
// the node.
func TestScratchDisk(t *testing.T) {
	scratchDir, err := os.MkdirTemp("/var/tmp", "rk-scratch-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(scratchDir)
	dmBefore := hostDMDevices(t)
	h := startWithBusybox(t, harness.Options{RuntimeConfig: fmt.Sprintf("memory_mib = 512\nscratch_disk_mib = 2048\nscratch_dir = %q\n", scratchDir)})
	ctx, cancel := context.WithTimeout(context.Background(), 12*time.Minute)
	defer cancel()
	// A disk-backed emptyDir as kubelet lays it out on the node.
	cacheDir := filepath.Join(h.Dir, "pods", "uid-big", "volumes", "kubernetes.io~empty-dir", "cache")
	must(t, os.MkdirAll(cacheDir, 0o777))
	if out, err := h.CtrContext(ctx, "run", "-d", "--runtime", rakshRuntime, "--mount", "type=bind,src="+cacheDir+",dst=/cache,options=rbind:rw",
		busyboxRef, "big", "sleep", "900"); err != nil {
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

	exec := func(id, script string) (string, error, time.Duration) {
		start := time.Now()
		out, err := h.CtrContext(ctx, "task", "exec", "--exec-id", id, "big", "sh", "-c", script)
		return out, err, time.Since(start)
	}
	// Where things live: the emptyDir and the rootfs's writable layer on
	// the scratch filesystem, swap beside it.
	out, err, _ := exec("where", "awk '$5==\"/cache\"||$5==\"/\"' /proc/self/mountinfo; grep -E 'MemTotal|SwapTotal' /proc/meminfo; df -kP / /cache | tail -2 | awk '{print \"size\", $2}'")
	if err != nil || !strings.Contains(out, " /cache rw,nodev,") || !strings.Contains(out, " - ext4 /dev/raksh-scratch/fs rw") ||
		!strings.Contains(out, "upperdir=/run/raksh/big/") || !swapTotal(out) {
		t.Fatalf("emptyDir, rootfs and swap in the guest: %v %q", err, out)
	}
	// The rootfs's overlay reports its upper filesystem's size: the
	// scratch filesystem's, as the emptyDir does.
	if sizes := regexp.MustCompile(`size (\d+)`).FindAllStringSubmatch(out, -1); len(sizes) != 2 || sizes[0][1] != sizes[1][1] {
		t.Fatalf("rootfs and emptyDir not on the same filesystem: %q", out)
	}
	t.Logf("guest: %s", strings.Join(strings.Fields(out), " "))

	var rb [8]byte
	rand.Read(rb[:])
	marker := "raksh-scratch-marker-" + hex.EncodeToString(rb[:])
	const chunks = 1024 // MiB
	chunk := bytes.Repeat([]byte(marker+"\n"), (1<<20)/(len(marker)+1)+1)[:1<<20]
	sum := sha256.New()
	for range chunks {
		sum.Write(chunk)
	}
	want := hex.EncodeToString(sum.Sum(nil))

	// Write 1 GiB into the emptyDir (a 1 MiB chunk of marker lines, 1024
	// times), then hash it back: most of it from the disk.
	out, err, d := exec("write", fmt.Sprintf("yes %s | head -c 1048576 > /chunk && i=0 && while [ $i -lt %d ]; do cat /chunk; i=$((i+1)); done > /cache/big && sync && ls -l /cache/big", marker, chunks))
	if err != nil || !strings.Contains(out, fmt.Sprint(chunks<<20)) {
		t.Fatalf("write %d MiB: %v %q", chunks, err, out)
	}
	t.Logf("wrote %d MiB to the emptyDir in %s; QEMU RSS %s", chunks, d.Round(time.Second), rss(qemuPid))
	out, err, d = exec("read", "sha256sum /cache/big")
	if err != nil || !strings.Contains(out, want) {
		t.Fatalf("read back %d MiB: %v %q (want %s)", chunks, err, out, want)
	}
	t.Logf("read back and hashed %d MiB in %s", chunks, d.Round(time.Second))

	// The node's file: ciphertext only, and a lot of it.
	dataBytes, found := scanFor(t, disk, []byte(marker))
	if found {
		t.Fatal("the marker written in the guest is in the node's scratch file")
	}
	if dataBytes < chunks<<20 {
		t.Fatalf("only %d MiB of the scratch file were written", dataBytes>>20)
	}
	t.Logf("scratch file: %d MiB allocated, marker absent", dataBytes>>20)

	// Flip a byte every 64 KiB of written data past the first MiB.
	flipped := flipBytes(t, disk, 1<<20, 64<<10)
	t.Logf("flipped %d bytes in the node's scratch file", flipped)
	out, err, _ = exec("reread", "sha256sum /cache/big")
	if err == nil {
		t.Fatalf("reading data whose ciphertext the node changed succeeded: %q", out)
	}
	if strings.Contains(out, "/cache/big") && !strings.Contains(out, want) {
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
	if ents, _ := os.ReadDir(cacheDir); len(ents) != 0 {
		t.Fatalf("emptyDir content on the node: %v", ents)
	}
}

// swapTotal reports whether /proc/meminfo lines show a swap area.
func swapTotal(meminfo string) bool {
	for _, l := range strings.Split(meminfo, "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "SwapTotal:" {
			return f[1] != "0"
		}
	}
	return false
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

// TestGuestPullBigImageScratch: an image with a 600 MiB layer is pulled by
// a 512 MiB guest itself (raksh-snapshotter's guest pull) with a 2 GiB
// scratch disk: the layer is spooled, verified and unpacked onto the
// encrypted scratch filesystem, the container reads the whole file back
// intact, and the run leaves no disk file or device-mapper device on the
// node. Without a scratch disk the unpack would not fit in guest tmpfs.
func TestGuestPullBigImageScratch(t *testing.T) {
	harness.RequiresRoot(t)
	host, stop := imagetest.Registry()
	defer stop()
	const bigMiB = 600
	dir, err := os.MkdirTemp("/var/tmp", "rk-big-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	start := time.Now()
	ref := host + "/raksh/big:600"
	img := layeredImage(t, dir, bigMiB)
	if _, err := imagetest.Push(ref, img); err != nil {
		t.Fatal(err)
	}
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	os.RemoveAll(dir)
	t.Logf("%d MiB image built and pushed in %s", bigMiB, time.Since(start).Round(time.Second))
	// The blob's content, as writeBigTar makes it.
	sum := sha256.New()
	size := int64(bigMiB) << 20
	io.CopyN(sum, mrand.NewChaCha8([32]byte{byte(size >> 20)}), size)
	want := hex.EncodeToString(sum.Sum(nil))

	scratchDir, err := os.MkdirTemp("/var/tmp", "rk-scratch-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(scratchDir)
	dmBefore := hostDMDevices(t)
	s := startSnapshotter(t, guestPullConfig(host))
	h := withSnapshotterOpts(t, s, harness.Options{RuntimeConfig: fmt.Sprintf("memory_mib = 512\nscratch_disk_mib = 2048\nscratch_dir = %q\n[proxy]\nregistry = %q\n", scratchDir, host)})
	if out, err := h.Ctr("images", "pull", "--plain-http", "--snapshotter", "raksh", ref); err != nil {
		t.Fatalf("pull: %v\n%s", err, out)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 12*time.Minute)
	defer cancel()
	start = time.Now()
	if out, err := h.CtrContext(ctx, "run", "-d", "--snapshotter", "raksh", "--runtime", rakshRuntime, ref, "gpbig", "sleep", "600"); err != nil {
		t.Fatalf("run: %v %s", err, out)
	}
	waitStatus(t, h, "gpbig", "RUNNING", 10*time.Minute)
	t.Logf("running after %s (VM boot, guest pull of %d MiB onto the scratch disk)", time.Since(start).Round(100*time.Millisecond), bigMiB)
	qemu := h.QEMUProcesses()
	if len(qemu) != 1 {
		t.Fatalf("QEMU processes: %v", qemu)
	}
	t.Logf("QEMU RSS %s", rss(qemu[0]))
	start = time.Now()
	out, err := h.CtrContext(ctx, "task", "exec", "--exec-id", "check", "gpbig", "sh", "-c",
		"cat /etc/raksh-marker; sha256sum /data/blob; awk '$5==\"/\"' /proc/self/mountinfo; grep MemTotal /proc/meminfo")
	if err != nil {
		t.Fatalf("exec: %v %q", err, out)
	}
	if !strings.HasPrefix(out, "from-the-image\n"+want+"  /data/blob\n") || !strings.Contains(out, " - ext4 /dev/raksh-scratch/fs ") {
		t.Fatalf("in the guest: %q (want the marker, the blob's digest %s, a rootfs on the scratch filesystem)", out, want)
	}
	t.Logf("hashed the %d MiB file in %s; guest: %s", bigMiB, time.Since(start).Round(time.Second), strings.Join(strings.Fields(out)[3:], " "))
	content := contentDigests(t, h)
	for _, l := range layers {
		if d, err := l.Digest(); err != nil || strings.Contains(content, d.String()) {
			t.Fatalf("layer %v is in containerd's content store (%v)", d, err)
		}
	}

	h.CtrContext(ctx, "task", "kill", "-s", "SIGKILL", "gpbig")
	waitStatus(t, h, "gpbig", "STOPPED", 2*time.Minute)
	if out, err := h.CtrContext(ctx, "task", "rm", "gpbig"); err != nil {
		t.Fatalf("task rm: %v %s", err, out)
	}
	if out, err := h.CtrContext(ctx, "container", "rm", "gpbig"); err != nil {
		t.Fatalf("container rm: %v %s", err, out)
	}
	noLeftovers(t, h, "gpbig")
	deadline := time.Now().Add(30 * time.Second)
	for holders := scratchHolders(scratchDir); len(holders) > 0; holders = scratchHolders(scratchDir) {
		if time.Now().After(deadline) {
			t.Fatalf("scratch disk still held after the pod's removal: %v", holders)
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
