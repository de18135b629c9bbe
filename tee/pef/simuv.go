package pef

import (
	"bytes"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/subtle"
	"fmt"
	"path"
	"sort"
	"strings"

	"github.com/containerd/errdefs"
	"github.com/u-root/u-root/pkg/cpio"
)

// Errors of the ESM checks, mirroring the ultravisor's UV_ESM results.
var (
	// ErrNoESMBlob: the initrd carries no ESM blob (U_PARAMETER).
	ErrNoESMBlob = fmt.Errorf("pef: no ESM blob in initrd: %w", errdefs.ErrNotFound)
	// ErrNoKey: the lockbox is not wrapped for this platform (U_NO_KEY).
	ErrNoKey = fmt.Errorf("pef: ESM blob not sealed for this platform: %w", errdefs.ErrPermissionDenied)
	// ErrIntegrity: a sealed digest or ciphertext does not match
	// (U_PERMISSION / U_PARAMETER on the ultravisor).
	ErrIntegrity = fmt.Errorf("pef: ESM integrity check failed: %w", errdefs.ErrPermissionDenied)
)

// SimUltravisor is a software stand-in for the Protected Execution
// Ultravisor's UV_ESM and UV_ESMB_GET_FILE handling, for machines without
// POWER9/10 PEF hardware. It is INSECURE: its wrapping key is a software key
// and nothing protects the VM's memory. It exists so the Raksh PEF mode
// (per-application sealed initrd, no key broker) runs end to end here.
type SimUltravisor struct {
	key *rsa.PrivateKey
}

// NewSimUltravisor returns a simulated ultravisor holding the platform
// wrapping key.
func NewSimUltravisor(key *rsa.PrivateKey) *SimUltravisor {
	return &SimUltravisor{key: key}
}

// GenerateWrappingKey returns a new RSA-3072 platform wrapping key for a
// simulated platform.
func GenerateWrappingKey() (*rsa.PrivateKey, error) {
	return rsa.GenerateKey(rand.Reader, 3072)
}

// BootParams are what the ultravisor measures when the VM asks to enter
// secure mode.
type BootParams struct {
	// Kernel is the kernel image at kbase.
	Kernel []byte
	// Initrd is the whole initrd (ESM cpio + initramfs).
	Initrd []byte
	// Cmdline is /chosen/bootargs.
	Cmdline string
	// RTAS is the RTAS text; nil uses PlatformRTAS.
	RTAS []byte
}

