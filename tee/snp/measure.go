package snp

import (
	"bytes"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/binary"
	"fmt"

	"github.com/containerd/errdefs"
	"github.com/google/go-sev-guest/abi"
	"github.com/google/uuid"
)

// Expected launch measurement. The SEV firmware extends the launch digest
// with one PAGE_INFO structure per page the VMM adds (SNP ABI, "Launch
// Digest Calculation"): the OVMF image as normal pages below 4 GiB, the
// OVMF SEV metadata sections (zero, secrets and CPUID pages, and the kernel
// hashes page QEMU fills with kernel-hashes=on), then one VMSA per vCPU.
// This follows the public reference implementation, virtee's
// sev-snp-measure, and is checked against its published test vectors; it
// has not been checked against a report from hardware.

// VMM selects the VMM-specific initial vCPU state.
type VMM int

const (
	// VMMQEMU is QEMU/KVM.
	VMMQEMU VMM = iota
	// VMMEC2 is AWS EC2 (used by the reference test vectors).
	VMMEC2
)

// Page types of PAGE_INFO.
const (
	pageNormal  = 0x01
	pageVMSA    = 0x02
	pageZero    = 0x03
	pageSecrets = 0x05
	pageCPUID   = 0x06

	pageSize = 4096
	vmsaGPA  = 0xFFFFFFFFF000
	bspEIP   = 0xfffffff0
)

// OVMF SEV metadata section types.
const (
	SectionSNPSecMem       = 1
	SectionSNPSecrets      = 2
	SectionCPUID           = 3
	SectionSVSMCAA         = 4
	SectionSNPKernelHashes = 0x10
)

// OVMFSection is one entry of OVMF's SEV metadata.
type OVMFSection struct {
	GPA  uint32
	Size uint32
	Type uint32
}

// OVMFInfo is what the measurement needs from an OVMF image besides its
// pages.
type OVMFInfo struct {
	// Sections are the SEV metadata sections, in image order.
	Sections []OVMFSection
	// ResetEIP is the application processors' reset vector (the SEV-ES
	// reset block).
	ResetEIP uint32
	// HashesTableGPA is where QEMU writes the kernel hashes table
	// (kernel-hashes=on); zero when the firmware has none.
	HashesTableGPA uint32
}

var (
	guidFooter     = uuid.MustParse("96b582de-1fb2-45f7-baea-a366c55a082d")
	guidResetBlock = uuid.MustParse("00f771de-1a7e-4fcb-890e-68c77e2fb44e")
	guidMetadata   = uuid.MustParse("dc886566-984a-4798-a75e-5585a7bf67cc")
	guidHashesRV   = uuid.MustParse("7255371f-3a3b-4b04-927b-1da6efa8d454")

	guidHashTable = uuid.MustParse("9438d606-4f22-4cc9-b479-a793d411fd21")
	guidKernel    = uuid.MustParse("4de79437-abd2-427f-b835-d5b172d2045b")
	guidInitrd    = uuid.MustParse("44baf731-3a2f-4bd7-9af1-41e29169781d")
	guidCmdline   = uuid.MustParse("97d02dd8-bd20-4c94-aa78-e7714d36ab2a")
)

// guidLE is a GUID in EFI (mixed-endian) byte order.
func guidLE(u uuid.UUID) []byte {
	b := make([]byte, 16)
	binary.LittleEndian.PutUint32(b[0:], binary.BigEndian.Uint32(u[0:]))
	binary.LittleEndian.PutUint16(b[4:], binary.BigEndian.Uint16(u[4:]))
	binary.LittleEndian.PutUint16(b[6:], binary.BigEndian.Uint16(u[6:]))
	copy(b[8:], u[8:])
	return b
}

