// Package scratch turns the pod's scratch disk (a virtio-blk device the
// shim backs with a sparse file on the node) into an encrypted,
// authenticated filesystem and swap inside the guest: dm-integrity under
// dm-crypt with an AEAD (authenc(hmac(sha256),xts(aes)) with random IVs),
// keyed by a key drawn from crypto/rand in the guest that never leaves it,
// split with dm-linear into an ext2 filesystem (the bundle store,
// disk-backed emptyDirs, /tmp) and swap. The node only sees ciphertext; a
// sector changed on the node fails its tag check and reads as an I/O
// error. See docs/storage.md.
package scratch

import (
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
)

// Serial is the virtio-blk serial the shim gives the scratch disk.
const Serial = "raksh-scratch"

// Layout constants of the encrypted device.
const (
	// BlockSize is the sector size of dm-integrity and dm-crypt (a page,
	// swap's unit of I/O).
	BlockSize = 4096
	// IVSize is the random IV dm-crypt stores per sector in the tag.
	IVSize = 16
	// MACSize is the HMAC-SHA256 tag per sector.
	MACSize = 32
	// TagSize is the per-sector metadata dm-integrity keeps for dm-crypt.
	TagSize = IVSize + MACSize
	// EncKeySize is the AES-256-XTS key (two AES-256 keys).
	EncKeySize = 64
	// KeySize is the dm-crypt key: the XTS key then the HMAC key.
	KeySize = EncKeySize + MACSize
	// Cipher is the dm-crypt cipher specification.
	Cipher = "capi:authenc(hmac(sha256),xts(aes))-random"
)

const (
	sizeofDmIoctl      = 312
	sizeofDmTargetSpec = 40
)

// IntegrityParams is the dm-integrity table line's parameters over the
// device dev ("major:minor"): no offset, TagSize bytes of tag per block,
// journal mode and BlockSize blocks. Direct mode ("D", no journal: crash
// consistency is moot for data that dies with the VM) stalled swap-out
// under memory pressure on the 6.1 guest kernel; the journal does not.
func IntegrityParams(dev string) string {
	return fmt.Sprintf("%s 0 %d J 1 block_size:%d", dev, TagSize, BlockSize)
}

// CryptParams is the dm-crypt table line's parameters over the integrity
// device dev with key (KeySize bytes): the AEAD keeps its IV and tag in
// dm-integrity's metadata.
func CryptParams(dev string, key []byte) (string, error) {
	if len(key) != KeySize {
		return "", fmt.Errorf("dm-crypt key is %d bytes, want %d", len(key), KeySize)
	}
	return fmt.Sprintf("%s %s 0 %s 0 2 integrity:%d:aead sector_size:%d", Cipher, hex.EncodeToString(key), dev, TagSize, BlockSize), nil
}

// Target is one line of a device-mapper table.
type Target struct {
	Start, Length uint64 // in 512-byte sectors
	Type          string
	Params        string
}

// encodeIoctl returns a struct dm_ioctl (version 4.0.0) for the device
// name with flags, followed by the targets (struct dm_target_spec, its
// NUL-terminated parameters padded to 8 bytes), and room for the kernel's
// answer.
func encodeIoctl(name string, flags uint32, targets []Target) ([]byte, error) {
	if name == "" || len(name) >= 128 {
		return nil, fmt.Errorf("device-mapper name %q: empty or longer than 127 bytes", name)
	}
	var body []byte
	for i, t := range targets {
		if len(t.Type) >= 16 {
			return nil, fmt.Errorf("target type %q longer than 15 bytes", t.Type)
		}
		p := append([]byte(t.Params), 0)
		for len(p)%8 != 0 {
			p = append(p, 0)
		}
		spec := make([]byte, sizeofDmTargetSpec)
		binary.LittleEndian.PutUint64(spec[0:], t.Start)
		binary.LittleEndian.PutUint64(spec[8:], t.Length)
		if i < len(targets)-1 {
			binary.LittleEndian.PutUint32(spec[20:], uint32(sizeofDmTargetSpec+len(p)))
		}
		copy(spec[24:40], t.Type)
		body = append(body, spec...)
		body = append(body, p...)
	}
	size := sizeofDmIoctl + len(body)
	if size < 16384 {
		size = 16384 // room for the kernel's answer (status, deps)
	}
	b := make([]byte, size)
	binary.LittleEndian.PutUint32(b[0:], 4) // DM_VERSION_MAJOR
	binary.LittleEndian.PutUint32(b[12:], uint32(size))
	binary.LittleEndian.PutUint32(b[16:], sizeofDmIoctl)
	binary.LittleEndian.PutUint32(b[20:], uint32(len(targets)))
	binary.LittleEndian.PutUint32(b[28:], flags)
	copy(b[48:176], name)
	copy(b[sizeofDmIoctl:], body)
	return b, nil
}

// ioctlDev is the dev field of an answered struct dm_ioctl.
func ioctlDev(b []byte) uint64 { return binary.LittleEndian.Uint64(b[40:]) }

// SwapHeader returns the first page of a version 1 swap area of size
// bytes (what mkswap writes): last usable page, no bad pages, the
// SWAPSPACE2 signature at the end of the page.
func SwapHeader(size int64) ([]byte, error) {
	pages := size / BlockSize
	if pages < 10 {
		return nil, fmt.Errorf("swap area of %d bytes is too small", size)
	}
	if pages-1 > 1<<32-1 {
		return nil, errors.New("swap area too large")
	}
	h := make([]byte, BlockSize)
	binary.LittleEndian.PutUint32(h[1024:], 1)               // version
	binary.LittleEndian.PutUint32(h[1028:], uint32(pages-1)) // last_page
	copy(h[BlockSize-10:], "SWAPSPACE2")
	return h, nil
}

// ProvidedSectors reads provided_data_sectors from a dm-integrity
// superblock (the start of the device dm-integrity formatted).
func ProvidedSectors(sb []byte) (uint64, error) {
	if len(sb) < 24 || string(sb[:8]) != "integrt\x00" {
		return 0, errors.New("no dm-integrity superblock")
	}
	return binary.LittleEndian.Uint64(sb[16:]), nil
}
