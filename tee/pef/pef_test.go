package pef

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/binary"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/containerd/errdefs"
	"github.com/u-root/u-root/pkg/cpio"

	"github.com/raksh-project/raksh/tee"
)

var (
	keysOnce                   sync.Once
	platformKey, otherPlatform *rsa.PrivateKey
)

func platformKeys(t testing.TB) (*rsa.PrivateKey, *rsa.PrivateKey) {
	t.Helper()
	keysOnce.Do(func() {
		var err error
		if platformKey, err = GenerateWrappingKey(); err != nil {
			panic(err)
		}
		if otherPlatform, err = GenerateWrappingKey(); err != nil {
			panic(err)
		}
	})
	return platformKey, otherPlatform
}

type fixture struct {
	kernel, initramfs, sealed []byte
	cmdline                   string
	attestKey                 *ecdsa.PrivateKey
	workloadKey               []byte
}

func newFixture(t testing.TB) fixture {
	t.Helper()
	pk, _ := platformKeys(t)
	f := fixture{
		kernel:      bytes.Repeat([]byte("vmlinux "), 4096),
		initramfs:   bytes.Repeat([]byte("initramfs raksh-agent "), 2048),
		cmdline:     "console=hvc0 svm=on raksh.init_data=" + strings.Repeat("ab", 32),
		workloadKey: bytes.Repeat([]byte{0x5a}, 32),
	}
	var err error
	if f.attestKey, err = ecdsa.GenerateKey(elliptic.P384(), rand.Reader); err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(f.attestKey)
	if err != nil {
		t.Fatal(err)
	}
	f.sealed, err = SealInitrd(&pk.PublicKey, f.initramfs, SealInitrdOptions{
		Kernel:  f.kernel,
		Cmdline: f.cmdline,
		Files: map[string][]byte{
			AttestationKeyFile: pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}),
			"workload.key":     f.workloadKey,
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func TestSealedInitrdLayout(t *testing.T) {
	f := newFixture(t)
	// The ESM archive is a newc cpio whose first file is under opt/ibm/pef
	// and holds an FDT at a 4-byte aligned offset; the initramfs follows at
	// a 512-byte boundary (svm-esm.c).
	if !bytes.HasPrefix(f.sealed, []byte("070701")) {
		t.Fatal("sealed initrd does not start with a newc header")
	}
	recs, err := cpio.ReadAllRecords(cpio.Newc.Reader(bytes.NewReader(f.sealed)))
	if err != nil {
		t.Fatal(err)
	}
	var blobRec *cpio.Record
	for i := range recs {
		if recs[i].FileSize > 0 {
			blobRec = &recs[i]
			break
		}
	}
	if blobRec == nil || blobRec.Name != ESMBlobPath || blobRec.FilePos%4 != 0 {
		t.Fatalf("first file record %+v", blobRec)
	}
	if magic := binary.BigEndian.Uint32(f.sealed[blobRec.FilePos:]); magic != 0xd00dfeed {
		t.Fatalf("ESM file starts with %#x, want the FDT magic", magic)
	}
	off := len(f.sealed) - len(f.initramfs)
	if off%512 != 0 || !bytes.Equal(f.sealed[off:], f.initramfs) {
		t.Fatalf("initramfs at offset %d", off)
	}
	blob, rest, err := FindESMBlob(f.sealed)
	if err != nil || !bytes.Equal(rest, f.initramfs) {
		t.Fatalf("FindESMBlob = %v (rest %d bytes)", err, len(rest))
	}
	esm, err := parseFDT(blob)
	if err != nil {
		t.Fatal(err)
	}
	for _, path := range [][]string{{"lockboxes", "lockbox-1"}, {"digest", "digests-fdt"}, {"file"}} {
		if _, ok := lookup(esm.RootNode, path...); !ok {
			t.Errorf("ESM blob lacks /%s", strings.Join(path, "/"))
		}
	}
	// No plaintext in the sealed initrd's ESM part.
	if bytes.Contains(f.sealed[:off], f.workloadKey) || bytes.Contains(f.sealed[:off], []byte("PRIVATE KEY")) {
		t.Fatal("sealed initrd leaks a sealed file in the clear")
	}
}

func TestSimUltravisorReleases(t *testing.T) {
	f := newFixture(t)
	pk, _ := platformKeys(t)
	files, err := NewSimUltravisor(pk).EnterSecureMode(BootParams{Kernel: f.kernel, Initrd: f.sealed, Cmdline: f.cmdline})
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(files["workload.key"], f.workloadKey) || len(files) != 2 {
		t.Fatalf("released %d files", len(files))
	}
}

func TestSimUltravisorRefuses(t *testing.T) {
	f := newFixture(t)
	pk, other := platformKeys(t)
	tamperedInitrd := bytes.Clone(f.sealed)
	tamperedInitrd[len(tamperedInitrd)-1] ^= 1
	otherKernel := bytes.Clone(f.kernel)
	otherKernel[10] ^= 1
	for _, tc := range []struct {
		name string
		uv   *rsa.PrivateKey
		p    BootParams
		want error
	}{
		{"other platform", other, BootParams{Kernel: f.kernel, Initrd: f.sealed, Cmdline: f.cmdline}, ErrNoKey},
		{"other kernel", pk, BootParams{Kernel: otherKernel, Initrd: f.sealed, Cmdline: f.cmdline}, ErrIntegrity},
		{"other init data on the command line", pk, BootParams{Kernel: f.kernel, Initrd: f.sealed, Cmdline: strings.Replace(f.cmdline, "abab", "cdcd", 1)}, ErrIntegrity},
		{"tampered initramfs", pk, BootParams{Kernel: f.kernel, Initrd: tamperedInitrd, Cmdline: f.cmdline}, ErrIntegrity},
		{"other RTAS", pk, BootParams{Kernel: f.kernel, Initrd: f.sealed, Cmdline: f.cmdline, RTAS: []byte{0}}, ErrIntegrity},
		{"no ESM blob", pk, BootParams{Kernel: f.kernel, Initrd: f.initramfs, Cmdline: f.cmdline}, ErrNoESMBlob},
		{"ESM blob stripped", pk, BootParams{Kernel: f.kernel, Initrd: f.sealed[len(f.sealed)-len(f.initramfs):], Cmdline: f.cmdline}, ErrNoESMBlob},
	} {
		t.Run(tc.name, func(t *testing.T) {
			files, err := NewSimUltravisor(tc.uv).EnterSecureMode(tc.p)
			if !errors.Is(err, tc.want) || files != nil {
				t.Fatalf("EnterSecureMode = %d files, %v; want %v", len(files), err, tc.want)
			}
			if strings.Contains(err.Error(), string(f.workloadKey)) {
				t.Fatal("error leaks a sealed file")
			}
		})
	}
}

func TestSimUltravisorTamperedCiphertext(t *testing.T) {
	f := newFixture(t)
	pk, _ := platformKeys(t)
	blob, _, err := FindESMBlob(f.sealed)
	if err != nil {
		t.Fatal(err)
	}
	// Flip the last ciphertext byte of the digests node inside the blob.
	start := bytes.Index(f.sealed, blob)
	esm, _ := parseFDT(blob)
	dn, _ := lookup(esm.RootNode, "digest", "digests-fdt")
	ct, _ := dn.LookProperty("ciphertext")
	i := bytes.Index(blob, ct.Value)
	tampered := bytes.Clone(f.sealed)
	tampered[start+i+len(ct.Value)-1] ^= 1
	if _, err := NewSimUltravisor(pk).EnterSecureMode(BootParams{Kernel: f.kernel, Initrd: tampered, Cmdline: f.cmdline}); !errors.Is(err, ErrIntegrity) {
		t.Fatalf("EnterSecureMode(tampered) = %v", err)
	}
}

func TestBuildESMBlobLimits(t *testing.T) {
	pk, _ := platformKeys(t)
	for name, files := range map[string]map[string][]byte{
		"long name":  {strings.Repeat("n", MaxFileNameSize+1): nil},
		"slash":      {"a/b": nil},
		"empty name": {"": nil},
		"big file":   {"k": make([]byte, MaxFileSize+1)},
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := BuildESMBlob(&pk.PublicKey, Digests{}, files); !errdefs.IsInvalidArgument(err) {
				t.Fatalf("BuildESMBlob = %v", err)
			}
		})
	}
	if _, err := BuildESMBlob(nil, Digests{}, nil); !errdefs.IsInvalidArgument(err) {
		t.Fatalf("nil key: %v", err)
	}
}

