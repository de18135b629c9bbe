package pef

import "testing"

// BenchmarkSealInitrd measures sealing a 45 KiB initramfs with two files
// (RSA-OAEP wrap, AES-GCM, FDT and cpio encoding, SHA-512 digests).
func BenchmarkSealInitrd(b *testing.B) {
	fx := newFixture(b)
	pk, _ := platformKeys(b)
	files := map[string][]byte{"workload.key": fx.workloadKey}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := SealInitrd(&pk.PublicKey, fx.initramfs, SealInitrdOptions{Kernel: fx.kernel, Cmdline: fx.cmdline, Files: files}); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkSimEnterSecureMode measures the simulated ultravisor's UV_ESM
// checks and release (RSA-OAEP unwrap with a 3072-bit key, digests).
func BenchmarkSimEnterSecureMode(b *testing.B) {
	fx := newFixture(b)
	pk, _ := platformKeys(b)
	uv := NewSimUltravisor(pk)
	p := BootParams{Kernel: fx.kernel, Initrd: fx.sealed, Cmdline: fx.cmdline}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := uv.EnterSecureMode(p); err != nil {
			b.Fatal(err)
		}
	}
}
