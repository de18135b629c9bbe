package pef

import (
	"sync"
	"testing"
)

// fuzzUV is created on first use: RSA key generation would otherwise
// dominate every fuzz worker's start-up.
var (
	fuzzUVOnce sync.Once
	fuzzUV     *SimUltravisor
)

func simUVForFuzz(t *testing.T) *SimUltravisor {
	fuzzUVOnce.Do(func() {
		pk, _ := platformKeys(t)
		fuzzUV = NewSimUltravisor(pk)
	})
	return fuzzUV
}

// FuzzFindESMBlob fuzzes the initrd scan (cpio), the FDT parser and the
// simulated ultravisor's checks. Seeds: testdata/fuzz (a sealed ESM cpio).
func FuzzFindESMBlob(f *testing.F) {
	f.Add([]byte("070701"))
	f.Fuzz(func(t *testing.T, b []byte) {
		blob, _, err := FindESMBlob(b)
		if err != nil {
			return
		}
		if _, err := parseFDT(blob); err != nil {
			return
		}
		if files, err := simUVForFuzz(t).EnterSecureMode(BootParams{Kernel: []byte("k"), Initrd: b}); err == nil {
			t.Fatalf("fuzzed initrd released %d files", len(files))
		}
	})
}

// FuzzParseFDT fuzzes the FDT parser on raw bytes. Seeds: testdata/fuzz
// (an ESM blob).
func FuzzParseFDT(f *testing.F) {
	f.Add([]byte{0xd0, 0x0d, 0xfe, 0xed})
	f.Fuzz(func(t *testing.T, b []byte) {
		if fdt, err := parseFDT(b); err == nil {
			_, _ = lookup(fdt.RootNode, "lockboxes", "lockbox-1")
		}
	})
}
