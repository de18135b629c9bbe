package snp

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"os"
	"reflect"
	"testing"

	"github.com/containerd/errdefs"
	"github.com/google/uuid"
)

// referenceOVMF is the SEV metadata and reset EIP of the OVMF images
// behind the published test vectors of virtee/sev-snp-measure-go
// (guest/testdata/ovmf_img_{1,2}.json, Apache-2.0).
var referenceOVMF = &OVMFInfo{
	ResetEIP: 0x80b004,
	Sections: []OVMFSection{
		{GPA: 0x800000, Size: 0x9000, Type: SectionSNPSecMem},
		{GPA: 0x80a000, Size: 0x3000, Type: SectionSNPSecMem},
		{GPA: 0x80d000, Size: 0x1000, Type: SectionSNPSecrets},
		{GPA: 0x80e000, Size: 0x1000, Type: SectionCPUID},
		{GPA: 0x80f000, Size: 0x11000, Type: SectionSNPSecMem},
	},
}

func mustHex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestLaunchDigestReferenceVectors checks LaunchDigest against the
// expected measurements virtee/sev-snp-measure-go's guest_test.go
// publishes (generated with sev-snp-measure.py --mode snp --vcpus 2
// --vmm-type ec2 from the images' OVMF hashes).
func TestLaunchDigestReferenceVectors(t *testing.T) {
	for _, tc := range []struct {
		name, ovmfHash, want string
	}{
		{"ovmf_img_1", "a58211791a556a630a4319dc9e2ea96cc0e9784dd9f20a4fadf81b26c98d163fcdcb6703884bbbb80d7b1de45b3d84d0",
			"4c6e33087d08fa770259484dddbef367086a15c3e2cf10038dc97229d39c942671c2e22b300178f8de594a3f2fa59303"},
		{"ovmf_img_2", "2027a27bb9f7acfd280e4c7bd68a73973b94bf0756e5b282e004b9395f597b8d0eb4defa7d8f6549375aa4d2b146f0f3",
			"c2c84b9364fc9f0f54b04534768c860c6e0e386ad98b96e8b98eca46ac8971d05c531ba48373f054c880cfd1f4a0a84e"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := LaunchDigest(MeasureParams{
				OVMFHash: mustHex(t, tc.ovmfHash), OVMF: referenceOVMF,
				VCPUs: 2, GuestFeatures: 0x1, VMM: VMMEC2,
			})
			if err != nil {
				t.Fatal(err)
			}
			if hex.EncodeToString(got) != tc.want {
				t.Fatalf("LaunchDigest = %x, want %s", got, tc.want)
			}
		})
	}
}

// buildOVMF returns a synthetic firmware image with a footer table holding
// the SEV-ES reset block and SEV metadata for info, laid out as OVMF's
// ResetVector does.
func buildOVMF(info *OVMFInfo) []byte {
	img := make([]byte, 64*1024)
	// Metadata at 0x1000 from the start: "ASEV", size, version 1, count.
	md := []byte("ASEV")
	size := 16 + 12*len(info.Sections)
	md = binary.LittleEndian.AppendUint32(md, uint32(size))
	md = binary.LittleEndian.AppendUint32(md, 1)
	md = binary.LittleEndian.AppendUint32(md, uint32(len(info.Sections)))
	for _, s := range info.Sections {
		md = binary.LittleEndian.AppendUint32(md, s.GPA)
		md = binary.LittleEndian.AppendUint32(md, s.Size)
		md = binary.LittleEndian.AppendUint32(md, s.Type)
	}
	copy(img[0x1000:], md)
	entry := func(data []byte, g uuid.UUID) []byte {
		e := append([]byte(nil), data...)
		e = binary.LittleEndian.AppendUint16(e, uint16(len(data)+18))
		return append(e, guidLE(g)...)
	}
	var table []byte
	if info.HashesTableGPA != 0 {
		table = append(table, entry(binary.LittleEndian.AppendUint32(binary.LittleEndian.AppendUint32(nil, info.HashesTableGPA), 0x400), guidHashesRV)...)
	}
	table = append(table, entry(binary.LittleEndian.AppendUint32(nil, info.ResetEIP), guidResetBlock)...)
	table = append(table, entry(binary.LittleEndian.AppendUint32(nil, uint32(len(img)-0x1000)), guidMetadata)...)
	footer := entry(nil, guidFooter)
	binary.LittleEndian.PutUint16(footer[0:], uint16(len(table)+18))
	all := append(table, footer...)
	copy(img[len(img)-32-len(all):], all)
	return img
}

