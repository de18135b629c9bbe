package kbs_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	jose "github.com/go-jose/go-jose/v4"

	"github.com/raksh-project/raksh/agent/unseal"
	"github.com/raksh-project/raksh/envelope"
	"github.com/raksh-project/raksh/kbs"
	"github.com/raksh-project/raksh/kbs/api"
	"github.com/raksh-project/raksh/kbs/client"
	"github.com/raksh-project/raksh/tee"
	"github.com/raksh-project/raksh/tee/sim"
)

const workloadKeyPath = "default/workload/key1"

var (
	measurement = bytes.Repeat([]byte{0xab}, 48)
	initDataDoc = "version = \"0.1.0\"\nalgorithm = \"sha256\"\n"
	initDigest  = func() []byte { s := sha256.Sum256([]byte(initDataDoc)); return s[:] }()
)

// clock is a settable time source.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

type env struct {
	t        testing.TB
	srv      *kbs.Server
	url      string
	tls      *tls.Config
	http     *http.Client
	platform *ecdsa.PrivateKey
	admin    ed25519.PrivateKey
	clock    *clock
	wkey     *ecdsa.PrivateKey
}

func defaultPolicy() *kbs.Policy {
	return &kbs.Policy{Rules: []kbs.Rule{{
		Resources:       []string{"default/workload/*"},
		TEE:             []tee.Type{tee.Sim},
		Measurements:    []string{hex.EncodeToString(measurement)},
		InitDataDigests: []string{hex.EncodeToString(initDigest)},
	}}}
}

// newTestCA returns a CA pool and a server certificate for 127.0.0.1 signed
// by a CA generated here.
func newTestCA(t testing.TB) (*x509.CertPool, tls.Certificate) {
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "raksh test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	srvKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	srvTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "raksh-kbs"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, DNSNames: []string{"kbs.test"},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, KeyUsage: x509.KeyUsageDigitalSignature,
	}
	srvDER, err := x509.CreateCertificate(rand.Reader, srvTmpl, ca, &srvKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	return pool, tls.Certificate{Certificate: [][]byte{srvDER}, PrivateKey: srvKey}
}

func newEnv(t testing.TB, useTLS bool, policy *kbs.Policy) *env {
	t.Helper()
	platform, _ := sim.GenerateKey()
	v, err := sim.NewVerifier(&platform.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	reg := tee.NewRegistry()
	if err := reg.RegisterVerifier(v); err != nil {
		t.Fatal(err)
	}
	store, err := kbs.NewFileStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	adminPub, adminKey, _ := ed25519.GenerateKey(rand.Reader)
	clk := &clock{t: time.Now()}
	srv, err := kbs.New(store, reg, kbs.WithPolicy(policy), kbs.WithAdminKey(adminPub), kbs.WithClock(clk.Now))
	if err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, srv: srv, platform: platform, admin: adminKey, clock: clk}
	if useTLS {
		pool, cert := newTestCA(t)
		ts := httptest.NewUnstartedServer(srv)
		ts.TLS = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
		ts.StartTLS()
		t.Cleanup(ts.Close)
		e.url = ts.URL
		e.tls = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	} else {
		ts := httptest.NewServer(srv)
		t.Cleanup(ts.Close)
		e.url = ts.URL
	}
	if !strings.Contains(e.url, "127.0.0.1") {
		t.Fatalf("server not on loopback: %s", e.url)
	}
	e.http = &http.Client{Transport: &http.Transport{TLSClientConfig: e.tls}}
	// The owner's workload key, uploaded through the admin API.
	e.wkey, _ = ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	pemKey, _ := envelope.MarshalPrivateKey(e.wkey)
	admin, err := client.NewAdmin(e.url, adminKey, e.tls)
	if err != nil {
		t.Fatal(err)
	}
	if err := admin.SetResource(context.Background(), workloadKeyPath, pemKey); err != nil {
		t.Fatalf("SetResource: %v", err)
	}
	return e
}

