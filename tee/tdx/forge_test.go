package tdx

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"math/big"
	"testing"
	"time"

	"github.com/google/go-tdx-guest/abi"
	pb "github.com/google/go-tdx-guest/proto/tdx"
	"google.golang.org/protobuf/proto"

	"github.com/raksh-project/raksh/tee"
)

// testPlatform is a test-only stand-in for Intel's PCK hierarchy: a root
// and platform CA named like Intel's, and a PCK leaf carrying the real
// sample PCK certificate's SGX extensions (FMSPC, TCB, ...), so that
// go-tdx-guest's chain and extension checks run unchanged. Quotes it signs
// verify only for a verifier that trusts its root (WithRoots).
type testPlatform struct {
	root, inter, leaf *x509.Certificate
	leafKey           *ecdsa.PrivateKey
	chainPEM          []byte
}

var oidAuthorityKeyID = asn1.ObjectIdentifier{2, 5, 29, 35}

func newTestPlatform(t testing.TB) *testPlatform {
	t.Helper()
	q, err := ParseQuote(sampleQuote(t))
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(q.GetSignedData().GetCertificationData().GetQeReportCertificationData().GetPckCertificateChainData().GetPckCertChain())
	realLeaf, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	var extra []pkix.Extension
	for _, e := range realLeaf.Extensions {
		if !e.Id.Equal(oidAuthorityKeyID) { // set from our platform CA
			extra = append(extra, e)
		}
	}
	now := quoteNow
	mk := func(cn string, serial int64, parent *x509.Certificate, parentKey *ecdsa.PrivateKey, ca bool, ext []pkix.Extension) (*x509.Certificate, *ecdsa.PrivateKey) {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		tmpl := &x509.Certificate{
			SerialNumber:       big.NewInt(serial),
			Subject:            pkix.Name{CommonName: cn, Organization: []string{"Raksh test, not Intel"}},
			NotBefore:          now.Add(-24 * time.Hour),
			NotAfter:           now.Add(24 * time.Hour),
			SignatureAlgorithm: x509.ECDSAWithSHA256,
			ExtraExtensions:    ext,
		}
		if ca {
			tmpl.IsCA, tmpl.BasicConstraintsValid = true, true
			tmpl.KeyUsage = x509.KeyUsageCertSign | x509.KeyUsageCRLSign
		}
		if parent == nil {
			parent, parentKey = tmpl, k
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &k.PublicKey, parentKey)
		if err != nil {
			t.Fatal(err)
		}
		c, err := x509.ParseCertificate(der)
		if err != nil {
			t.Fatal(err)
		}
		return c, k
	}
	p := &testPlatform{}
	var rootKey, interKey *ecdsa.PrivateKey
	p.root, rootKey = mk("Intel SGX Root CA", 1, nil, nil, true, nil)
	p.inter, interKey = mk("Intel SGX PCK Platform CA", 2, p.root, rootKey, true, nil)
	p.leaf, p.leafKey = mk("Intel SGX PCK Certificate", 3, p.inter, interKey, false, extra)
	for _, c := range []*x509.Certificate{p.leaf, p.inter, p.root} {
		p.chainPEM = append(p.chainPEM, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	return p
}

func (p *testPlatform) roots() *x509.CertPool {
	pool := x509.NewCertPool()
	pool.AddCert(p.root)
	return pool
}

func rawSig(t testing.TB, k *ecdsa.PrivateKey, digest []byte) []byte {
	t.Helper()
	r, s, err := ecdsa.Sign(rand.Reader, k, digest)
	if err != nil {
		t.Fatal(err)
	}
	out := make([]byte, 64)
	r.FillBytes(out[:32])
	s.FillBytes(out[32:])
	return out
}

// quote returns the sample quote with its body changed by mutate, signed
// by a fresh attestation key certified (through the QE report) by the
// platform's PCK leaf.
func (p *testPlatform) quote(t testing.TB, mutate func(*pb.TDQuoteBody)) []byte {
	t.Helper()
	orig, err := ParseQuote(sampleQuote(t))
	if err != nil {
		t.Fatal(err)
	}
	q := proto.Clone(orig).(*pb.QuoteV4)
	if mutate != nil {
		mutate(q.GetTdQuoteBody())
	}
	ak, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	akBytes := make([]byte, 64)
	ak.X.FillBytes(akBytes[:32])
	ak.Y.FillBytes(akBytes[32:])
	sd := q.GetSignedData()
	sd.EcdsaAttestationKey = akBytes

	cd := sd.GetCertificationData()
	qecd := cd.GetQeReportCertificationData()
	h := sha256.Sum256(append(append([]byte(nil), akBytes...), qecd.GetQeAuthData().GetData()...))
	rd := make([]byte, 64)
	copy(rd, h[:])
	qecd.GetQeReport().ReportData = rd
	qeRaw, err := abi.EnclaveReportToAbiBytes(qecd.GetQeReport())
	if err != nil {
		t.Fatal(err)
	}
	qeDigest := sha256.Sum256(qeRaw)
	qecd.QeReportSignature = rawSig(t, p.leafKey, qeDigest[:])

	pck := qecd.GetPckCertificateChainData()
	delta := uint32(len(p.chainPEM)) - uint32(len(pck.GetPckCertChain()))
	pck.PckCertChain = p.chainPEM
	pck.Size += delta
	cd.Size += delta
	q.SignedDataSize += delta

	hdr, err := abi.HeaderToAbiBytes(q.GetHeader())
	if err != nil {
		t.Fatal(err)
	}
	body, err := abi.TdQuoteBodyToAbiBytes(q.GetTdQuoteBody())
	if err != nil {
		t.Fatal(err)
	}
	msg := sha256.Sum256(append(hdr, body...))
	sd.Signature = rawSig(t, ak, msg[:])
	raw, err := abi.QuoteToAbiBytes(q)
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

func withReportData(rd [tee.ReportDataSize]byte) func(*pb.TDQuoteBody) {
	return func(b *pb.TDQuoteBody) { b.ReportData = append([]byte(nil), rd[:]...) }
}