// ParseOVMF reads the GUIDed footer table at the end of an OVMF image (the
// last entry sits 32 bytes before the end) for the SEV-ES reset block and
// the SEV metadata.
func ParseOVMF(img []byte) (*OVMFInfo, error) {
	bad := func(what string) error {
		return fmt.Errorf("snp: OVMF image: %s: %w", what, errdefs.ErrInvalidArgument)
	}
	const hdr = 18 // u16 size + GUID
	if len(img) < 32+hdr || len(img)%pageSize != 0 {
		return nil, bad("too small or not page-aligned")
	}
	end := len(img) - 32
	if !bytes.Equal(img[end-16:end], guidLE(guidFooter)) {
		return nil, bad("no footer table")
	}
	tableSize := int(binary.LittleEndian.Uint16(img[end-hdr:]))
	if tableSize < hdr || tableSize > end {
		return nil, bad("bad footer table size")
	}
	table := img[end-tableSize : end-hdr]
	entries := map[uuid.UUID][]byte{}
	for len(table) >= hdr {
		n := len(table)
		size := int(binary.LittleEndian.Uint16(table[n-hdr:]))
		if size < hdr || size > n {
			return nil, bad("bad footer table entry")
		}
		var le [16]byte
		copy(le[:], table[n-16:])
		var u uuid.UUID
		binary.BigEndian.PutUint32(u[0:], binary.LittleEndian.Uint32(le[0:]))
		binary.BigEndian.PutUint16(u[4:], binary.LittleEndian.Uint16(le[4:]))
		binary.BigEndian.PutUint16(u[6:], binary.LittleEndian.Uint16(le[6:]))
		copy(u[8:], le[8:])
		entries[u] = table[n-size : n-hdr]
		table = table[:n-size]
	}
	info := &OVMFInfo{}
	if rb, ok := entries[guidResetBlock]; ok && len(rb) >= 4 {
		info.ResetEIP = binary.LittleEndian.Uint32(rb)
	} else {
		return nil, bad("no SEV-ES reset block")
	}
	if ht, ok := entries[guidHashesRV]; ok && len(ht) >= 4 {
		info.HashesTableGPA = binary.LittleEndian.Uint32(ht)
	}
	md, ok := entries[guidMetadata]
	if !ok || len(md) < 4 {
		return nil, bad("no SEV metadata")
	}
	off := int(binary.LittleEndian.Uint32(md))
	if off < 16 || off > len(img) {
		return nil, bad("SEV metadata offset out of range")
	}
	h := img[len(img)-off:]
	if string(h[:4]) != "ASEV" || binary.LittleEndian.Uint32(h[8:]) != 1 {
		return nil, bad("bad SEV metadata header")
	}
	size, num := int(binary.LittleEndian.Uint32(h[4:])), int(binary.LittleEndian.Uint32(h[12:]))
	if size > len(h) || 16+12*num > size {
		return nil, bad("SEV metadata out of range")
	}
	for i := range num {
		e := h[16+12*i:]
		info.Sections = append(info.Sections, OVMFSection{
			GPA:  binary.LittleEndian.Uint32(e),
			Size: binary.LittleEndian.Uint32(e[4:]),
			Type: binary.LittleEndian.Uint32(e[8:]),
		})
	}
	return info, nil
}

// launchDigest is the SNP launch digest being extended.
type launchDigest [sha512.Size384]byte

func (ld *launchDigest) extend(pageType byte, gpa uint64, contents []byte) {
	var pi [0x70]byte
	copy(pi[0x00:], ld[:])
	copy(pi[0x30:], contents)
	binary.LittleEndian.PutUint16(pi[0x60:], uint16(len(pi)))
	pi[0x62] = pageType
	// 0x63 IMI_PAGE, 0x64..0x66 VMPL3..1 permissions, 0x67 reserved: zero.
	binary.LittleEndian.PutUint64(pi[0x68:], gpa)
	*ld = sha512.Sum384(pi[:])
}

func (ld *launchDigest) normalPages(gpa uint64, data []byte) {
	for off := 0; off < len(data); off += pageSize {
		h := sha512.Sum384(data[off : off+pageSize])
		ld.extend(pageNormal, gpa+uint64(off), h[:])
	}
}

func (ld *launchDigest) emptyPages(pageType byte, gpa uint64, size uint32) error {
	if gpa%pageSize != 0 || size%pageSize != 0 {
		return fmt.Errorf("snp: OVMF section %#x+%#x not page-aligned: %w", gpa, size, errdefs.ErrInvalidArgument)
	}
	var zero [sha512.Size384]byte
	for off := uint64(0); off < uint64(size); off += pageSize {
		ld.extend(pageType, gpa+off, zero[:])
	}
	return nil
}