func TestParseOVMF(t *testing.T) {
	amdSev := &OVMFInfo{ResetEIP: referenceOVMF.ResetEIP, HashesTableGPA: 0x80cc00,
		Sections: append(append([]OVMFSection(nil), referenceOVMF.Sections...),
			OVMFSection{GPA: 0x80c000, Size: 0x1000, Type: SectionSNPKernelHashes})}
	for _, want := range []*OVMFInfo{referenceOVMF, amdSev} {
		got, err := ParseOVMF(buildOVMF(want))
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("ParseOVMF = %+v, want %+v", got, want)
		}
	}
	img := buildOVMF(referenceOVMF)
	for name, mutate := range map[string]func([]byte) []byte{
		"truncated":        func(b []byte) []byte { return b[:100] },
		"not page aligned": func(b []byte) []byte { return b[:len(b)-1] },
		"no footer guid":   func(b []byte) []byte { b[len(b)-33] ^= 1; return b },
		"bad signature":    func(b []byte) []byte { b[0x1000] = 'X'; return b },
		"huge table size":  func(b []byte) []byte { binary.LittleEndian.PutUint16(b[len(b)-32-18:], 0xffff); return b },
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := ParseOVMF(mutate(bytes.Clone(img))); !errdefs.IsInvalidArgument(err) {
				t.Fatalf("ParseOVMF = %v, want invalid argument", err)
			}
		})
	}
}

// TestParseSystemOVMF reads the distribution's OVMF (Debian's ovmf package,
// OvmfPkgX64), when installed: its SEV metadata is the layout the
// reference vectors use.
func TestParseSystemOVMF(t *testing.T) {
	img, err := os.ReadFile("/usr/share/ovmf/OVMF.fd")
	if err != nil {
		t.Skip("no /usr/share/ovmf/OVMF.fd")
	}
	info, err := ParseOVMF(img)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(info, referenceOVMF) {
		t.Fatalf("system OVMF metadata %+v differs from the reference layout", info)
	}
	m, err := ExpectedMeasurement(img, nil, nil, "", 1, "EPYC-v4")
	if err != nil || len(m) != 48 {
		t.Fatalf("ExpectedMeasurement = %x, %v", m, err)
	}
	t.Logf("expected measurement, OVMF.fd, 1 x EPYC-v4, no kernel hashes: %x", m)
	// OvmfPkgX64 has no kernel hashes table: kernel-hashes=on needs AmdSev.
	if _, err := ExpectedMeasurement(img, []byte("kernel"), nil, "", 1, "EPYC-v4"); !errdefs.IsInvalidArgument(err) {
		t.Fatalf("kernel hashes on OvmfPkgX64: %v", err)
	}
}

func TestLaunchDigestInputsMatter(t *testing.T) {
	base := MeasureParams{
		OVMFHash: mustHex(t, "a58211791a556a630a4319dc9e2ea96cc0e9784dd9f20a4fadf81b26c98d163fcdcb6703884bbbb80d7b1de45b3d84d0"),
		OVMF:     referenceOVMF, VCPUs: 2, GuestFeatures: 0x1, VMM: VMMQEMU,
		VCPUSignature: VCPUSignatures["EPYC-Milan"],
	}
	ref, err := LaunchDigest(base)
	if err != nil {
		t.Fatal(err)
	}
	// The AmdSev build adds a kernel hashes page at 0x80c000 whose table
	// sits at 0x80cc00.
	withHashes := &OVMFInfo{ResetEIP: referenceOVMF.ResetEIP, HashesTableGPA: 0x80cc00,
		Sections: append(append([]OVMFSection(nil), referenceOVMF.Sections...),
			OVMFSection{GPA: 0x80c000, Size: 0x1000, Type: SectionSNPKernelHashes})}
	kh := KernelHashesFor([]byte("bzImage"), []byte("initrd"), "console=ttyS0")
	for name, mutate := range map[string]func(*MeasureParams){
		"vcpus":          func(p *MeasureParams) { p.VCPUs = 3 },
		"vcpu model":     func(p *MeasureParams) { p.VCPUSignature = VCPUSignatures["EPYC-Genoa"] },
		"guest features": func(p *MeasureParams) { p.GuestFeatures = 0x21 },
		"vmm":            func(p *MeasureParams) { p.VMM = VMMEC2 },
		"firmware":       func(p *MeasureParams) { p.OVMFHash = make([]byte, 48) },
		"kernel hashes":  func(p *MeasureParams) { p.OVMF = withHashes; p.KernelHashes = &kh },
	} {
		t.Run(name, func(t *testing.T) {
			p := base
			mutate(&p)
			got, err := LaunchDigest(p)
			if err != nil {
				t.Fatal(err)
			}
			if bytes.Equal(got, ref) {
				t.Fatal("measurement did not change")
			}
		})
	}
	// Kernel hashes vs. the same section measured as zero pages, and each
	// of kernel, initrd and command line.
	p := base
	p.OVMF = withHashes
	zero, _ := LaunchDigest(p)
	seen := map[string]bool{hex.EncodeToString(zero): true}
	for _, k := range []KernelHashes{
		KernelHashesFor([]byte("bzImage"), []byte("initrd"), "console=ttyS0"),
		KernelHashesFor([]byte("bzImage2"), []byte("initrd"), "console=ttyS0"),
		KernelHashesFor([]byte("bzImage"), []byte("initrd2"), "console=ttyS0"),
		KernelHashesFor([]byte("bzImage"), []byte("initrd"), "console=ttyS0 raksh.init_data=00"),
	} {
		p.KernelHashes = &k
		got, err := LaunchDigest(p)
		if err != nil {
			t.Fatal(err)
		}
		if seen[hex.EncodeToString(got)] {
			t.Fatal("two different boot inputs gave the same measurement")
		}
		seen[hex.EncodeToString(got)] = true
	}
}

