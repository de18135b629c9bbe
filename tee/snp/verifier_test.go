package snp

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"github.com/google/go-sev-guest/abi"
	"github.com/google/go-sev-guest/kds"
	spb "github.com/google/go-sev-guest/proto/sevsnp"
	sevtest "github.com/google/go-sev-guest/testing"

	"github.com/raksh-project/raksh/tee"
)

// realNow is inside the validity of testdata/vcek.testcer (2022-09-24 ..
// 2029-09-24), so certificate time checks run rather than being skipped.
var realNow = time.Date(2023, time.January, 1, 0, 0, 0, 0, time.UTC)

// realReportData is the REPORT_DATA of testdata/attestation.bin.
var realReportData = [tee.ReportDataSize]byte{1, 2, 3, 4, 5}

const realMeasurement = "b07af9620f3b839b47996422ddec6058338951d984e312115131ea82705eaf5b6bdf8a9ece31a5a608eb0cf2e4872b01"

func readTestdata(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func realEvidence(t testing.TB, withCertTable bool) []byte {
	t.Helper()
	ev := &Evidence{Version: EvidenceVersion, Report: readTestdata(t, "attestation.bin")}
	if withCertTable {
		ev.CertTable = abi.CertsFromProto(&spb.CertificateChain{VcekCert: readTestdata(t, "vcek.testcer")}).Marshal()
	}
	b, err := ev.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// The only public real SNP report (go-sev-guest's) comes from a guest
// whose policy allows debugging, so positive tests on it must opt in to
// AllowDebug; TestVerifyRealReportRefusesDebug shows the default refuses it.
func realConfig() Config {
	return Config{
		AllowDebug:   true,
		Measurements: []string{realMeasurement},
		MinimumTCB:   TCB{Bootloader: 2, SNP: 5, Microcode: 68},
		// HOST_DATA of the sample is zero: the VM was launched without init data.
		InitDataDigests: []string{hex.EncodeToString(make([]byte, 32))},
	}
}

func TestVerifyRealReport(t *testing.T) {
	for _, tc := range []struct {
		name      string
		certTable bool
		cache     bool
	}{
		{name: "vcek from cached certificate", cache: true},
		{name: "vcek from evidence certificate table", certTable: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var opts []Opt
			opts = append(opts, WithNow(func() time.Time { return realNow }))
			if tc.cache {
				opts = append(opts, WithCertificates(readTestdata(t, "vcek.testcer")))
			}
			v, err := NewVerifier(realConfig(), opts...)
			if err != nil {
				t.Fatal(err)
			}
			c, err := v.Verify(context.Background(), realEvidence(t, tc.certTable), realReportData)
			if err != nil {
				t.Fatalf("Verify: %v", err)
			}
			if c.TEE != tee.SNP || hex.EncodeToString(c.Measurement) != realMeasurement || !c.Debug || c.Insecure {
				t.Errorf("unexpected claims %+v", c)
			}
			if c.ReportData != realReportData {
				t.Errorf("claims report data %x", c.ReportData)
			}
			if got := c.Extra["reported_tcb"]; got != "bl=2 tee=0 snp=5 ucode=68" {
				t.Errorf("reported_tcb = %v", got)
			}
		})
	}
}

func TestVerifyRealReportFromCertFile(t *testing.T) {
	cfg := realConfig()
	cfg.CertFiles = []string{filepath.Join("testdata", "vcek.testcer")}
	v, err := NewVerifier(cfg, WithNow(func() time.Time { return realNow }))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := v.Verify(context.Background(), realEvidence(t, false), realReportData); err != nil {
		t.Fatal(err)
	}
}

func TestVerifyRealReportNegative(t *testing.T) {
	otherDigest := sha256.Sum256([]byte("another pod's init data"))
	flip := func(off int) func([]byte) []byte {
		return func(r []byte) []byte { r[off] ^= 0x01; return r }
	}
	for _, tc := range []struct {
		name    string
		cfg     func(*Config)
		report  func([]byte) []byte
		rd      *[tee.ReportDataSize]byte
		noCerts bool
		now     time.Time
		want    error
	}{
		{name: "debug policy refused by default", cfg: func(c *Config) { c.AllowDebug = false }, want: ErrDebug},
		{name: "flipped measurement byte", report: flip(0x90), want: ErrSignature},
		{name: "flipped report data byte", report: flip(0x50), want: ErrSignature},
		{name: "flipped signature byte", report: flip(0x2a0), want: ErrSignature},
		{name: "wrong reference measurement", cfg: func(c *Config) {
			c.Measurements = []string{hex.EncodeToString(make([]byte, 48))}
		}, want: ErrMeasurement},
		{name: "tcb too low", cfg: func(c *Config) { c.MinimumTCB.SNP = 6 }, want: ErrTCB},
		{name: "microcode too low", cfg: func(c *Config) { c.MinimumTCB.Microcode = 200 }, want: ErrTCB},
		{name: "replayed report data", rd: &[tee.ReportDataSize]byte{9, 9, 9}, want: ErrReportData},
		{name: "wrong host data", cfg: func(c *Config) {
			c.InitDataDigests = []string{hex.EncodeToString(otherDigest[:])}
		}, want: ErrInitData},
		{name: "no vcek anywhere", noCerts: true, want: ErrNoEndorsementKey},
		{name: "vcek expired", now: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC), want: ErrSignature},
		{name: "vcek not yet valid", now: time.Date(2021, 1, 1, 0, 0, 0, 0, time.UTC), want: ErrSignature},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := realConfig()
			if tc.cfg != nil {
				tc.cfg(&cfg)
			}
			now := realNow
			if !tc.now.IsZero() {
				now = tc.now
			}
			opts := []Opt{WithNow(func() time.Time { return now })}
			if !tc.noCerts {
				opts = append(opts, WithCertificates(readTestdata(t, "vcek.testcer")))
			}
			v, err := NewVerifier(cfg, opts...)
			if err != nil {
				t.Fatal(err)
			}
			rep := readTestdata(t, "attestation.bin")
			if tc.report != nil {
				rep = tc.report(rep)
			}
			ev, _ := (&Evidence{Version: EvidenceVersion, Report: rep}).Marshal()
			rd := realReportData
			if tc.rd != nil {
				rd = *tc.rd
			}
			c, err := v.Verify(context.Background(), ev, rd)
			if !errors.Is(err, tc.want) {
				t.Fatalf("Verify = %v, %v; want %v", c, err, tc.want)
			}
			if !errdefs.IsPermissionDenied(err) && !errdefs.IsNotFound(err) {
				t.Errorf("error %v is neither permission denied nor not found", err)
			}
		})
	}
}

