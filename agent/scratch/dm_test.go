package scratch

import (
	"bytes"
	"encoding/binary"
	"strings"
	"testing"
)

func TestTableParams(t *testing.T) {
	if got, want := IntegrityParams("252:0"), "252:0 0 48 J 1 block_size:4096"; got != want {
		t.Errorf("integrity params %q, want %q", got, want)
	}
	key := bytes.Repeat([]byte{0xab}, KeySize)
	got, err := CryptParams("253:0", key)
	if err != nil {
		t.Fatal(err)
	}
	want := "capi:authenc(hmac(sha256),xts(aes))-random " + strings.Repeat("ab", KeySize) + " 0 253:0 0 2 integrity:48:aead sector_size:4096"
	if got != want {
		t.Errorf("crypt params\n%q\nwant\n%q", got, want)
	}
	if _, err := CryptParams("253:0", key[:64]); err == nil {
		t.Error("a 64-byte key (no HMAC key) was accepted")
	}
}

func TestEncodeIoctl(t *testing.T) {
	b, err := encodeIoctl("raksh-scratch-crypt", 0, []Target{
		{Start: 0, Length: 8, Type: "integrity", Params: "252:0 0 48 D 1 block_size:4096"},
		{Start: 8, Length: 16, Type: "zero", Params: ""},
	})
	if err != nil {
		t.Fatal(err)
	}
	le := binary.LittleEndian
	if v := [3]uint32{le.Uint32(b[0:]), le.Uint32(b[4:]), le.Uint32(b[8:])}; v != [3]uint32{4, 0, 0} {
		t.Errorf("version %v", v)
	}
	if int(le.Uint32(b[12:])) != len(b) || le.Uint32(b[16:]) != sizeofDmIoctl || le.Uint32(b[20:]) != 2 {
		t.Errorf("data_size %d (len %d) data_start %d target_count %d", le.Uint32(b[12:]), len(b), le.Uint32(b[16:]), le.Uint32(b[20:]))
	}
	if name := string(bytes.TrimRight(b[48:176], "\x00")); name != "raksh-scratch-crypt" {
		t.Errorf("name %q", name)
	}
	spec := b[sizeofDmIoctl:]
	params := "252:0 0 48 D 1 block_size:4096"
	padded := (len(params) + 1 + 7) &^ 7
	if le.Uint64(spec[0:]) != 0 || le.Uint64(spec[8:]) != 8 || int(le.Uint32(spec[20:])) != sizeofDmTargetSpec+padded {
		t.Errorf("first target: start %d length %d next %d", le.Uint64(spec[0:]), le.Uint64(spec[8:]), le.Uint32(spec[20:]))
	}
	if typ := string(bytes.TrimRight(spec[24:40], "\x00")); typ != "integrity" {
		t.Errorf("target type %q", typ)
	}
	if p := string(spec[40 : 40+len(params)]); p != params || spec[40+len(params)] != 0 {
		t.Errorf("params %q", p)
	}
	second := spec[sizeofDmTargetSpec+padded:]
	if le.Uint64(second[0:]) != 8 || le.Uint64(second[8:]) != 16 || le.Uint32(second[20:]) != 0 || string(bytes.TrimRight(second[24:40], "\x00")) != "zero" {
		t.Errorf("second target %x", second[:40])
	}
	for _, bad := range []struct {
		name string
		tt   []Target
	}{
		{"", nil},
		{strings.Repeat("n", 128), nil},
		{"ok", []Target{{Type: strings.Repeat("t", 16)}}},
	} {
		if _, err := encodeIoctl(bad.name, 0, bad.tt); err == nil {
			t.Errorf("encodeIoctl(%q, %v) accepted", bad.name, bad.tt)
		}
	}
}

func TestSwapHeader(t *testing.T) {
	h, err := SwapHeader(1 << 30)
	if err != nil {
		t.Fatal(err)
	}
	if len(h) != 4096 || string(h[4096-10:]) != "SWAPSPACE2" {
		t.Fatalf("signature %q", h[4096-10:])
	}
	if v, last := binary.LittleEndian.Uint32(h[1024:]), binary.LittleEndian.Uint32(h[1028:]); v != 1 || last != (1<<30)/4096-1 {
		t.Errorf("version %d last_page %d", v, last)
	}
	if _, err := SwapHeader(4096 * 5); err == nil {
		t.Error("a 5-page swap area was accepted")
	}
}

func TestProvidedSectors(t *testing.T) {
	sb := make([]byte, 512)
	copy(sb, "integrt\x00")
	binary.LittleEndian.PutUint64(sb[16:], 2000000)
	if n, err := ProvidedSectors(sb); err != nil || n != 2000000 {
		t.Errorf("ProvidedSectors = %d, %v", n, err)
	}
	if _, err := ProvidedSectors(make([]byte, 512)); err == nil {
		t.Error("a zeroed superblock was accepted")
	}
}

// TestSplit: a quarter of the device is swap, capped at the guest's
// memory; block aligned; no swap on a device too small for it.
func TestSplit(t *testing.T) {
	const mib = 1 << 20 / 512 // sectors
	for _, tc := range []struct {
		sectors  uint64
		mem      int64
		fs, swap uint64
	}{
		{2048 * mib, 480 << 20, 1568 * mib, 480 * mib},
		{1024 * mib, 480 << 20, 768 * mib, 256 * mib},
		{64 * mib, 480 << 20, 48 * mib, 16 * mib},
		{60 * mib, 480 << 20, 60 * mib, 0},
		{2048*mib + 7, 480<<20 + 5, 1568*mib + 0, 480 * mib},
		{2048 * mib, 0, 2048 * mib, 0},
	} {
		fs, swap := Split(tc.sectors, tc.mem)
		if fs != tc.fs || swap != tc.swap || fs%8 != 0 || swap%8 != 0 {
			t.Errorf("Split(%d, %d) = %d, %d; want %d, %d", tc.sectors, tc.mem, fs, swap, tc.fs, tc.swap)
		}
	}
}

// TestMke2fsArgs: 4 KiB blocks (dm-crypt's sector), forced, no reserved
// blocks, the image and its size in KiB last; at most maxInodes inodes.
func TestMke2fsArgs(t *testing.T) {
	got := strings.Join(Mke2fsArgs("/tmp/img", 1568<<20), " ")
	if want := "-F -b 4096 -m 0 -i 16384 /tmp/img 1605632"; got != want {
		t.Fatalf("mke2fs %s, want %s", got, want)
	}
	for size, want := range map[int64]int64{64 << 20: 16384, 4 << 30: 16384, 5 << 30: 32768, 64 << 30: 262144} {
		if r := InodeRatio(size); r != want || size/r > maxInodes {
			t.Errorf("InodeRatio(%d MiB) = %d, want %d", size>>20, r, want)
		}
	}
	if LinearParams("253:1", 4096) != "253:1 4096" {
		t.Fatal(LinearParams("253:1", 4096))
	}
	if dirOf("", BundlesDir) != "" || dirOf(MountPoint, BundlesDir) != "/run/raksh-scratch/bundles" {
		t.Fatal("dirOf")
	}
}