func TestKernelHashesPage(t *testing.T) {
	kh := KernelHashesFor([]byte("k"), []byte("i"), "c")
	page, err := kh.page(0xc00)
	if err != nil {
		t.Fatal(err)
	}
	tbl := page[0xc00:]
	if !bytes.Equal(tbl[:16], guidLE(guidHashTable)) || binary.LittleEndian.Uint16(tbl[16:]) != 168 {
		t.Fatalf("table header % x", tbl[:18])
	}
	// Entries: cmdline, initrd, kernel; each GUID, length 50, SHA-256.
	c := sha256.Sum256([]byte("c\x00"))
	for i, want := range []struct {
		g uuid.UUID
		h [32]byte
	}{{guidCmdline, c}, {guidInitrd, sha256.Sum256([]byte("i"))}, {guidKernel, sha256.Sum256([]byte("k"))}} {
		e := tbl[18+50*i:]
		if !bytes.Equal(e[:16], guidLE(want.g)) || binary.LittleEndian.Uint16(e[16:]) != 50 || !bytes.Equal(e[18:50], want.h[:]) {
			t.Fatalf("entry %d: % x", i, e[:50])
		}
	}
	if !bytes.Equal(page[:0xc00], make([]byte, 0xc00)) || !bytes.Equal(page[0xc00+168:], make([]byte, 4096-0xc00-168)) {
		t.Fatal("hashes page not zero outside the table")
	}
	if _, err := kh.page(0xfc0); !errdefs.IsInvalidArgument(err) {
		t.Fatalf("table crossing the page end: %v", err)
	}
	// GUIDs are in EFI byte order: 9438d606-... starts 06 d6 38 94.
	if g := guidLE(guidHashTable); g[0] != 0x06 || g[3] != 0x94 || g[4] != 0x22 || g[6] != 0xc9 || g[8] != 0xb4 {
		t.Fatalf("guidLE % x", g)
	}
}

// FuzzParseOVMF fuzzes the firmware footer table and metadata parser.
func FuzzParseOVMF(f *testing.F) {
	f.Add(buildOVMF(referenceOVMF)[60*1024:])
	f.Fuzz(func(t *testing.T, tail []byte) {
		img := make([]byte, (len(tail)+4095)&^4095)
		copy(img[len(img)-len(tail):], tail)
		_, _ = ParseOVMF(img)
	})
}

func TestLaunchDigestRefusesBadSections(t *testing.T) {
	h := make([]byte, 48)
	kh := KernelHashesFor(nil, nil, "")
	for name, p := range map[string]MeasureParams{
		"unaligned zero section": {OVMFHash: h, VCPUs: 1, OVMF: &OVMFInfo{Sections: []OVMFSection{{GPA: 0x800100, Size: 0x1000, Type: SectionSNPSecMem}}}},
		"unknown section type":   {OVMFHash: h, VCPUs: 1, OVMF: &OVMFInfo{Sections: []OVMFSection{{GPA: 0x800000, Size: 0x1000, Type: 9}}}},
		"kernel hashes without table": {OVMFHash: h, VCPUs: 1, KernelHashes: &kh,
			OVMF: &OVMFInfo{Sections: []OVMFSection{{GPA: 0x80c000, Size: 0x1000, Type: SectionSNPKernelHashes}}}},
		"kernel hashes without section": {OVMFHash: h, VCPUs: 1, KernelHashes: &kh, OVMF: referenceOVMF},
		"no vcpus":                      {OVMFHash: h, OVMF: referenceOVMF},
		"short ovmf hash":               {OVMFHash: h[:10], VCPUs: 1, OVMF: referenceOVMF},
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := LaunchDigest(p); !errdefs.IsInvalidArgument(err) {
				t.Fatalf("LaunchDigest = %v, want invalid argument", err)
			}
		})
	}
}