func TestVerifyMalformed(t *testing.T) {
	v, err := NewVerifier(realConfig())
	if err != nil {
		t.Fatal(err)
	}
	short, _ := (&Evidence{Version: EvidenceVersion, Report: make([]byte, 100)}).Marshal()
	badVer, _ := (&Evidence{Version: 7, Report: readTestdata(t, "attestation.bin")}).Marshal()
	badTable, _ := (&Evidence{Version: EvidenceVersion, Report: readTestdata(t, "attestation.bin"), CertTable: []byte{1, 2, 3}}).Marshal()
	for name, ev := range map[string][]byte{
		"not json":          []byte("{"),
		"short report":      short,
		"unknown version":   badVer,
		"bad cert table":    badTable,
		"empty":             nil,
		"wrapping cert ptr": wrappingCertTable(t),
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := v.Verify(context.Background(), ev, realReportData); !errdefs.IsInvalidArgument(err) {
				t.Fatalf("Verify = %v, want invalid argument", err)
			}
		})
	}
}

// wrappingCertTable has an entry whose 32-bit offset+length wraps around,
// which abi.CertTable.Unmarshal alone would slice out of range.
func wrappingCertTable(t testing.TB) []byte {
	tbl := make([]byte, 2*abi.CertTableEntrySize+8)
	h := abi.CertTableHeaderEntry{Offset: 0xfffffff0, Length: 0x20}
	copy(h.GUID[:], []byte("0123456789abcdef"))
	if err := h.Write(tbl); err != nil {
		t.Fatal(err)
	}
	ev, _ := (&Evidence{Version: EvidenceVersion, Report: readTestdata(t, "attestation.bin"), CertTable: tbl}).Marshal()
	return ev
}

func TestNewVerifierBadConfig(t *testing.T) {
	for name, cfg := range map[string]Config{
		"short measurement":          {Measurements: []string{"abcd"}},
		"non-hex host data":          {InitDataDigests: []string{"zz"}},
		"missing cert file":          {CertFiles: []string{"testdata/nope"}},
		"roots without product line": {RootBundles: []string{"testdata/vcek.testcer"}},
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := NewVerifier(cfg); err == nil {
				t.Fatal("NewVerifier accepted bad config")
			}
		})
	}
}