// TestPEFModeEndToEnd runs Raksh's PEF mode on the simulated ultravisor:
// seal, boot-time release into the guest's key directory, the agent reading
// its workload key, and attestation with the released key.
func TestPEFModeEndToEnd(t *testing.T) {
	f := newFixture(t)
	pk, _ := platformKeys(t)
	files, err := NewSimUltravisor(pk).EnterSecureMode(BootParams{Kernel: f.kernel, Initrd: f.sealed, Cmdline: f.cmdline})
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "pef")
	if err := WriteReleased(dir, files); err != nil {
		t.Fatal(err)
	}
	if st, err := os.Stat(filepath.Join(dir, "workload.key")); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("released file mode: %v %v", st, err)
	}
	a := NewAttester(WithKeyDir(dir), OnSimulatedUltravisor())
	got, err := a.KeySource().ReadFile("workload.key")
	if err != nil || !bytes.Equal(got, f.workloadKey) {
		t.Fatalf("workload key: %v", err)
	}
	if _, err := a.KeySource().ReadFile("../etc/passwd"); !errdefs.IsInvalidArgument(err) {
		t.Fatalf("path traversal: %v", err)
	}
	if _, err := a.KeySource().ReadFile("missing"); !errdefs.IsNotFound(err) {
		t.Fatalf("missing: %v", err)
	}
	rd := [tee.ReportDataSize]byte{1, 2, 3}
	ev, err := a.Evidence(context.Background(), rd)
	if err != nil {
		t.Fatal(err)
	}
	der, _ := x509.MarshalPKIXPublicKey(&f.attestKey.PublicKey)
	pubFile := filepath.Join(t.TempDir(), "attest.pub")
	os.WriteFile(pubFile, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), 0o644)
	v, err := NewVerifier(VerifierConfig{SimulatedKeys: []string{pubFile}})
	if err != nil {
		t.Fatal(err)
	}
	c, err := v.Verify(context.Background(), ev, rd)
	if err != nil || c.TEE != tee.PEF || !c.Insecure || c.ReportData != rd || len(c.Measurement) != 48 {
		t.Fatalf("Verify = %+v, %v", c, err)
	}
	if c.InitDataDigest != nil {
		t.Fatalf("init-data digest %x from a command line without one", c.InitDataDigest)
	}
	// The init-data digest of the command line (sealed with it) is in
	// the signed evidence and the claims.
	digest := bytes.Repeat([]byte{0xab}, 32)
	cmdline := filepath.Join(t.TempDir(), "cmdline")
	os.WriteFile(cmdline, []byte("console=ttyS0 svm=on raksh.init_data="+strings.Repeat("ab", 32)+"\n"), 0o644)
	defer func(p string) { CmdlinePath = p }(CmdlinePath)
	CmdlinePath = cmdline
	ev2, err := a.Evidence(context.Background(), rd)
	if err != nil {
		t.Fatal(err)
	}
	if c, err := v.Verify(context.Background(), ev2, rd); err != nil || !bytes.Equal(c.InitDataDigest, digest) {
		t.Fatalf("init-data digest in the claims: %+v, %v", c, err)
	}
	// The same key trusted for hardware: the evidence of a VM the
	// simulated ultravisor booted is refused, a hardware VM's (no
	// simulated statement) is accepted and not insecure.
	hw, err := NewVerifier(VerifierConfig{TrustedKeys: []string{pubFile}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := hw.Verify(context.Background(), ev, rd); !errors.Is(err, ErrSimulated) {
		t.Fatalf("simulated evidence under a hardware key: %v", err)
	}
	hwEv, err := NewAttester(WithKeyDir(dir)).Evidence(context.Background(), rd)
	if err != nil {
		t.Fatal(err)
	}
	if c, err := hw.Verify(context.Background(), hwEv, rd); err != nil || c.Insecure {
		t.Fatalf("hardware evidence: %+v, %v", c, err)
	}
	// A key listed as simulated stays insecure whatever the evidence says.
	if c, err := v.Verify(context.Background(), hwEv, rd); err != nil || !c.Insecure {
		t.Fatalf("evidence without the statement under a simulated key: %+v, %v", c, err)
	}
	if _, err := v.Verify(context.Background(), ev, [tee.ReportDataSize]byte{9}); !errors.Is(err, ErrReportData) {
		t.Fatalf("replayed report data: %v", err)
	}
	stranger, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	v2, _ := NewVerifier(VerifierConfig{}, &stranger.PublicKey)
	if _, err := v2.Verify(context.Background(), ev, rd); !errors.Is(err, ErrSignature) {
		t.Fatalf("untrusted key: %v", err)
	}
	bad := bytes.Clone(ev)
	bad[len(bad)-5] ^= 1
	if _, err := v.Verify(context.Background(), bad, rd); err == nil {
		t.Fatal("tampered evidence verified")
	}
	if _, err := NewAttester(WithKeyDir(t.TempDir())).Evidence(context.Background(), rd); !errdefs.IsNotFound(err) {
		t.Fatalf("attester without released key: %v", err)
	}
}

func TestVerifierTrustedKeyFile(t *testing.T) {
	k, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	der, _ := x509.MarshalPKIXPublicKey(&k.PublicKey)
	p := filepath.Join(t.TempDir(), "keys.pem")
	os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), 0o644)
	if _, err := NewVerifier(VerifierConfig{TrustedKeys: []string{p}}); err != nil {
		t.Fatal(err)
	}
	if _, err := NewVerifier(VerifierConfig{}); !errdefs.IsInvalidArgument(err) {
		t.Fatalf("no keys: %v", err)
	}
	k256, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, _ = x509.MarshalPKIXPublicKey(&k256.PublicKey)
	os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), 0o644)
	if _, err := NewVerifier(VerifierConfig{TrustedKeys: []string{p}}); !errdefs.IsInvalidArgument(err) {
		t.Fatalf("P-256 key: %v", err)
	}
}

