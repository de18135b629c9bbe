package pef

import "testing"

// FuzzFindESMBlob fuzzes the initrd scan (cpio) and the FDT parser behind
// the simulated ultravisor. Seeds: testdata/fuzz and a sealed initrd.
func FuzzFindESMBlob(f *testing.F) {
	fx := newFixture(f)
	f.Add(fx.sealed[:len(fx.sealed)-len(fx.initramfs)])
	f.Add([]byte("070701"))
	pk, _ := platformKeys(f)
	uv := NewSimUltravisor(pk)
	f.Fuzz(func(t *testing.T, b []byte) {
		blob, _, err := FindESMBlob(b)
		if err != nil {
			return
		}
		_, _ = parseFDT(blob)
		_, _ = uv.EnterSecureMode(BootParams{Kernel: []byte("k"), Initrd: b})
	})
}

// FuzzParseFDT fuzzes the FDT parser on raw bytes.
func FuzzParseFDT(f *testing.F) {
	fx := newFixture(f)
	blob, _, err := FindESMBlob(fx.sealed)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(blob)
	f.Fuzz(func(t *testing.T, b []byte) {
		if fdt, err := parseFDT(b); err == nil {
			_, _ = lookup(fdt.RootNode, "lockboxes", "lockbox-1")
		}
	})
}
