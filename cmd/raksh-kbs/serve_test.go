package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/raksh-project/raksh/kbs/api"
	"github.com/raksh-project/raksh/kbs/client"
	"github.com/raksh-project/raksh/tee/sim"
)

func writePEM(t *testing.T, path, typ string, der []byte) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestServeTOMLTLS runs the real raksh-kbs wiring from a TOML file with
// HTTPS (certificate from a CA generated here) on 127.0.0.1 and does the full
// RCAR round trip with the sim attester.
func TestServeTOMLTLS(t *testing.T) {
	dir := t.TempDir()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true,
		BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, _ := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	ca, _ := x509.ParseCertificate(caDER)
	srvKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	srvDER, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{SerialNumber: big.NewInt(2),
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}},
		ca, &srvKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	writePEM(t, filepath.Join(dir, "tls.crt"), "CERTIFICATE", srvDER)
	skDER, _ := x509.MarshalPKCS8PrivateKey(srvKey)
	writePEM(t, filepath.Join(dir, "tls.key"), "PRIVATE KEY", skDER)

	platform, _ := sim.GenerateKey()
	pp, _ := sim.MarshalPlatformPublicKey(&platform.PublicKey)
	os.WriteFile(filepath.Join(dir, "sim.pem"), pp, 0o600)
	adminPub, adminKey, _ := ed25519.GenerateKey(rand.Reader)
	apDER, _ := x509.MarshalPKIXPublicKey(adminPub)
	writePEM(t, filepath.Join(dir, "admin.pub"), "PUBLIC KEY", apDER)
	os.WriteFile(filepath.Join(dir, "policy.json"), []byte(`{"rules":[{"resources":["default/*/*"],"tee":["sim"]}]}`), 0o600)

	conf := `address = "127.0.0.1:0"
tls_cert_file = "` + filepath.Join(dir, "tls.crt") + `"
tls_key_file = "` + filepath.Join(dir, "tls.key") + `"
resource_dir = "` + filepath.Join(dir, "resources") + `"
policy_file = "` + filepath.Join(dir, "policy.json") + `"
admin_public_key_files = ["` + filepath.Join(dir, "admin.pub") + `"]
sim_platform_keys_file = "` + filepath.Join(dir, "sim.pem") + `"
session_ttl = "1m"
token_ttl = "10m"

[snp]
measurements = []
`
	confPath := filepath.Join(dir, "kbs.toml")
	os.WriteFile(confPath, []byte(conf), 0o600)
	cfg, err := loadConfig(confPath)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	addrc := make(chan string, 1)
	done := make(chan error, 1)
	go func() { done <- serve(ctx, cfg, func(a string) { addrc <- a }) }()
	var addr string
	select {
	case addr = <-addrc:
	case err := <-done:
		t.Fatalf("serve: %v", err)
	}
	if !strings.HasPrefix(addr, "127.0.0.1:") {
		t.Fatalf("listening on %s", addr)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	tlsCfg := &tls.Config{RootCAs: pool}
	url := "https://" + addr
	admin, _ := client.NewAdmin(url, adminKey, tlsCfg)
	if err := admin.SetResource(ctx, "default/workload/key1", []byte("the key")); err != nil {
		t.Fatalf("SetResource: %v", err)
	}
	// The [snp] section registered the SNP verifier: an snp session opens.
	resp, err := (&http.Client{Transport: &http.Transport{TLSClientConfig: tlsCfg}}).Post(url+api.AuthPath, "application/json", strings.NewReader(`{"version":"0.1.1","tee":"snp","extra-params":{}}`))
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("snp auth: %v %v", resp, err)
	}
	resp.Body.Close()
	resp, _ = (&http.Client{Transport: &http.Transport{TLSClientConfig: tlsCfg}}).Post(url+api.AuthPath, "application/json", strings.NewReader(`{"version":"0.1.1","tee":"tdx","extra-params":{}}`))
	if resp.StatusCode != 401 {
		t.Fatalf("tdx auth without a [tdx] section: %d", resp.StatusCode)
	}
	resp.Body.Close()
	a, _ := sim.NewAttester(platform)
	c, _ := client.New(url, a, client.WithTLSConfig(tlsCfg))
	got, err := c.Resource(ctx, "default/workload/key1")
	if err != nil || string(got) != "the key" {
		t.Fatalf("Resource = %q, %v", got, err)
	}
	// A client without the CA refuses the broker.
	c2, _ := client.New(url, a)
	if _, err := c2.Resource(ctx, "default/workload/key1"); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("untrusted CA: %v", err)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("serve returned %v", err)
	}
}

func TestConfigRejectsUnknownKeys(t *testing.T) {
	p := filepath.Join(t.TempDir(), "kbs.toml")
	os.WriteFile(p, []byte("adress = \"127.0.0.1:1\"\n"), 0o600)
	if _, err := loadConfig(p); err == nil || !strings.Contains(err.Error(), "adress") {
		t.Fatalf("LoadConfig = %v", err)
	}
	os.WriteFile(p, []byte("session_ttl = \"five\"\n"), 0o600)
	if _, err := loadConfig(p); err == nil {
		t.Fatal("bad duration accepted")
	}
}