// fakeUltravisor answers UV_ESMB_GET_FILE like uvcall.c: the name packed
// big-endian in 8 double words, up to 64 bytes per call, data packed the
// same way, 0 at the end, negative for an unknown file.
func fakeUltravisor(files map[string][]byte, calls *int) ucallFunc {
	return func(offset uint64, name *[8]uint64, out *[8]uint64) int64 {
		*calls++
		var nb []byte
		for _, dw := range name {
			for j := 0; j < 8; j++ {
				nb = append(nb, byte(dw>>(56-8*j)))
			}
		}
		data, ok := files[string(bytes.TrimRight(nb, "\x00"))]
		if !ok {
			return -4 // U_PARAMETER
		}
		if offset >= uint64(len(data)) {
			return 0
		}
		chunk := data[offset:]
		if len(chunk) > 64 {
			chunk = chunk[:64]
		}
		var buf [64]byte
		copy(buf[:], chunk)
		for i := range out {
			out[i] = binary.BigEndian.Uint64(buf[i*8:])
		}
		return int64(len(chunk))
	}
}

func TestUltravisorSourceProtocol(t *testing.T) {
	secret := bytes.Repeat([]byte("0123456789"), 20) // 200 bytes: 4 calls
	calls := 0
	u := &UltravisorSource{call: fakeUltravisor(map[string][]byte{"workload.key": secret}, &calls), cache: map[string][]byte{}}
	got, err := u.ReadFile("workload.key")
	if err != nil || !bytes.Equal(got, secret) {
		t.Fatalf("ReadFile = %d bytes, %v", len(got), err)
	}
	n := calls
	if _, err := u.ReadFile("workload.key"); err != nil || calls != n {
		t.Fatalf("second read went to the ultravisor again (read-once files): %v", err)
	}
	if _, err := u.ReadFile("nope"); !errdefs.IsNotFound(err) {
		t.Fatalf("unknown file: %v", err)
	}
	exact := bytes.Repeat([]byte{7}, 128)
	u2 := &UltravisorSource{call: fakeUltravisor(map[string][]byte{"k": exact}, &calls), cache: map[string][]byte{}}
	if got, err := u2.ReadFile("k"); err != nil || !bytes.Equal(got, exact) {
		t.Fatalf("64-byte multiple: %d bytes, %v", len(got), err)
	}
}