// EnterSecureMode performs the checks of UV_ESM: it locates the ESM blob in
// the initrd, unwraps the symmetric key, decrypts the sealed digests and
// compares them with the kernel, initramfs, command line and RTAS. On
// success it returns the attached files the VM may then read (what
// UV_ESMB_GET_FILE would hand out). Error messages never carry file
// contents.
func (u *SimUltravisor) EnterSecureMode(p BootParams) (map[string][]byte, error) {
	blob, initramfs, err := FindESMBlob(p.Initrd)
	if err != nil {
		return nil, err
	}
	f, err := parseFDT(blob)
	if err != nil {
		return nil, err
	}
	lb, ok := lookup(f.RootNode, "lockboxes", "lockbox-1")
	if !ok {
		return nil, fmt.Errorf("pef: no lockbox: %w", ErrIntegrity)
	}
	wrapped, ok := lb.LookProperty("encrypted-symkey")
	if !ok {
		return nil, fmt.Errorf("pef: no encrypted-symkey: %w", ErrIntegrity)
	}
	key, err := rsa.DecryptOAEP(sha256.New(), nil, u.key, wrapped.Value, nil)
	if err != nil || len(key) != symKeySize {
		return nil, ErrNoKey
	}
	dn, ok := lookup(f.RootNode, "digest", "digests-fdt")
	if !ok {
		return nil, fmt.Errorf("pef: no sealed digests: %w", ErrIntegrity)
	}
	digestsFDT, err := openNode(dn, key)
	if err != nil {
		return nil, err
	}
	df, err := parseFDT(digestsFDT)
	if err != nil {
		return nil, err
	}
	digests, ok := lookup(df.RootNode, "digests")
	if !ok {
		return nil, fmt.Errorf("pef: no /digests: %w", ErrIntegrity)
	}
	ksProp, ok := digests.LookProperty("kernel-size")
	if !ok {
		return nil, fmt.Errorf("pef: no kernel-size: %w", ErrIntegrity)
	}
	ks, err := ksProp.AsU32()
	if err != nil || int(ks) > len(p.Kernel) {
		return nil, fmt.Errorf("pef: kernel-size does not fit the kernel: %w", ErrIntegrity)
	}
	rtas := p.RTAS
	if rtas == nil {
		rtas = PlatformRTAS
	}
	var failed []string
	for _, c := range []struct {
		name string
		data []byte
	}{
		{"kernel", p.Kernel[:ks]},
		{"initrd", initramfs},
		{"bootargs", []byte(p.Cmdline)},
		{"rtas", rtas},
	} {
		want, ok := digests.LookProperty(c.name)
		got := sha512.Sum512(c.data)
		if !ok || subtle.ConstantTimeCompare(want.Value, got[:]) != 1 {
			failed = append(failed, c.name)
		}
	}
	if len(failed) > 0 {
		return nil, fmt.Errorf("%w: %s digest mismatch", ErrIntegrity, strings.Join(failed, ", "))
	}
	files := map[string][]byte{}
	ff, ok := f.RootNode.LookupChildByName("file")
	if !ok {
		return files, nil // attachments are optional (svm-esm.c)
	}
	prop, ok := ff.LookProperty("files-fdt")
	if !ok {
		return files, nil
	}
	filesFDT, err := parseFDT(prop.Value)
	if err != nil {
		return nil, err
	}
	dir, ok := filesFDT.RootNode.LookupChildByName("files")
	if !ok {
		return files, nil
	}
	for _, n := range dir.Children {
		pt, err := openNode(n, key)
		if err != nil {
			return nil, err
		}
		files[n.Name] = pt
	}
	return files, nil
}

// BootInitrd is the simulated boot: it runs EnterSecureMode and, on
// success, returns p.Initrd followed by a cpio archive that unpacks the
// released files into DefaultKeyDir (mode 0600) in the guest's initramfs,
// for DirSource to read. The shim uses it in simulated PEF mode; the host
// sees the released files, which is why this mode is insecure.
func (u *SimUltravisor) BootInitrd(p BootParams) ([]byte, error) {
	files, err := u.EnterSecureMode(p)
	if err != nil {
		return nil, err
	}
	arch, err := ReleasedArchive(files)
	if err != nil {
		return nil, err
	}
	out := make([]byte, 0, len(p.Initrd)+4+len(arch))
	out = append(out, p.Initrd...)
	// cpio archives in an initramfs start on 4-byte boundaries; the kernel
	// skips zero padding between them.
	for len(out)%4 != 0 {
		out = append(out, 0)
	}
	return append(out, arch...), nil
}

// ReleasedArchive returns a newc cpio archive placing files in
// DefaultKeyDir.
func ReleasedArchive(files map[string][]byte) ([]byte, error) {
	dir := strings.TrimPrefix(DefaultKeyDir, "/")
	recs := []cpio.Record{cpio.Directory(path.Dir(dir), 0o700), cpio.Directory(dir, 0o700)}
	names := make([]string, 0, len(files))
	for n := range files {
		if err := checkName(n); err != nil {
			return nil, err
		}
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		recs = append(recs, cpio.StaticRecord(files[n], cpio.Info{Name: path.Join(dir, n), Mode: cpio.S_IFREG | 0o600, NLink: 1}))
	}
	var buf bytes.Buffer
	w := cpio.Newc.Writer(&buf)
	if err := cpio.WriteRecords(w, recs); err != nil {
		return nil, err
	}
	if err := cpio.WriteTrailer(w); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}
