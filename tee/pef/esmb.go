// Package pef is the IBM Power Protected Execution Facility backend, in
// Raksh's original mode: no key broker; each application's keys are sealed
// into its initrd for the platform, and the Protected Execution Ultravisor
// releases them only to a secure VM whose kernel, initrd and command line
// match the digests sealed with them.
//
// The ESM ("Enter Secure Mode") blob written here follows the layout the
// open-source Protected Execution Ultravisor (open-power/ultravisor,
// svm-esmb.c, svm-esm.c, uvcall.c) reads:
//
//	/lockboxes/lockbox-1   encrypted-symkey   the 32-byte AES key, wrapped
//	                                          for the platform's wrapping key
//	/digest/digests-fdt    algorithm, iv, mac, ciphertext
//	                       AES-256-GCM of an FDT with /digests { kernel,
//	                       kernel-size, initrd, bootargs, rtas } (SHA-512)
//	/file                  files-fdt          an FDT whose /files/<name>
//	                       nodes hold algorithm, iv, mac, ciphertext of each
//	                       attached file (AES-256-GCM, same key)
//
// and is carried as the first cpio archive of the initrd, as a file under
// opt/ibm/pef/, the archive padded to 512 bytes; the initrd digest covers
// what follows. What public sources do not pin down (the padding scheme the
// TPM uses to unwrap the lockbox, the content of "algorithm") is chosen
// here and documented in docs/tee.md: the format is structurally
// compatible, not verified against an ultravisor.
//
// Sources: open-power/ultravisor (svm-esmb.c, svm-esm.c, uvcall.c,
// svm-crypto.c) and skiboot's TPM wrapping-key setup.
package pef

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/binary"
	"fmt"
	"io"
	"sort"

	"github.com/containerd/errdefs"
	"github.com/u-root/u-root/pkg/dt"
)

// Limits the ultravisor imposes on attached files (uvcall.c): names of at
// most 64 bytes (passed in R5..R12), contents read into one page.
const (
	MaxFileNameSize = 64
	MaxFileSize     = 4096
	symKeySize      = 32
	gcmIVSize       = 12
	// algorithmAESGCM is the "algorithm" property value. The ultravisor
	// only requires the property to exist.
	algorithmAESGCM = "aes256-gcm"
)

// Digests are the SHA-512 digests of the boot components the ultravisor
// checks before it lets a VM become secure.
type Digests struct {
	// Kernel is SHA-512 over the first KernelSize bytes of the kernel image
	// as loaded at kbase.
	Kernel     [sha512.Size]byte
	KernelSize uint32
	// Initrd is SHA-512 of the initramfs that follows the ESM cpio.
	Initrd [sha512.Size]byte
	// Bootargs is SHA-512 of /chosen/bootargs (the kernel command line,
	// without its terminating NUL).
	Bootargs [sha512.Size]byte
	// RTAS is SHA-512 of the RTAS text the firmware (SLOF) installs.
	RTAS [sha512.Size]byte
}

// DigestsFor computes Digests for a kernel, initramfs, command line and
// RTAS text.
func DigestsFor(kernel, initramfs []byte, cmdline string, rtas []byte) Digests {
	return Digests{
		Kernel:     sha512.Sum512(kernel),
		KernelSize: uint32(len(kernel)),
		Initrd:     sha512.Sum512(initramfs),
		Bootargs:   sha512.Sum512([]byte(cmdline)),
		RTAS:       sha512.Sum512(rtas),
	}
}

// PlatformRTAS is the RTAS text QEMU's SLOF installs (mr r4,r3; lis r3,0;
// ori r3,r3,0xf000; sc 1; blr), as the ultravisor source documents it.
var PlatformRTAS = []byte{
	0x7c, 0x64, 0x1b, 0x78,
	0x3c, 0x60, 0x00, 0x00,
	0x60, 0x63, 0xf0, 0x00,
	0x44, 0x00, 0x00, 0x22,
	0x4e, 0x80, 0x00, 0x20,
}