func TestNewUltravisorSourceOffPower(t *testing.T) {
	if esmbGetFileUcall != nil {
		t.Skip("ppc64le build")
	}
	if _, err := NewUltravisorSource(); !errdefs.IsNotImplemented(err) {
		t.Fatalf("NewUltravisorSource = %v", err)
	}
}

// TestHostileSizes checks that declared sizes are bounded before u-root's
// parsers allocate them (found while fuzzing: gigabyte allocations).
func TestHostileSizes(t *testing.T) {
	fx := newFixture(t)
	blob, _, err := FindESMBlob(fx.sealed)
	if err != nil {
		t.Fatal(err)
	}
	hugeStrings := bytes.Clone(blob)
	binary.BigEndian.PutUint32(hugeStrings[32:], 0xfffffff0) // size_dt_strings
	if _, err := parseFDT(hugeStrings); !errdefs.IsInvalidArgument(err) {
		t.Fatalf("huge strings block: %v", err)
	}
	// A property claiming 4 GiB: patch the first FDT_PROP length.
	hugeProp := bytes.Clone(blob)
	off := binary.BigEndian.Uint32(hugeProp[8:])
	for i := off; i+12 < uint32(len(hugeProp)); i += 4 {
		if binary.BigEndian.Uint32(hugeProp[i:]) == 3 {
			binary.BigEndian.PutUint32(hugeProp[i+4:], 0xffffff00)
			break
		}
	}
	if _, err := parseFDT(hugeProp); !errdefs.IsInvalidArgument(err) {
		t.Fatalf("huge property: %v", err)
	}
	hugeName := bytes.Clone(fx.sealed)
	copy(hugeName[94:102], "FFFFFFFF") // namesize of the first record
	if _, _, err := FindESMBlob(hugeName); !errors.Is(err, ErrNoESMBlob) {
		t.Fatalf("huge cpio name: %v", err)
	}
}