// testOnlySigner builds a test-only ARK/ASK/VCEK chain with go-sev-guest's
// testing package, for reports with fields the real sample lacks (debug off,
// HOST_DATA set).
func testOnlySigner(t testing.TB, tcb kds.TCBParts, chipID []byte, now time.Time) *sevtest.AmdSigner {
	t.Helper()
	productName := kds.ProductName(abi.DefaultSevProduct())
	b := &sevtest.AmdSignerBuilder{
		Keys:             sevtest.DefaultAmdKeys(),
		ProductName:      productName,
		ArkCreationTime:  now,
		AskCreationTime:  now,
		AsvkCreationTime: now,
		VcekCreationTime: now,
		VlekCreationTime: now,
		CSPID:            "raksh-test",
		VcekCustom:       sevtest.CertOverride{Extensions: sevtest.CustomExtensions(tcb, chipID, "", productName)},
		VlekCustom:       sevtest.CertOverride{Extensions: sevtest.CustomExtensions(tcb, nil, "raksh-test", productName)},
	}
	s, err := b.TestOnlyCertChain()
	if err != nil {
		t.Fatal(err)
	}
	return s
}

type synth struct {
	vlek     bool
	policy   uint64
	hostData []byte
	rd       [tee.ReportDataSize]byte
}

func signedReport(t testing.TB, s *sevtest.AmdSigner, tcb kds.TCBParts, chipID []byte, r synth) []byte {
	t.Helper()
	tv, err := kds.ComposeTCBParts(tcb)
	if err != nil {
		t.Fatal(err)
	}
	hd := make([]byte, 32)
	copy(hd, r.hostData)
	rep := &spb.Report{
		Version:         2,
		GuestSvn:        1,
		Policy:          r.policy,
		FamilyId:        make([]byte, 16),
		ImageId:         make([]byte, 16),
		SignatureAlgo:   abi.SignEcdsaP384Sha384,
		PlatformInfo:    1,
		ReportData:      r.rd[:],
		Measurement:     make([]byte, 48),
		HostData:        hd,
		IdKeyDigest:     make([]byte, 48),
		AuthorKeyDigest: make([]byte, 48),
		ReportId:        make([]byte, 32),
		ReportIdMa:      make([]byte, 32),
		ChipId:          chipID,
		SignerInfo:      signerInfo(r.vlek),
		CurrentTcb:      uint64(tv),
		CommittedTcb:    uint64(tv),
		LaunchTcb:       uint64(tv),
		ReportedTcb:     uint64(tv),
		CurrentBuild:    2, CommittedBuild: 2,
		CurrentMajor: 1, CommittedMajor: 1,
		CurrentMinor: 55, CommittedMinor: 55,
		Signature: make([]byte, abi.SignatureSize),
	}
	raw, err := abi.ReportToAbiBytes(rep)
	if err != nil {
		t.Fatal(err)
	}
	rr, ss, err := s.Sign(abi.SignedComponent(raw))
	if err != nil {
		t.Fatal(err)
	}
	if err := abi.SetSignature(rr, ss, raw); err != nil {
		t.Fatal(err)
	}
	return raw
}

func TestVerifyTestOnlyChain(t *testing.T) {
	now := time.Now()
	tcb := kds.TCBParts{BlSpl: 3, TeeSpl: 0, SnpSpl: 8, UcodeSpl: 115}
	chipID := make([]byte, abi.ChipIDSize)
	chipID[0] = 0x42
	s := testOnlySigner(t, tcb, chipID, now)
	table, err := s.CertTableBytes()
	if err != nil {
		t.Fatal(err)
	}
	roots := append(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: s.Ask.Raw}),
		pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: s.Ark.Raw})...)
	initData := sha256.Sum256([]byte("init data of this pod"))
	rd := [tee.ReportDataSize]byte{0xaa, 0xbb}
	productLine := kds.ProductLine(abi.DefaultSevProduct())

	const policyNoDebug = 0x30000
	const policyDebug = 0xb0000
	for _, tc := range []struct {
		name   string
		policy uint64
		roots  bool
		want   error
	}{
		{name: "debug off, init data bound", policy: policyNoDebug, roots: true},
		{name: "debug on refused", policy: policyDebug, roots: true, want: ErrDebug},
		{name: "test-only chain refused by the real AMD roots", policy: policyNoDebug, want: ErrSignature},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rep := signedReport(t, s, tcb, chipID, synth{policy: tc.policy, hostData: initData[:], rd: rd})
			ev, _ := (&Evidence{Version: EvidenceVersion, Report: rep, CertTable: table}).Marshal()
			cfg := Config{
				MinimumTCB:      TCB{Bootloader: 3, SNP: 8, Microcode: 115},
				InitDataDigests: []string{hex.EncodeToString(initData[:])},
			}
			var opts []Opt
			if tc.roots {
				opts = append(opts, WithTrustedRoots(productLine, roots))
			}
			v, err := NewVerifier(cfg, opts...)
			if err != nil {
				t.Fatal(err)
			}
			c, err := v.Verify(context.Background(), ev, rd)
			if !errors.Is(err, tc.want) || (tc.want == nil && err != nil) {
				t.Fatalf("Verify = %v; want %v", err, tc.want)
			}
			if tc.want == nil && (c.Debug || string(c.InitDataDigest) != string(initData[:])) {
				t.Errorf("claims %+v", c)
			}
		})
	}
}