// BuildESMBlob returns an ESM blob sealing d and files for the platform
// whose ultravisor holds the private half of wrapKey. The symmetric key is
// wrapped with RSA-OAEP (SHA-256, empty label), matching the TPM wrapping
// key skiboot creates for the ultravisor (RSA-2048, TPM_ALG_OAEP with
// SHA-256, persistent handle 0x81800001; export its public part on the host
// with TPM2_ReadPublic).
func BuildESMBlob(wrapKey *rsa.PublicKey, d Digests, files map[string][]byte) ([]byte, error) {
	if wrapKey == nil {
		return nil, fmt.Errorf("pef: no platform wrapping key: %w", errdefs.ErrInvalidArgument)
	}
	if wrapKey.N.BitLen() < 2048 {
		return nil, fmt.Errorf("pef: platform wrapping key has %d bits, want at least 2048: %w", wrapKey.N.BitLen(), errdefs.ErrInvalidArgument)
	}
	for name, data := range files {
		if name == "" || len(name) > MaxFileNameSize || bytes.ContainsAny([]byte(name), "/\x00") {
			return nil, fmt.Errorf("pef: bad file name %q (1..%d bytes, no '/'): %w", name, MaxFileNameSize, errdefs.ErrInvalidArgument)
		}
		if len(data) > MaxFileSize {
			return nil, fmt.Errorf("pef: file %q is %d bytes, limit %d: %w", name, len(data), MaxFileSize, errdefs.ErrInvalidArgument)
		}
	}
	key := make([]byte, symKeySize)
	if _, err := io.ReadFull(rand.Reader, key); err != nil {
		return nil, err
	}
	wrapped, err := rsa.EncryptOAEP(sha256.New(), rand.Reader, wrapKey, key, nil)
	if err != nil {
		return nil, fmt.Errorf("pef: failed to wrap the symmetric key: %w", err)
	}
	digestsFDT, err := marshalFDT(dt.NewNode("", dt.WithChildren(
		dt.NewNode("digests", dt.WithProperty(
			dt.Property{Name: "kernel", Value: d.Kernel[:]},
			dt.PropertyU32("kernel-size", d.KernelSize),
			dt.Property{Name: "initrd", Value: d.Initrd[:]},
			dt.Property{Name: "bootargs", Value: d.Bootargs[:]},
			dt.Property{Name: "rtas", Value: d.RTAS[:]},
		)),
	)))
	if err != nil {
		return nil, err
	}
	digestNode, err := sealedNode("digests-fdt", key, digestsFDT)
	if err != nil {
		return nil, err
	}
	names := make([]string, 0, len(files))
	for n := range files {
		names = append(names, n)
	}
	sort.Strings(names)
	var fileNodes []*dt.Node
	for _, n := range names {
		fn, err := sealedNode(n, key, files[n])
		if err != nil {
			return nil, err
		}
		fileNodes = append(fileNodes, fn)
	}
	filesFDT, err := marshalFDT(dt.NewNode("", dt.WithChildren(dt.NewNode("files", dt.WithChildren(fileNodes...)))))
	if err != nil {
		return nil, err
	}
	return marshalFDT(dt.NewNode("", dt.WithChildren(
		dt.NewNode("lockboxes", dt.WithChildren(
			dt.NewNode("lockbox-1", dt.WithProperty(dt.Property{Name: "encrypted-symkey", Value: wrapped})),
		)),
		dt.NewNode("digest", dt.WithChildren(digestNode)),
		dt.NewNode("file", dt.WithProperty(dt.Property{Name: "files-fdt", Value: filesFDT})),
	)))
}

func sealedNode(name string, key, plaintext []byte) (*dt.Node, error) {
	gcm, err := newGCM(key)
	if err != nil {
		return nil, err
	}
	iv := make([]byte, gcmIVSize)
	if _, err := io.ReadFull(rand.Reader, iv); err != nil {
		return nil, err
	}
	sealed := gcm.Seal(nil, iv, plaintext, nil)
	ct, tag := sealed[:len(plaintext)], sealed[len(plaintext):]
	return dt.NewNode(name, dt.WithProperty(
		dt.PropertyString("algorithm", algorithmAESGCM),
		dt.Property{Name: "iv", Value: iv},
		dt.Property{Name: "mac", Value: tag},
		dt.Property{Name: "ciphertext", Value: ct},
	)), nil
}

func openNode(n *dt.Node, key []byte) ([]byte, error) {
	get := func(p string) ([]byte, error) {
		prop, ok := n.LookProperty(p)
		if !ok {
			return nil, fmt.Errorf("pef: %s: missing %s: %w", n.Name, p, errdefs.ErrInvalidArgument)
		}
		return prop.Value, nil
	}
	if _, err := get("algorithm"); err != nil {
		return nil, err
	}
	iv, err := get("iv")
	if err != nil {
		return nil, err
	}
	tag, err := get("mac")
	if err != nil {
		return nil, err
	}
	ct, err := get("ciphertext")
	if err != nil {
		return nil, err
	}
	if len(iv) != gcmIVSize || len(tag) != 16 {
		return nil, fmt.Errorf("pef: %s: bad iv or mac size: %w", n.Name, errdefs.ErrInvalidArgument)
	}
	gcm, err := newGCM(key)
	if err != nil {
		return nil, err
	}
	pt, err := gcm.Open(nil, iv, append(bytes.Clone(ct), tag...), nil)
	if err != nil {
		return nil, fmt.Errorf("pef: %s: %w", n.Name, ErrIntegrity)
	}
	return pt, nil
}