// OVMFHash returns the launch digest after the OVMF image's pages (mapped
// to end at 4 GiB), the starting point of LaunchDigest.
func OVMFHash(img []byte) ([]byte, error) {
	if len(img) == 0 || len(img)%pageSize != 0 || len(img) > 1<<32 {
		return nil, fmt.Errorf("snp: OVMF image size %d: %w", len(img), errdefs.ErrInvalidArgument)
	}
	var ld launchDigest
	ld.normalPages(1<<32-uint64(len(img)), img)
	return ld[:], nil
}

// KernelHashes are the SHA-256 digests QEMU writes into OVMF's hashes table
// with kernel-hashes=on.
type KernelHashes struct {
	Kernel, Initrd, Cmdline [sha256.Size]byte
}

// KernelHashesFor hashes a kernel image, an initrd and the command line as
// QEMU does (the command line with its terminating NUL).
func KernelHashesFor(kernel, initrd []byte, cmdline string) KernelHashes {
	return KernelHashes{
		Kernel:  sha256.Sum256(kernel),
		Initrd:  sha256.Sum256(initrd),
		Cmdline: sha256.Sum256(append([]byte(cmdline), 0)),
	}
}

// page returns the hashes page with the table at offset: header GUID, u16
// length (168), then cmdline, initrd and kernel entries (GUID, u16 length
// 50, SHA-256), padded to 16 bytes.
func (k KernelHashes) page(offset uint32) ([]byte, error) {
	const entry, table = 16 + 2 + 32, 16 + 2 + 3*(16+2+32)
	if int(offset)+(table+15)&^15 > pageSize {
		return nil, fmt.Errorf("snp: hashes table offset %#x: %w", offset, errdefs.ErrInvalidArgument)
	}
	t := make([]byte, 0, table)
	t = append(t, guidLE(guidHashTable)...)
	t = binary.LittleEndian.AppendUint16(t, table)
	for _, e := range []struct {
		g uuid.UUID
		h [32]byte
	}{{guidCmdline, k.Cmdline}, {guidInitrd, k.Initrd}, {guidKernel, k.Kernel}} {
		t = append(t, guidLE(e.g)...)
		t = binary.LittleEndian.AppendUint16(t, entry)
		t = append(t, e.h[:]...)
	}
	p := make([]byte, pageSize)
	copy(p[offset:], t)
	return p, nil
}

// MeasureParams are the inputs of LaunchDigest.
type MeasureParams struct {
	// OVMFHash is OVMFHash of the firmware image.
	OVMFHash []byte
	// OVMF is ParseOVMF of the same image.
	OVMF *OVMFInfo
	// VCPUs is the number of vCPUs (one VMSA each).
	VCPUs int
	// VCPUSignature is CPUID(1).EAX of the guest vCPU model (QEMU puts it in
	// RDX at reset); see VCPUSignatures.
	VCPUSignature uint32
	// GuestFeatures is SEV_FEATURES of every VMSA (0x1: SNP active; QEMU's
	// default).
	GuestFeatures uint64
	// VMM selects VMM-specific register values.
	VMM VMM
	// KernelHashes, when set, fills the kernel hashes section
	// (kernel-hashes=on); nil measures it as zero pages.
	KernelHashes *KernelHashes
}

// VCPUSignatures are CPUID(1).EAX of QEMU's EPYC vCPU models.
var VCPUSignatures = map[string]uint32{
	"EPYC":       abi.FmsToCpuid1Eax(0x17, 0x01, 2),
	"EPYC-v4":    abi.FmsToCpuid1Eax(0x17, 0x01, 2),
	"EPYC-Rome":  abi.FmsToCpuid1Eax(0x17, 0x31, 0),
	"EPYC-Milan": abi.FmsToCpuid1Eax(0x19, 0x01, 1),
	"EPYC-Genoa": abi.FmsToCpuid1Eax(0x19, 0x11, 0),
	"EPYC-Turin": abi.FmsToCpuid1Eax(0x1a, 0x00, 0),
}