func signerInfo(vlek bool) uint32 {
	if vlek {
		return abi.ComposeSignerInfo(abi.SignerInfo{SigningKey: abi.VlekReportSigner})
	}
	return abi.ComposeSignerInfo(abi.SignerInfo{SigningKey: abi.VcekReportSigner})
}

// TestVerifyVLEK covers reports signed by a VLEK (a cloud provider's
// versioned loaded endorsement key), from the evidence or from the cache.
func TestVerifyVLEK(t *testing.T) {
	now := time.Now()
	tcb := kds.TCBParts{BlSpl: 3, SnpSpl: 8, UcodeSpl: 115}
	chipID := make([]byte, abi.ChipIDSize)
	s := testOnlySigner(t, tcb, chipID, now)
	full, err := s.CertTableBytes()
	if err != nil {
		t.Fatal(err)
	}
	withoutVlek := abi.CertsFromProto(&spb.CertificateChain{AskCert: s.Ask.Raw, ArkCert: s.Ark.Raw}).Marshal()
	roots := append(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: s.Ask.Raw}),
		pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: s.Ark.Raw})...)
	vlekRoots := append(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: s.Asvk.Raw}),
		pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: s.Ark.Raw})...)
	rd := [tee.ReportDataSize]byte{0x11}
	rep := signedReport(t, s, tcb, chipID, synth{vlek: true, policy: DefaultPolicy, rd: rd})
	for _, tc := range []struct {
		name   string
		table  []byte
		cache  bool
		noASVK bool
		want   error
	}{
		{name: "vlek in the evidence", table: full},
		{name: "vlek without an ASVK root", table: full, noASVK: true, want: ErrSignature},
		{name: "vlek from the cache", table: withoutVlek, cache: true},
		{name: "no vlek", table: withoutVlek, want: ErrNoEndorsementKey},
	} {
		t.Run(tc.name, func(t *testing.T) {
			bundles := [][]byte{roots, vlekRoots}
			if tc.noASVK {
				bundles = bundles[:1]
			}
			opts := []Opt{WithTrustedRoots(kds.ProductLine(abi.DefaultSevProduct()), bundles...)}
			if tc.cache {
				opts = append(opts, WithCertificates(s.Vlek.Raw))
			}
			v, err := NewVerifier(Config{}, opts...)
			if err != nil {
				t.Fatal(err)
			}
			ev, _ := (&Evidence{Version: EvidenceVersion, Report: rep, CertTable: tc.table}).Marshal()
			c, err := v.Verify(context.Background(), ev, rd)
			if !errors.Is(err, tc.want) || (tc.want == nil && err != nil) {
				t.Fatalf("Verify = %v; want %v", err, tc.want)
			}
			if tc.want == nil && c.Extra["signer"] != abi.VlekReportSigner.String() {
				t.Errorf("signer %v", c.Extra["signer"])
			}
		})
	}
}

func TestDefaultRootsCoverVLEK(t *testing.T) {
	roots, err := defaultRoots()
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range []string{"Milan", "Genoa", "Turin"} {
		var ask, asvk bool
		for _, r := range roots[line] {
			ask = ask || r.ProductCerts.Ask != nil
			asvk = asvk || r.ProductCerts.Asvk != nil
		}
		if !ask || !asvk {
			t.Errorf("%s: ASK chain %v, ASVK chain %v", line, ask, asvk)
		}
	}
}
