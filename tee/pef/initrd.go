package pef

import (
	"bytes"
	"crypto/rsa"
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/containerd/errdefs"
	"github.com/u-root/u-root/pkg/cpio"
)

// ESMBlobPath is where the ESM blob sits in the ESM cpio archive. The
// ultravisor accepts any file under opt/ibm/pef (svm-esm.c, CPIO_PATH_PEF).
const ESMBlobPath = "opt/ibm/pef/esmb.dtb"

const esmAlign = 512

// SealInitrdOptions are the inputs of SealInitrd.
type SealInitrdOptions struct {
	// Kernel is the kernel image the VM boots (its SHA-512 is sealed).
	Kernel []byte
	// Cmdline is the exact kernel command line, including svm=on and the
	// init-data parameter the launcher adds (see Launcher).
	Cmdline string
	// RTAS is the firmware's RTAS text; nil uses PlatformRTAS.
	RTAS []byte
	// Files are the secrets to release to the secure VM (workload keys),
	// by name.
	Files map[string][]byte
}

// SealInitrd returns initramfs prefixed with an ESM cpio archive holding an
// ESM blob for the platform wrapping key: `rakshctl initrd build --seal-for
// pef` writes this. The ultravisor releases opts.Files only if the VM boots
// exactly opts.Kernel, this initramfs and opts.Cmdline.
func SealInitrd(wrapKey *rsa.PublicKey, initramfs []byte, opts SealInitrdOptions) ([]byte, error) {
	if len(opts.Kernel) == 0 {
		return nil, fmt.Errorf("pef: sealing needs the kernel image: %w", errdefs.ErrInvalidArgument)
	}
	rtas := opts.RTAS
	if rtas == nil {
		rtas = PlatformRTAS
	}
	blob, err := BuildESMBlob(wrapKey, DigestsFor(opts.Kernel, initramfs, opts.Cmdline, rtas), opts.Files)
	if err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	w := cpio.Newc.Writer(&buf)
	recs := []cpio.Record{
		cpio.Directory("opt", 0o755),
		cpio.Directory("opt/ibm", 0o755),
		cpio.Directory("opt/ibm/pef", 0o755),
		cpio.StaticRecord(blob, cpio.Info{Name: ESMBlobPath, Mode: cpio.S_IFREG | 0o400, NLink: 1}),
	}
	if err := cpio.WriteRecords(w, recs); err != nil {
		return nil, fmt.Errorf("pef: failed to write ESM cpio: %w", err)
	}
	if err := cpio.WriteTrailer(w); err != nil {
		return nil, fmt.Errorf("pef: failed to write ESM cpio: %w", err)
	}
	if pad := buf.Len() % esmAlign; pad != 0 {
		buf.Write(make([]byte, esmAlign-pad))
	}
	buf.Write(initramfs)
	return buf.Bytes(), nil
}

// FindESMBlob locates the ESM blob the way the ultravisor does: the first
// cpio archive of the initrd must have, as its first non-empty file, a file
// under opt/ibm/pef holding an FDT. It returns the blob and the initramfs
// after the ESM archive (what the initrd digest covers).
func FindESMBlob(initrd []byte) (blob, initramfs []byte, err error) {
	rr := cpio.Newc.Reader(bytes.NewReader(initrd))
	if eof, ok := rr.(cpio.EOFReader); ok {
		rr = eof.RecordReader // we need the trailer record's position
	}
	var end int64 = -1
	var pos int64
	for {
		// u-root's reader allocates the declared name size before reading
		// it: refuse absurd sizes first.
		if err := checkNewcHeader(initrd, pos); err != nil {
			return nil, nil, fmt.Errorf("pef: %v: %w", err, ErrNoESMBlob)
		}
		rec, err := rr.ReadRecord()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, nil, fmt.Errorf("pef: initrd does not start with a cpio archive: %v: %w", err, ErrNoESMBlob)
		}
		pos = rec.RecPos + int64(rec.RecLen) + (int64(rec.FileSize)+3)&^3
		if rec.Name == cpio.Trailer {
			end = rec.RecPos + int64(rec.RecLen)
			break
		}
		if rec.FileSize == 0 || blob != nil {
			continue
		}
		if !strings.HasPrefix(rec.Name, "opt/ibm/pef") {
			return nil, nil, fmt.Errorf("pef: first file %q is not under opt/ibm/pef: %w", rec.Name, ErrNoESMBlob)
		}
		if rec.FileSize > maxFDTSize {
			return nil, nil, fmt.Errorf("pef: ESM blob too large: %w", ErrNoESMBlob)
		}
		b := make([]byte, rec.FileSize)
		if _, err := rec.ReadAt(b, 0); err != nil && err != io.EOF {
			return nil, nil, fmt.Errorf("pef: failed to read ESM blob: %v: %w", err, ErrNoESMBlob)
		}
		blob = b
	}
	if blob == nil {
		return nil, nil, ErrNoESMBlob
	}
	if end < 0 {
		return nil, nil, fmt.Errorf("pef: ESM cpio has no trailer: %w", ErrNoESMBlob)
	}
	end = (end + esmAlign - 1) / esmAlign * esmAlign
	if end > int64(len(initrd)) {
		end = int64(len(initrd))
	}
	return blob, initrd[end:], nil
}

// maxNewcName bounds cpio names (PATH_MAX).
const maxNewcName = 4096

// checkNewcHeader checks the newc header at pos: magic and a sane name size.
func checkNewcHeader(b []byte, pos int64) error {
	const hdrLen = 110
	if pos < 0 || pos+hdrLen > int64(len(b)) {
		return fmt.Errorf("truncated cpio header")
	}
	h := b[pos : pos+hdrLen]
	if string(h[:6]) != "070701" {
		return fmt.Errorf("not a newc cpio header")
	}
	n, err := strconv.ParseUint(string(h[94:102]), 16, 32)
	if err != nil || n == 0 || n > maxNewcName {
		return fmt.Errorf("bad cpio name size")
	}
	return nil
}