// LaunchDigest computes the expected SNP launch measurement (the report's
// MEASUREMENT) for p.
func LaunchDigest(p MeasureParams) ([]byte, error) {
	if len(p.OVMFHash) != sha512.Size384 || p.OVMF == nil || p.VCPUs < 1 {
		return nil, fmt.Errorf("snp: incomplete measurement parameters: %w", errdefs.ErrInvalidArgument)
	}
	var ld launchDigest
	copy(ld[:], p.OVMFHash)
	var cpuid []OVMFSection
	for _, s := range p.OVMF.Sections {
		var err error
		switch s.Type {
		case SectionSNPSecMem, SectionSVSMCAA:
			err = ld.emptyPages(pageZero, uint64(s.GPA), s.Size)
		case SectionSNPSecrets:
			err = ld.emptyPages(pageSecrets, uint64(s.GPA), pageSize)
		case SectionCPUID:
			if p.VMM == VMMEC2 {
				cpuid = append(cpuid, s) // EC2 adds the CPUID page last
				continue
			}
			err = ld.emptyPages(pageCPUID, uint64(s.GPA), pageSize)
		case SectionSNPKernelHashes:
			if p.KernelHashes == nil {
				err = ld.emptyPages(pageZero, uint64(s.GPA), s.Size)
				break
			}
			if s.Size != pageSize || s.GPA%pageSize != 0 || p.OVMF.HashesTableGPA == 0 {
				return nil, fmt.Errorf("snp: firmware's kernel hashes section is not one page with a hashes table: %w", errdefs.ErrInvalidArgument)
			}
			var page []byte
			if page, err = p.KernelHashes.page(p.OVMF.HashesTableGPA % pageSize); err == nil {
				ld.normalPages(uint64(s.GPA), page)
			}
		default:
			err = fmt.Errorf("snp: unknown OVMF metadata section type %#x: %w", s.Type, errdefs.ErrInvalidArgument)
		}
		if err != nil {
			return nil, err
		}
	}
	for _, s := range cpuid {
		if err := ld.emptyPages(pageCPUID, uint64(s.GPA), pageSize); err != nil {
			return nil, err
		}
	}
	if p.KernelHashes != nil && !hasSection(p.OVMF, SectionSNPKernelHashes) {
		return nil, fmt.Errorf("snp: firmware has no kernel hashes section (not an AmdSev OVMF): %w", errdefs.ErrInvalidArgument)
	}
	for i := range p.VCPUs {
		eip := uint32(bspEIP)
		if i > 0 {
			eip = p.OVMF.ResetEIP
		}
		v, err := vmsa(eip, p)
		if err != nil {
			return nil, err
		}
		h := sha512.Sum384(v)
		ld.extend(pageVMSA, vmsaGPA, h[:])
	}
	return ld[:], nil
}

func hasSection(o *OVMFInfo, t uint32) bool {
	for _, s := range o.Sections {
		if s.Type == t {
			return true
		}
	}
	return false
}

// VMSA (VM save area) field offsets, AMD APM vol. 2 table B-4.
const (
	vmsaES, vmsaCS, vmsaSS, vmsaDS, vmsaFS, vmsaGS = 0x00, 0x10, 0x20, 0x30, 0x40, 0x50
	vmsaGDTR, vmsaLDTR, vmsaIDTR, vmsaTR           = 0x60, 0x70, 0x80, 0x90
	vmsaEFER                                       = 0xd0
	vmsaCR4, vmsaCR0, vmsaDR7, vmsaDR6             = 0x148, 0x158, 0x160, 0x168
	vmsaRFLAGS, vmsaRIP                            = 0x170, 0x178
	vmsaGPAT                                       = 0x268
	vmsaRDX                                        = 0x310
	vmsaSEVFeatures                                = 0x3b0
	vmsaXCR0                                       = 0x3e8
	vmsaMXCSR, vmsaX87FCW                          = 0x408, 0x410
)