func TestSimBootInitrd(t *testing.T) {
	f := newFixture(t)
	pk, other := platformKeys(t)
	out, err := NewSimUltravisor(pk).BootInitrd(BootParams{Kernel: f.kernel, Initrd: f.sealed, Cmdline: f.cmdline})
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(out, f.sealed) {
		t.Fatal("boot initrd does not start with the sealed initrd")
	}
	start := (len(f.sealed) + 3) &^ 3
	recs, err := cpio.ReadAllRecords(cpio.Newc.Reader(bytes.NewReader(out[start:])))
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, r := range recs {
		if r.Name == "raksh/pef/workload.key" {
			b := make([]byte, r.FileSize)
			r.ReadAt(b, 0)
			found = bytes.Equal(b, f.workloadKey) && r.Mode&0o777 == 0o600
		}
	}
	if !found {
		t.Fatalf("released workload key not in the appended archive: %v", recs)
	}
	if _, err := NewSimUltravisor(other).BootInitrd(BootParams{Kernel: f.kernel, Initrd: f.sealed, Cmdline: f.cmdline}); !errors.Is(err, ErrNoKey) {
		t.Fatalf("BootInitrd on another platform = %v", err)
	}
}

func TestBuildESMBlobRefusesWeakPlatformKey(t *testing.T) {
	k, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := BuildESMBlob(&k.PublicKey, Digests{}, nil); !errdefs.IsInvalidArgument(err) {
		t.Fatalf("1024-bit platform key: %v", err)
	}
}