func (e *env) attester(opts ...sim.AttesterOpt) *sim.Attester {
	a, err := sim.NewAttester(e.platform, append([]sim.AttesterOpt{sim.WithMeasurement(measurement), sim.WithInitDataDigest(initDigest)}, opts...)...)
	if err != nil {
		e.t.Fatal(err)
	}
	return a
}

func (e *env) client(a tee.Attester, opts ...client.Opt) *client.Client {
	c, err := client.New(e.url, a, append([]client.Opt{client.WithTLSConfig(e.tls), client.WithInitData("toml", initDataDoc)}, opts...)...)
	if err != nil {
		e.t.Fatal(err)
	}
	return c
}

// TestRoundTrip: owner seals, broker holds the key, the sim TEE attests,
// gets the key and opens the envelope; over HTTP and HTTPS (test CA).
func TestRoundTrip(t *testing.T) {
	for _, useTLS := range []bool{false, true} {
		name := map[bool]string{false: "http", true: "https"}[useTLS]
		t.Run(name, func(t *testing.T) {
			e := newEnv(t, useTLS, defaultPolicy())
			ctx := context.Background()
			b := envelope.Binding{Namespace: "default", Pod: "web-0", Container: "app"}
			spec := &envelope.Spec{Args: []string{"/app", "--secret"}, Env: []string{"TOKEN=abc"}, Files: []envelope.File{{Path: "/run/secret", Mode: 0o400, Content: []byte("x")}}}
			data, err := envelope.Seal(spec, b, envelope.Recipient{KeyID: "kbs:///" + workloadKeyPath, Key: &e.wkey.PublicKey})
			if err != nil {
				t.Fatal(err)
			}
			c := e.client(e.attester())
			got, err := unseal.Open(ctx, data, b, unseal.NewKBSKeys(c))
			if err != nil {
				t.Fatalf("unseal.Open: %v", err)
			}
			if !reflect.DeepEqual(got.Args, spec.Args) || !reflect.DeepEqual(got.Env, spec.Env) || len(got.Files) != 1 {
				t.Fatalf("opened spec %+v", got)
			}
			tok, exp := c.Token()
			if tok == "" || !exp.After(time.Now()) {
				t.Fatalf("token %q expiry %v", tok, exp)
			}
			// Token cached: a second fetch does not attest again.
			if _, err := c.Resource(ctx, workloadKeyPath); err != nil {
				t.Fatal(err)
			}
			if tok2, _ := c.Token(); tok2 != tok {
				t.Fatal("token not cached")
			}
			// Moved to another container, pod or namespace: refused before
			// fetching the key.
			for _, moved := range []envelope.Binding{
				{Namespace: "default", Pod: "web-0", Container: "sidecar"},
				{Namespace: "default", Pod: "web-1", Container: "app"},
				{Namespace: "other", Pod: "web-0", Container: "app"},
			} {
				if _, err := unseal.Open(ctx, data, moved, unseal.NewKBSKeys(c)); !errors.Is(err, envelope.ErrWrongBinding) {
					t.Fatalf("envelope moved to %v: %v", moved, err)
				}
			}
		})
	}
}

