package pef

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"

	"github.com/containerd/errdefs"
)

// DefaultKeyDir is where the simulated ultravisor's released files appear
// inside the guest (unpacked from the archive SimUltravisor.BootInitrd
// appends to the initrd, into the initramfs root). On PEF hardware the
// agent reads files with UltravisorSource instead.
const DefaultKeyDir = "/raksh/pef"

// KeySource gives the agent the files the ultravisor released.
type KeySource interface {
	// ReadFile returns the released file name. On hardware a file can be
	// read only once per boot; sources cache what they read.
	ReadFile(name string) ([]byte, error)
}

// DirSource reads released files from a directory: where the simulated
// ultravisor's output is unpacked, or where an early-boot helper stored
// what UV_ESMB_GET_FILE returned.
type DirSource struct {
	// Dir is the directory; empty means DefaultKeyDir.
	Dir string
}

// ReadFile implements KeySource.
func (d DirSource) ReadFile(name string) ([]byte, error) {
	if err := checkName(name); err != nil {
		return nil, err
	}
	dir := d.Dir
	if dir == "" {
		dir = DefaultKeyDir
	}
	b, err := os.ReadFile(filepath.Join(dir, name))
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("pef: released file %q: %w", name, errdefs.ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("pef: failed to read released file %q: %w", name, err)
	}
	return b, nil
}

// WriteReleased stores released files in dir (mode 0600, dir 0700), for
// the simulated ultravisor path.
func WriteReleased(dir string, files map[string][]byte) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	for name, b := range files {
		if err := checkName(name); err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			return fmt.Errorf("pef: failed to store released file %q: %w", name, err)
		}
	}
	return nil
}

func checkName(name string) error {
	if name == "" || len(name) > MaxFileNameSize || name != filepath.Base(name) || name == "." || name == ".." {
		return fmt.Errorf("pef: bad released file name %q: %w", name, errdefs.ErrInvalidArgument)
	}
	return nil
}

// ucallFunc is one UV_ESMB_GET_FILE ultracall: up to 64 bytes of file
// name (packed big-endian into 8 double words, as the ultravisor's
// dwords_to_bytes reads them) and an offset in; up to 64 bytes out.
type ucallFunc func(offset uint64, name *[8]uint64, out *[8]uint64) int64

// UltravisorSource reads released files with the UV_ESMB_GET_FILE
// ultracall (0xF14C) on a PEF secure VM. The ultravisor hands each file
// out once per boot, 64 bytes per call, to a single process: this source
// caches what it read. Only ppc64le builds can issue the call.
type UltravisorSource struct {
	mu    sync.Mutex
	cache map[string][]byte
	call  ucallFunc
}

// NewUltravisorSource returns a source using the real ultracall, or an
// error wrapping errdefs.ErrNotImplemented on other architectures.
func NewUltravisorSource() (*UltravisorSource, error) {
	if esmbGetFileUcall == nil {
		return nil, fmt.Errorf("pef: UV_ESMB_GET_FILE needs ppc64le: %w", errdefs.ErrNotImplemented)
	}
	return &UltravisorSource{call: esmbGetFileUcall, cache: map[string][]byte{}}, nil
}

// ReadFile implements KeySource.
func (u *UltravisorSource) ReadFile(name string) ([]byte, error) {
	if err := checkName(name); err != nil {
		return nil, err
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	if b, ok := u.cache[name]; ok {
		return b, nil
	}
	b, err := readViaUcall(u.call, name)
	if err != nil {
		return nil, err
	}
	u.cache[name] = b
	return b, nil
}

func readViaUcall(call ucallFunc, name string) ([]byte, error) {
	var nameDW [8]uint64
	var nb [64]byte
	copy(nb[:], name)
	for i := range nameDW {
		for j := 0; j < 8; j++ {
			nameDW[i] = nameDW[i]<<8 | uint64(nb[i*8+j])
		}
	}
	var data []byte
	for off := uint64(0); off < MaxFileSize; {
		var out [8]uint64
		rc := call(off, &nameDW, &out)
		if rc < 0 {
			if off == 0 {
				return nil, fmt.Errorf("pef: ultravisor has no released file %q (rc %d): %w", name, rc, errdefs.ErrNotFound)
			}
			return nil, fmt.Errorf("pef: UV_ESMB_GET_FILE %q failed at offset %d (rc %d)", name, off, rc)
		}
		if rc == 0 {
			break
		}
		if rc > 64 {
			return nil, fmt.Errorf("pef: UV_ESMB_GET_FILE returned %d bytes", rc)
		}
		var chunk [64]byte
		for i, dw := range out {
			for j := 0; j < 8; j++ {
				chunk[i*8+j] = byte(dw >> (56 - 8*j))
			}
		}
		data = append(data, chunk[:rc]...)
		off += uint64(rc)
		if rc < 64 {
			break
		}
	}
	return data, nil
}

// ResourceFileName is the name under which a key broker resource
// (repo/type/tag) is sealed into a PEF initrd (`rakshctl initrd build
// --seal-for pef --seal-resource`), so the agent can take a workload key
// from the released files instead of a broker: "kbs-" and the first 40 hex
// digits of the path's SHA-256 (a released file name holds at most 64
// bytes, a resource path up to 386).
func ResourceFileName(resourcePath string) string {
	sum := sha256.Sum256([]byte(resourcePath))
	return "kbs-" + hex.EncodeToString(sum[:20])
}
