package kbssession

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/raksh-project/raksh/tee/initdata"
	"github.com/raksh-project/raksh/tee/sim"
)

const doc = `{"version":"raksh.initdata/v1","policy":{"deny_exec":true}}`

func simSession(t *testing.T, bound []byte) *Session {
	t.Helper()
	key, err := sim.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	a, err := sim.NewAttester(key, sim.WithInitDataDigest(bound))
	if err != nil {
		t.Fatal(err)
	}
	s := New(nil)
	s.attester = a
	return s
}

func TestDeliver(t *testing.T) {
	ctx := context.Background()
	s := simSession(t, initdata.Digest([]byte(doc)))
	if _, err := s.InitData(ctx); !errdefs.IsFailedPrecondition(err) || !strings.Contains(err.Error(), "none was delivered") {
		t.Fatalf("bound but not delivered: %v", err)
	}
	flipped := []byte(doc)
	flipped[len(flipped)-4] ^= 1
	if err := s.Deliver(ctx, flipped); !errdefs.IsPermissionDenied(err) || !strings.Contains(err.Error(), "does not match") {
		t.Fatalf("flipped byte: %v", err)
	}
	if _, err := s.InitData(ctx); err == nil {
		t.Fatal("a refused document was kept")
	}
	if err := s.Deliver(ctx, []byte(doc)); err != nil {
		t.Fatal(err)
	}
	d, err := s.InitData(ctx)
	if err != nil || d == nil || !d.Policy.DenyExec {
		t.Fatalf("init data %+v, %v", d, err)
	}
	if err := s.Deliver(ctx, []byte(doc)); !errdefs.IsAlreadyExists(err) {
		t.Fatalf("second delivery: %v", err)
	}

	// A VM launched without init data takes none.
	s = simSession(t, nil)
	if d, err := s.InitData(ctx); d != nil || err != nil {
		t.Fatalf("nothing bound: %+v, %v", d, err)
	}
	if err := s.Deliver(ctx, []byte(doc)); !errdefs.IsPermissionDenied(err) || !strings.Contains(err.Error(), "binds none") {
		t.Fatalf("init data for a VM launched without: %v", err)
	}
}

func TestTLSConfig(t *testing.T) {
	broker := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io(w) }))
	defer broker.Close()
	caPEM := string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: broker.Certificate().Raw}))
	spki, _ := x509.MarshalPKIXPublicKey(broker.Certificate().PublicKey)
	pubPEM := string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: spki}))
	get := func(k *initdata.KBS, srv *httptest.Server) error {
		tc, err := TLSConfig(k)
		if err != nil {
			t.Fatal(err)
		}
		c, err := tls.Dial("tcp", srv.Listener.Addr().String(), tc)
		if err == nil {
			c.Close()
		}
		return err
	}
	// httptest's certificate is for example.com.
	for name, k := range map[string]*initdata.KBS{
		"ca":         {URL: "https://example.com", CA: caPEM},
		"public key": {URL: "https://example.com", PublicKey: pubPEM},
		"both":       {URL: "https://example.com", CA: caPEM, PublicKey: pubPEM},
	} {
		if err := get(k, broker); err != nil {
			t.Errorf("%s: the broker was refused: %v", name, err)
		}
	}
	// httptest servers share one certificate: a man in the middle with
	// another key is a server with its own certificate.
	other := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io(w) }))
	other.TLS = &tls.Config{Certificates: []tls.Certificate{selfSigned(t, "example.com")}}
	other.StartTLS()
	defer other.Close()
	for name, k := range map[string]*initdata.KBS{
		"ca":         {URL: "https://example.com", CA: caPEM},
		"public key": {URL: "https://example.com", PublicKey: pubPEM},
	} {
		if err := get(k, other); err == nil {
			t.Errorf("%s: a broker with another key was accepted", name)
		}
	}
	// The CA's certificate for another name.
	if err := get(&initdata.KBS{URL: "https://kbs.other", CA: caPEM}, broker); err == nil {
		t.Error("a certificate for another name was accepted")
	}
}

func io(w http.ResponseWriter) { w.Write([]byte("ok")) }

func selfSigned(t *testing.T, name string) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: name}, DNSNames: []string{name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

type fallbackKeys struct{ called *bool }

func (f fallbackKeys) PrivateKeys(context.Context, ocispec.Descriptor) ([][]byte, error) {
	*f.called = true
	return [][]byte{[]byte("baked")}, nil
}

func TestPodImageKeys(t *testing.T) {
	ctx := context.Background()
	var called bool
	// No init data, no command line keys: the baked key files.
	s := simSession(t, nil)
	keys, err := NewPodImageKeys(s, nil, fallbackKeys{&called}).PrivateKeys(ctx, ocispec.Descriptor{})
	if err != nil || !called || len(keys) != 1 {
		t.Fatalf("fallback: %q, %v (called %v)", keys, err, called)
	}
	// Init data bound but not delivered: no keys at all.
	withKeys := `{"version":"raksh.initdata/v1","image_keys":["default/image-key/pod"]}`
	s = simSession(t, initdata.Digest([]byte(withKeys)))
	s.dial = func(context.Context, string) (net.Conn, error) { return nil, errors.New("no broker in this test") }
	called = false
	if _, err := NewPodImageKeys(s, nil, fallbackKeys{&called}).PrivateKeys(ctx, ocispec.Descriptor{}); err == nil || called {
		t.Fatalf("undelivered init data: %v (fallback called %v)", err, called)
	}
	// Delivered: the init data's resources come from the broker.
	if err := s.Deliver(ctx, []byte(withKeys)); err != nil {
		t.Fatal(err)
	}
	_, err = NewPodImageKeys(s, nil, fallbackKeys{&called}).PrivateKeys(ctx, ocispec.Descriptor{})
	if err == nil || called || !strings.Contains(err.Error(), "image key default/image-key/pod from the key broker") {
		t.Fatalf("init data image keys: %v (fallback called %v)", err, called)
	}
}