func newGCM(key []byte) (cipher.AEAD, error) {
	b, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(b)
}

func marshalFDT(root *dt.Node) ([]byte, error) {
	f := &dt.FDT{
		Header:   dt.Header{Magic: dt.Magic, Version: 17, LastCompVersion: 16},
		RootNode: root,
	}
	var buf bytes.Buffer
	if _, err := f.Write(&buf); err != nil {
		return nil, fmt.Errorf("pef: failed to encode FDT: %w", err)
	}
	return buf.Bytes(), nil
}

// maxFDTSize bounds FDTs parsed here.
const maxFDTSize = 1 << 20

func parseFDT(b []byte) (*dt.FDT, error) {
	if len(b) < 40 || binary.BigEndian.Uint32(b) != dt.Magic {
		return nil, fmt.Errorf("pef: not an FDT: %w", errdefs.ErrInvalidArgument)
	}
	total := binary.BigEndian.Uint32(b[4:])
	if total < 40 || total > maxFDTSize || int(total) > len(b) {
		return nil, fmt.Errorf("pef: FDT size %d out of range: %w", total, errdefs.ErrInvalidArgument)
	}
	if err := checkFDTBounds(b[:total]); err != nil {
		return nil, fmt.Errorf("pef: malformed FDT: %v: %w", err, errdefs.ErrInvalidArgument)
	}
	f, err := readFDT(b[:total])
	if err != nil {
		return nil, fmt.Errorf("pef: malformed FDT: %v: %w", err, errdefs.ErrInvalidArgument)
	}
	return f, nil
}

// checkFDTBounds checks that the blocks the header points to, and every
// property in the structure block, lie inside b. dt.ReadFDT allocates
// header- and property-declared lengths before reading, so hostile sizes
// would otherwise cost gigabytes.
func checkFDTBounds(b []byte) error {
	be := binary.BigEndian
	total := uint64(len(b))
	offStruct, offStrings, offRsv := uint64(be.Uint32(b[8:])), uint64(be.Uint32(b[12:])), uint64(be.Uint32(b[16:]))
	sizeStrings, sizeStruct := uint64(be.Uint32(b[32:])), uint64(be.Uint32(b[36:]))
	if offRsv >= total || offStrings+sizeStrings > total || offStruct+sizeStruct > total {
		return fmt.Errorf("block outside the FDT")
	}
	st := b[offStruct : offStruct+sizeStruct]
	for i := uint64(0); i+4 <= uint64(len(st)); {
		tok := be.Uint32(st[i:])
		i += 4
		switch tok {
		case 1: // FDT_BEGIN_NODE: NUL-terminated name, 4-aligned
			n := bytes.IndexByte(st[i:], 0)
			if n < 0 {
				return fmt.Errorf("unterminated node name")
			}
			i += (uint64(n) + 1 + 3) &^ 3
		case 3: // FDT_PROP: len, nameoff, value
			if i+8 > uint64(len(st)) {
				return fmt.Errorf("truncated property")
			}
			l := uint64(be.Uint32(st[i:]))
			i += 8
			if l > uint64(len(st))-i {
				return fmt.Errorf("property length %d outside the structure block", l)
			}
			i += (l + 3) &^ 3
		case 2, 4: // FDT_END_NODE, FDT_NOP
		case 9: // FDT_END
			return nil
		default:
			return fmt.Errorf("bad token %#x", tok)
		}
	}
	return nil
}

// readFDT calls dt.ReadFDT, turning a panic on hostile input into an error.
func readFDT(b []byte) (f *dt.FDT, err error) {
	defer func() {
		if r := recover(); r != nil {
			f, err = nil, fmt.Errorf("FDT parser failed: %v", r)
		}
	}()
	return dt.ReadFDT(bytes.NewReader(b))
}

func lookup(root *dt.Node, path ...string) (*dt.Node, bool) {
	n := root
	for _, p := range path {
		c, ok := n.LookupChildByName(p)
		if !ok {
			return nil, false
		}
		n = c
	}
	return n, true
}