// vmsa returns the initial VMSA of a vCPU starting at eip, as KVM sets it
// up for QEMU (or EC2's hypervisor).
func vmsa(eip uint32, p MeasureParams) ([]byte, error) {
	v := make([]byte, pageSize)
	le := binary.LittleEndian
	seg := func(off int, sel, attr uint16, limit uint32, base uint64) {
		le.PutUint16(v[off:], sel)
		le.PutUint16(v[off+2:], attr)
		le.PutUint32(v[off+4:], limit)
		le.PutUint64(v[off+8:], base)
	}
	var csAttr, ssAttr, trAttr uint16
	var rdx uint64
	var mxcsr uint32
	var fcw uint16
	switch p.VMM {
	case VMMQEMU:
		csAttr, ssAttr, trAttr = 0x9b, 0x93, 0x8b
		rdx = uint64(p.VCPUSignature)
		mxcsr, fcw = 0x1f80, 0x37f
	case VMMEC2:
		csAttr, ssAttr, trAttr = 0x9b, 0x92, 0x83
		if eip == bspEIP {
			csAttr = 0x9a
		}
	default:
		return nil, fmt.Errorf("snp: unknown VMM %d: %w", p.VMM, errdefs.ErrInvalidArgument)
	}
	seg(vmsaES, 0, 0x93, 0xffff, 0)
	seg(vmsaCS, 0xf000, csAttr, 0xffff, uint64(eip&0xffff0000))
	seg(vmsaSS, 0, ssAttr, 0xffff, 0)
	seg(vmsaDS, 0, 0x93, 0xffff, 0)
	seg(vmsaFS, 0, 0x93, 0xffff, 0)
	seg(vmsaGS, 0, 0x93, 0xffff, 0)
	seg(vmsaGDTR, 0, 0, 0xffff, 0)
	seg(vmsaLDTR, 0, 0x82, 0xffff, 0)
	seg(vmsaIDTR, 0, 0, 0xffff, 0)
	seg(vmsaTR, 0, trAttr, 0xffff, 0)
	le.PutUint64(v[vmsaEFER:], 0x1000) // EFER.SVME
	le.PutUint64(v[vmsaCR4:], 0x40)    // CR4.MCE
	le.PutUint64(v[vmsaCR0:], 0x10)    // CR0.ET
	le.PutUint64(v[vmsaDR7:], 0x400)
	le.PutUint64(v[vmsaDR6:], 0xffff0ff0)
	le.PutUint64(v[vmsaRFLAGS:], 0x2)
	le.PutUint64(v[vmsaRIP:], uint64(eip&0xffff))
	le.PutUint64(v[vmsaGPAT:], 0x0007040600070406)
	le.PutUint64(v[vmsaRDX:], rdx)
	le.PutUint64(v[vmsaSEVFeatures:], p.GuestFeatures)
	le.PutUint64(v[vmsaXCR0:], 0x1)
	le.PutUint32(v[vmsaMXCSR:], mxcsr)
	le.PutUint16(v[vmsaX87FCW:], fcw)
	return v, nil
}

// ExpectedMeasurement computes the launch measurement of a QEMU SNP guest
// booted with `-bios firmware`, vcpus vCPUs of QEMU model vcpuType (a key
// of VCPUSignatures) and SEV_FEATURES 0x1 (QEMU's default; a KVM that turns
// on more VMSA features changes the measurement). With a kernel,
// kernel-hashes=on is assumed: the firmware must be an AmdSev OVMF, and the
// kernel, initrd and command line are those QEMU is given.
func ExpectedMeasurement(firmware, kernel, initrd []byte, cmdline string, vcpus int, vcpuType string) ([]byte, error) {
	sig, ok := VCPUSignatures[vcpuType]
	if !ok {
		return nil, fmt.Errorf("snp: unknown vCPU type %q: %w", vcpuType, errdefs.ErrInvalidArgument)
	}
	info, err := ParseOVMF(firmware)
	if err != nil {
		return nil, err
	}
	h, err := OVMFHash(firmware)
	if err != nil {
		return nil, err
	}
	p := MeasureParams{OVMFHash: h, OVMF: info, VCPUs: vcpus, VCPUSignature: sig, GuestFeatures: 0x1, VMM: VMMQEMU}
	if kernel != nil {
		kh := KernelHashesFor(kernel, initrd, cmdline)
		p.KernelHashes = &kh
	}
	return LaunchDigest(p)
}