// TestConcurrentGuests runs several guests' handshakes and fetches at once.
func TestConcurrentGuests(t *testing.T) {
	e := newEnv(t, false, defaultPolicy())
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := client.New(e.url, e.attester(), client.WithInitData("toml", initDataDoc))
			if err != nil {
				errs <- err
				return
			}
			for range 3 {
				if _, err := c.Resource(context.Background(), workloadKeyPath); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

// TestCustomDialer reaches the broker through a dialer that ignores the
// URL's host, as the agent does over a host-forwarded stream.
func TestCustomDialer(t *testing.T) {
	e := newEnv(t, false, defaultPolicy())
	addr := strings.TrimPrefix(e.url, "http://")
	dials := 0
	dialer := func(ctx context.Context, network, _ string) (net.Conn, error) {
		dials++
		var d net.Dialer
		return d.DialContext(ctx, network, addr)
	}
	c, err := client.New("http://kbs.invalid:8080", e.attester(), client.WithDialer(dialer), client.WithInitData("toml", initDataDoc))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Resource(context.Background(), workloadKeyPath); err != nil {
		t.Fatal(err)
	}
	if dials == 0 {
		t.Fatal("dialer not used")
	}
}

// manual drives the protocol by hand for negative cases.
type manual struct {
	e      *env
	cookie *http.Cookie
	nonce  string
	key    *ecdsa.PrivateKey
}

func (e *env) do(method, path string, body []byte, hdr map[string]string, cookie *http.Cookie) (*http.Response, []byte) {
	e.t.Helper()
	req, _ := http.NewRequest(method, e.url+path, bytes.NewReader(body))
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	if cookie != nil {
		req.AddCookie(cookie)
	}
	resp, err := e.http.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(resp.Body)
	return resp, out
}

func (e *env) auth(teeName string) (*manual, int, api.ErrorInformation) {
	e.t.Helper()
	body, _ := json.Marshal(api.Request{Version: api.ProtocolVersion, TEE: teeName, ExtraParams: api.EmptyParams})
	resp, out := e.do("POST", api.AuthPath, body, nil, nil)
	if resp.StatusCode != 200 {
		var info api.ErrorInformation
		_ = json.Unmarshal(out, &info)
		return nil, resp.StatusCode, info
	}
	var ch api.Challenge
	if err := json.Unmarshal(out, &ch); err != nil {
		e.t.Fatal(err)
	}
	m := &manual{e: e, nonce: ch.Nonce}
	for _, c := range resp.Cookies() {
		if c.Name == api.SessionCookie {
			m.cookie = &http.Cookie{Name: c.Name, Value: c.Value}
		}
	}
	m.key, _ = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	return m, 200, api.ErrorInformation{}
}

// attestation builds an Attestation; reportNonce is the nonce the evidence
// binds (normally m.nonce).
func (m *manual) attestation(a tee.Attester, rdNonce, reportNonce string) []byte {
	pub, _ := json.Marshal(&jose.JSONWebKey{Key: &m.key.PublicKey})
	rd, _ := json.Marshal(api.RuntimeData{Nonce: rdNonce, TEEPubKey: pub})
	reportRD, _ := json.Marshal(api.RuntimeData{Nonce: reportNonce, TEEPubKey: pub})
	report, err := api.ReportData(reportRD)
	if err != nil {
		m.e.t.Fatal(err)
	}
	ev, err := a.Evidence(context.Background(), report)
	if err != nil {
		m.e.t.Fatal(err)
	}
	evJSON, _ := api.EncodeEvidence(ev)
	body, _ := json.Marshal(api.Attestation{InitData: &api.InitData{Format: "toml", Body: initDataDoc}, RuntimeData: rd, TEEEvidence: evJSON})
	return body
}

func (m *manual) attest(body []byte) (int, api.ErrorInformation, string) {
	resp, out := m.e.do("POST", api.AttestPath, body, map[string]string{"Content-Type": "application/json"}, m.cookie)
	var info api.ErrorInformation
	var tok api.AttestationToken
	if resp.StatusCode == 200 {
		_ = json.Unmarshal(out, &tok)
	} else {
		_ = json.Unmarshal(out, &info)
	}
	return resp.StatusCode, info, tok.Token
}

func wantProblem(t *testing.T, status int, info api.ErrorInformation, wantStatus int, kind, detail string) {
	t.Helper()
	if status != wantStatus || info.Type != api.ProblemTypePrefix+kind || !strings.Contains(info.Detail, detail) {
		t.Fatalf("got %d %s %q, want %d %s containing %q", status, info.Type, info.Detail, wantStatus, kind, detail)
	}
}

func TestAttestNegative(t *testing.T) {
	e := newEnv(t, false, defaultPolicy())
	a := e.attester()

	t.Run("replayed nonce", func(t *testing.T) {
		m, _, _ := e.auth("sim")
		body := m.attestation(a, m.nonce, m.nonce)
		if st, info, _ := m.attest(body); st != 200 {
			t.Fatalf("first attest: %d %+v", st, info)
		}
		st, info, _ := m.attest(body)
		wantProblem(t, st, info, 401, api.ProblemNonceReplayed, "nonce already used")
		// The same attestation in a fresh session carries a stale nonce.
		m2, _, _ := e.auth("sim")
		m2.key = m.key
		st, info, _ = m2.attest(body)
		wantProblem(t, st, info, 401, api.ProblemNonceMismatch, "nonce")
	})
	t.Run("failed attempt consumes nonce", func(t *testing.T) {
		m, _, _ := e.auth("sim")
		st, info, _ := m.attest(m.attestation(a, m.nonce, "other"))
		wantProblem(t, st, info, 401, api.ProblemAttestation, "other report data")
		st, info, _ = m.attest(m.attestation(a, m.nonce, m.nonce))
		wantProblem(t, st, info, 401, api.ProblemNonceReplayed, "nonce already used")
	})
	t.Run("expired session", func(t *testing.T) {
		m, _, _ := e.auth("sim")
		e.clock.Add(kbs.DefaultSessionTTL + time.Second)
		st, info, _ := m.attest(m.attestation(a, m.nonce, m.nonce))
		wantProblem(t, st, info, 401, api.ProblemSessionExpired, "expired")
	})
	t.Run("no session", func(t *testing.T) {
		m := &manual{e: e}
		m.key, _ = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		st, info, _ := m.attest(m.attestation(a, "x", "x"))
		wantProblem(t, st, info, 401, api.ProblemSessionNotFound, "cookie")
	})
	t.Run("evidence over other report data", func(t *testing.T) {
		m, _, _ := e.auth("sim")
		st, info, _ := m.attest(m.attestation(a, m.nonce, "not-the-nonce"))
		wantProblem(t, st, info, 401, api.ProblemAttestation, "other report data")
	})
	t.Run("untrusted platform key", func(t *testing.T) {
		other, _ := sim.GenerateKey()
		fa, _ := sim.NewAttester(other, sim.WithMeasurement(measurement), sim.WithInitDataDigest(initDigest))
		m, _, _ := e.auth("sim")
		st, info, _ := m.attest(m.attestation(fa, m.nonce, m.nonce))
		wantProblem(t, st, info, 401, api.ProblemAttestation, "trusted platform key")
	})
	t.Run("init-data does not match digest", func(t *testing.T) {
		m, _, _ := e.auth("sim")
		body := m.attestation(a, m.nonce, m.nonce)
		body = bytes.Replace(body, []byte(`0.1.0`), []byte(`9.9.9`), 1)
		st, info, _ := m.attest(body)
		wantProblem(t, st, info, 401, api.ProblemInitData, "does not match")
	})
	t.Run("unsupported tee", func(t *testing.T) {
		_, st, info := e.auth("snp")
		wantProblem(t, st, info, 401, api.ProblemUnsupportedTEE, "snp")
	})
	t.Run("bad version", func(t *testing.T) {
		body, _ := json.Marshal(api.Request{Version: "1.0.0", TEE: "sim"})
		resp, out := e.do("POST", api.AuthPath, body, nil, nil)
		var info api.ErrorInformation
		_ = json.Unmarshal(out, &info)
		wantProblem(t, resp.StatusCode, info, 401, api.ProblemVersion, "1.0.0")
	})
	t.Run("oversized attestation", func(t *testing.T) {
		m, _, _ := e.auth("sim")
		st, info, _ := m.attest(bytes.Repeat([]byte("a"), 2<<20))
		wantProblem(t, st, info, 413, api.ProblemTooLarge, "bytes")
	})
	t.Run("oversized request", func(t *testing.T) {
		resp, out := e.do("POST", api.AuthPath, bytes.Repeat([]byte("a"), 100<<10), nil, nil)
		var info api.ErrorInformation
		_ = json.Unmarshal(out, &info)
		wantProblem(t, resp.StatusCode, info, 413, api.ProblemTooLarge, "bytes")
	})
	t.Run("private tee-pubkey", func(t *testing.T) {
		m, _, _ := e.auth("sim")
		priv, _ := json.Marshal(&jose.JSONWebKey{Key: m.key})
		rd, _ := json.Marshal(api.RuntimeData{Nonce: m.nonce, TEEPubKey: priv})
		body, _ := json.Marshal(api.Attestation{RuntimeData: rd, TEEEvidence: json.RawMessage(`"x"`)})
		st, info, _ := m.attest(body)
		wantProblem(t, st, info, 400, api.ProblemInvalidRequest, "public key")
	})
}

func TestResourceNegative(t *testing.T) {
	e := newEnv(t, false, defaultPolicy())
	ctx := context.Background()

	fetch := func(a tee.Attester) error {
		_, err := e.client(a).Resource(ctx, workloadKeyPath)
		return err
	}
	wantClientErr := func(t *testing.T, err error, status int, kind, detail string) {
		t.Helper()
		var kerr *client.Error
		if !errors.As(err, &kerr) || kerr.Status != status || kerr.Type != kind || !strings.Contains(kerr.Detail, detail) {
			t.Fatalf("got %v, want %d %s %q", err, status, kind, detail)
		}
	}
	t.Run("wrong measurement", func(t *testing.T) {
		err := fetch(e.attester(sim.WithMeasurement(bytes.Repeat([]byte{1}, 48))))
		wantClientErr(t, err, 403, api.ProblemPolicyDeny, "measurement not allowed")
		if !errdefs.IsPermissionDenied(err) {
			t.Fatalf("not permission denied: %v", err)
		}
	})
	t.Run("wrong init-data digest", func(t *testing.T) {
		other := sha256.Sum256([]byte("other init data"))
		c, _ := client.New(e.url, e.attester(sim.WithInitDataDigest(other[:])), client.WithInitData("toml", "other init data"))
		_, err := c.Resource(ctx, workloadKeyPath)
		wantClientErr(t, err, 403, api.ProblemPolicyDeny, "init-data digest not allowed")
	})
	t.Run("debug TEE", func(t *testing.T) {
		wantClientErr(t, fetch(e.attester(sim.WithDebug(true))), 403, api.ProblemPolicyDeny, "debuggable")
	})
	t.Run("no rule", func(t *testing.T) {
		_, err := e.client(e.attester()).Resource(ctx, "other/workload/key1")
		wantClientErr(t, err, 403, api.ProblemPolicyDeny, "no policy rule")
	})
	t.Run("not found", func(t *testing.T) {
		_, err := e.client(e.attester()).Resource(ctx, "default/workload/missing")
		wantClientErr(t, err, 404, api.ProblemResourceNotFound, "not found")
	})
	t.Run("no credentials", func(t *testing.T) {
		resp, out := e.do("GET", api.ResourcePath+workloadKeyPath, nil, nil, nil)
		var info api.ErrorInformation
		_ = json.Unmarshal(out, &info)
		wantProblem(t, resp.StatusCode, info, 401, api.ProblemSessionNotFound, "cookie")
	})
	t.Run("unattested session", func(t *testing.T) {
		m, _, _ := e.auth("sim")
		resp, out := e.do("GET", api.ResourcePath+workloadKeyPath, nil, nil, m.cookie)
		var info api.ErrorInformation
		_ = json.Unmarshal(out, &info)
		wantProblem(t, resp.StatusCode, info, 401, api.ProblemUnauthenticated, "not attested")
	})
	t.Run("cookie session", func(t *testing.T) {
		m, _, _ := e.auth("sim")
		if st, info, _ := m.attest(m.attestation(e.attester(), m.nonce, m.nonce)); st != 200 {
			t.Fatalf("attest %d %+v", st, info)
		}
		resp, out := e.do("GET", api.ResourcePath+workloadKeyPath, nil, nil, m.cookie)
		if resp.StatusCode != 200 {
			t.Fatalf("cookie fetch: %d %s", resp.StatusCode, out)
		}
		plain, err := client.DecryptResponse(out, m.key)
		if err != nil {
			t.Fatal(err)
		}
		if k, err := envelope.ParsePrivateKey(plain); err != nil || !k.(*ecdsa.PrivateKey).Equal(e.wkey) {
			t.Fatalf("released key differs: %v", err)
		}
		other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if _, err := client.DecryptResponse(out, other); err == nil {
			t.Fatal("response decrypted with another key")
		}
	})
	t.Run("tampered token", func(t *testing.T) {
		m, _, _ := e.auth("sim")
		_, _, tok := m.attest(m.attestation(e.attester(), m.nonce, m.nonce))
		parts := strings.Split(tok, ".")
		sig := []byte(parts[2])
		sig[5] ^= 1
		bad := parts[0] + "." + parts[1] + "." + string(sig)
		resp, out := e.do("GET", api.ResourcePath+workloadKeyPath, nil, map[string]string{"Authorization": "Bearer " + bad}, nil)
		var info api.ErrorInformation
		_ = json.Unmarshal(out, &info)
		wantProblem(t, resp.StatusCode, info, 401, api.ProblemTokenInvalid, "")
	})
	t.Run("expired token re-attests", func(t *testing.T) {
		c := e.client(e.attester(), client.WithClock(e.clock.Now))
		if _, err := c.Resource(ctx, workloadKeyPath); err != nil {
			t.Fatal(err)
		}
		tok, _ := c.Token()
		e.clock.Add(kbs.DefaultTokenTTL + time.Minute)
		resp, out := e.do("GET", api.ResourcePath+workloadKeyPath, nil, map[string]string{"Authorization": "Bearer " + tok}, nil)
		var info api.ErrorInformation
		_ = json.Unmarshal(out, &info)
		wantProblem(t, resp.StatusCode, info, 401, api.ProblemTokenInvalid, "expired")
		if _, err := c.Resource(ctx, workloadKeyPath); err != nil {
			t.Fatalf("client did not re-attest: %v", err)
		}
		if tok2, _ := c.Token(); tok2 == tok {
			t.Fatal("token not renewed")
		}
	})
}

func TestSimNotAllowed(t *testing.T) {
	pol := &kbs.Policy{Rules: []kbs.Rule{{Resources: []string{"default/workload/*"}, TEE: []tee.Type{tee.SNP}}}}
	e := newEnv(t, false, pol)
	_, st, info := e.auth("sim")
	wantProblem(t, st, info, 401, api.ProblemSimNotAllowed, "simulated")
	_, err := e.client(e.attester()).Resource(context.Background(), workloadKeyPath)
	var kerr *client.Error
	if !errors.As(err, &kerr) || kerr.Type != api.ProblemSimNotAllowed {
		t.Fatalf("client: %v", err)
	}
	// Default policy (none): sim refused too.
	e2 := newEnv(t, false, &kbs.Policy{})
	_, st, info = e2.auth("sim")
	wantProblem(t, st, info, 401, api.ProblemSimNotAllowed, "simulated")
}

func TestAdmin(t *testing.T) {
	e := newEnv(t, false, defaultPolicy())
	ctx := context.Background()
	_, other, _ := ed25519.GenerateKey(rand.Reader)
	bad, _ := client.NewAdmin(e.url, other, nil)
	err := bad.SetResource(ctx, "default/workload/x", []byte("x"))
	var kerr *client.Error
	if !errors.As(err, &kerr) || kerr.Type != api.ProblemAdminAuth || !strings.Contains(kerr.Detail, "not signed by an admin key") {
		t.Fatalf("wrong admin key: %v", err)
	}
	// Expired and over-long tokens.
	for name, tok := range map[string]func() string{
		"expired":  func() string { s, _ := client.AdminToken(e.admin, time.Now().Add(-time.Hour), time.Minute); return s },
		"too long": func() string { s, _ := client.AdminToken(e.admin, time.Now(), 24*time.Hour); return s },
		"garbage":  func() string { return "abc" },
	} {
		resp, out := e.do("POST", api.ResourcePath+"default/workload/x", []byte("x"), map[string]string{"Authorization": "Bearer " + tok()}, nil)
		if resp.StatusCode != 401 || !bytes.Contains(out, []byte(api.ProblemAdminAuth)) {
			t.Errorf("%s admin token: %d %s", name, resp.StatusCode, out)
		}
	}
	resp, _ := e.do("POST", api.ResourcePath+"default/workload/x", []byte("x"), nil, nil)
	if resp.StatusCode != 401 {
		t.Fatalf("no admin token: %d", resp.StatusCode)
	}
	admin, _ := client.NewAdmin(e.url, e.admin, nil)
	if err := admin.SetResource(ctx, "default/workload/..", []byte("x")); err == nil {
		t.Fatal("path traversal accepted")
	}
	if err := admin.SetResource(ctx, "default/workload/big", make([]byte, kbs.MaxResourceSize+1)); !errdefs.IsInvalidArgument(err) {
		t.Fatalf("oversized resource: %v", err)
	}
	// Policy round trip and effect.
	doc := []byte(`{"rules":[{"resources":["default/*/*"],"tee":["sim"]}]}`)
	if err := admin.SetPolicy(ctx, doc); err != nil {
		t.Fatal(err)
	}
	got, err := admin.Policy(ctx)
	if err != nil || !bytes.Contains(got, []byte(`"default/*/*"`)) {
		t.Fatalf("policy %s, %v", got, err)
	}
	if _, err := e.client(e.attester(sim.WithMeasurement([]byte{1}))).Resource(ctx, workloadKeyPath); err != nil {
		t.Fatalf("relaxed policy: %v", err)
	}
	if err := admin.SetPolicy(ctx, []byte(`{"rules":[{"resources":["a/b"],"tee":["sim"]}]}`)); !errdefs.IsInvalidArgument(err) {
		t.Fatalf("invalid policy: %v", err)
	}
	if err := admin.SetPolicy(ctx, []byte(`{"rulez":[]}`)); !errdefs.IsInvalidArgument(err) {
		t.Fatalf("unknown field: %v", err)
	}
}

// BenchmarkRCARHandshake measures a full auth + attest round trip (sim
// evidence, ephemeral P-256 TEE key) over loopback HTTP.
func BenchmarkRCARHandshake(b *testing.B) {
	e := newEnv(b, false, defaultPolicy())
	c := e.client(e.attester())
	ctx := context.Background()
	for b.Loop() {
		if err := c.Attest(ctx); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkResourceFetch measures fetching and decrypting a resource with a
// cached token over loopback HTTP.
func BenchmarkResourceFetch(b *testing.B) {
	e := newEnv(b, false, defaultPolicy())
	c := e.client(e.attester())
	ctx := context.Background()
	if _, err := c.Resource(ctx, workloadKeyPath); err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		if _, err := c.Resource(ctx, workloadKeyPath); err != nil {
			b.Fatal(err)
		}
	}
}

func TestMain(m *testing.M) {
	// Keep test and benchmark output readable; refusals are asserted, not logged.
	_ = log.SetLevel("warn")
	os.Exit(m.Run())
}
