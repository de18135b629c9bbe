// Package kbssession is the guest's one attested session with the key
// broker: sealed container specs and image decryption keys share it (one
// attestation, one cached token).
package kbssession

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"

	"github.com/raksh-project/raksh/agent"
	"github.com/raksh-project/raksh/agent/unseal"
	"github.com/raksh-project/raksh/kbs/client"
	"github.com/raksh-project/raksh/tee"
	"github.com/raksh-project/raksh/tee/detect"
	"github.com/raksh-project/raksh/tee/initdata"
	"github.com/raksh-project/raksh/tee/sim"
)

// kbsTarget is the proxy target the shim forwards to the key broker
// ([proxy] kbs = "host:port" in the runtime config).
const kbsTarget = "kbs"

// kbsURL is the broker's URL as the guest sees it without init data. The
// guest has no network: every connection is a proxy stream the shim
// forwards to the allow-listed address, so the host part only names the
// target. Without init data the broker is spoken to in plain HTTP over that
// stream: the resources it returns are JWEs encrypted to the guest's
// ephemeral TEE key, bound into the evidence.
const kbsURL = "http://" + kbsTarget

// cmdlinePath is the kernel command line the sim attester reads its launch
// measurement and init-data digest from (the shim's sim launcher puts them
// there).
const cmdlinePath = "/proc/cmdline"

// Session is the agent's one attested KBS client, reached through the
// shim's "kbs" proxy stream and attesting with the TEE the guest runs in
// (the simulated TEE when no hardware TEE is found). Sealed specs and image
// keys share it (one attestation, one cached token). It is built on first
// use and kept; a failure is retried on the next use.
//
// It also holds the pod's init data (tee/initdata): Deliver checks the
// document against the init-data digest of the guest's own TEE report
// before anything uses it. With init data naming a broker, the session
// speaks TLS to it and authenticates it with the document's CA or public
// key, so the node cannot stand in for the broker; it sends the document
// with its evidence, so the broker checks it too. Without init data it
// speaks plain HTTP to whatever the proxy reaches (the resources are still
// encrypted to the guest's attested key).
type Session struct {
	dial Dialer

	mu       sync.Mutex
	c        *client.Client
	attester tee.Attester
	// doc and parsed are the delivered, verified init data.
	doc    []byte
	parsed *initdata.Document
}

// Dialer opens a stream to a proxy target of the shim.
type Dialer func(ctx context.Context, target string) (net.Conn, error)

// New returns a session reaching the broker through dial (the shim's "kbs"
// proxy target).
func New(dial Dialer) *Session {
	return &Session{dial: dial}
}

// attesterLocked returns the guest's attester, detecting it on first use.
func (s *Session) attesterLocked(ctx context.Context) (tee.Attester, error) {
	if s.attester != nil {
		return s.attester, nil
	}
	a, err := detect.NewAttester(ctx, detect.WithFallback(simAttester))
	if err != nil {
		return nil, err
	}
	s.attester = a
	return a, nil
}

// reportedInitData returns the init-data digest of the guest's own report;
// nil when the guest has no TEE or its attester cannot report one.
func (s *Session) reportedInitData(ctx context.Context) ([]byte, error) {
	a, err := s.attesterLocked(ctx)
	if err != nil {
		if errdefs.IsFailedPrecondition(err) || errdefs.IsNotFound(err) {
			return nil, nil // no TEE: nothing can be bound
		}
		return nil, err
	}
	r, ok := a.(tee.InitDataReporter)
	if !ok {
		return nil, fmt.Errorf("the %s attester cannot report its init-data digest: %w", a.Type(), errdefs.ErrNotImplemented)
	}
	return r.InitDataDigest(ctx)
}

// Deliver takes the pod's init-data document from the shim. It is checked
// against the digest the guest's TEE report binds (digest ≠ report:
// refused, and nothing of it is used) and parsed. It can be delivered once.
func (s *Session) Deliver(ctx context.Context, doc []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.doc != nil {
		return fmt.Errorf("init data was already delivered: %w", errdefs.ErrAlreadyExists)
	}
	reported, err := s.reportedInitData(ctx)
	if err != nil {
		return fmt.Errorf("init data: read the TEE report: %w", err)
	}
	if err := initdata.Check(doc, reported); err != nil {
		return err
	}
	d, err := initdata.Parse(doc)
	if err != nil {
		return err
	}
	s.doc, s.parsed = bytes.Clone(doc), d
	log.G(ctx).WithField("digest", hex.EncodeToString(initdata.Digest(doc))).Info("init data verified against the TEE report")
	return nil
}

// InitData returns the pod's verified init data: nil when none was bound
// at launch. When the TEE report binds a digest but no document was
// delivered, it fails: the agent must not run the pod without the rules
// it was launched for.
func (s *Session) InitData(ctx context.Context) (*initdata.Document, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.initDataLocked(ctx)
}

func (s *Session) initDataLocked(ctx context.Context) (*initdata.Document, error) {
	if s.parsed != nil {
		return s.parsed, nil
	}
	reported, err := s.reportedInitData(ctx)
	if err != nil {
		return nil, fmt.Errorf("init data: read the TEE report: %w", err)
	}
	if initdata.Bound(reported) {
		return nil, fmt.Errorf("the TEE report binds init data %s, but none was delivered: %w", hex.EncodeToString(reported), errdefs.ErrFailedPrecondition)
	}
	return nil, nil
}

// Client returns the session's KBS client, building it on first use.
func (s *Session) Client(ctx context.Context) (*client.Client, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.c != nil {
		return s.c, nil
	}
	d, err := s.initDataLocked(ctx)
	if err != nil {
		return nil, err
	}
	a, err := s.attesterLocked(ctx)
	if err != nil {
		return nil, err
	}
	url := kbsURL
	opts := []client.Opt{client.WithDialer(func(ctx context.Context, _, _ string) (net.Conn, error) {
		return s.dial(ctx, kbsTarget)
	})}
	if d != nil {
		opts = append(opts, client.WithInitData(initdata.Format, string(s.doc)))
		if d.KBS != nil {
			tc, err := TLSConfig(d.KBS)
			if err != nil {
				return nil, err
			}
			url = d.KBS.URL
			opts = append(opts, client.WithTLSConfig(tc))
		}
	}
	c, err := client.New(url, a, opts...)
	if err != nil {
		return nil, err
	}
	s.c = c
	return c, nil
}

// TLSConfig returns the TLS configuration authenticating the broker k
// names: its certificate must chain to k.CA (for k's host name) and, with
// k.PublicKey, carry that key.
func TLSConfig(k *initdata.KBS) (*tls.Config, error) {
	tc := &tls.Config{ServerName: k.ServerName(), MinVersion: tls.VersionTLS12}
	if k.CA != "" {
		pool, err := k.CertPool()
		if err != nil {
			return nil, err
		}
		tc.RootCAs = pool
	}
	if k.PublicKey != "" {
		pin, err := k.PublicKeyDER()
		if err != nil {
			return nil, err
		}
		if k.CA == "" {
			// The pinned key alone authenticates the broker; chain and
			// name are not checked (VerifyConnection below is).
			tc.InsecureSkipVerify = true
		}
		tc.VerifyConnection = func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 || !bytes.Equal(cs.PeerCertificates[0].RawSubjectPublicKeyInfo, pin) {
				return fmt.Errorf("the key broker's certificate does not carry the public key the init data pins")
			}
			return nil
		}
	}
	return tc, nil
}

// Resources returns the session as the resource getter of image keys.
func (s *Session) Resources(ctx context.Context) (unseal.ResourceGetter, error) {
	return s.Client(ctx)
}

// KeySource returns the agent's source of workload keys for sealed
// containers: the session's KBS client (which caches its token and the
// keys).
func (s *Session) KeySource() agent.KeySourceFunc {
	var (
		mu   sync.Mutex
		keys unseal.KeySource
	)
	return func(ctx context.Context) (unseal.KeySource, error) {
		mu.Lock()
		defer mu.Unlock()
		if keys != nil {
			return keys, nil
		}
		c, err := s.Client(ctx)
		if err != nil {
			return nil, err
		}
		keys = unseal.NewKBSKeys(c)
		return keys, nil
	}
}

// simAttester returns the simulated TEE's attester: the platform key baked
// into the initrd and the measurement the shim put on the command line.
func simAttester() (tee.Attester, error) {
	b, err := os.ReadFile(cmdlinePath)
	if err != nil {
		return nil, fmt.Errorf("read kernel command line: %w", err)
	}
	if !strings.Contains(string(b), sim.KernelParamMeasurement+"=") {
		return nil, fmt.Errorf("no TEE: this VM was launched without one (set tee = \"sim\" in the runtime config for the simulated TEE): %w", errdefs.ErrFailedPrecondition)
	}
	if _, err := os.Stat(sim.DefaultKeyPath); err != nil {
		return nil, fmt.Errorf("simulated TEE: the initrd carries no platform key at %s (rebuild it with hack/build-guest.sh): %w", sim.DefaultKeyPath, errdefs.ErrFailedPrecondition)
	}
	return sim.NewAttesterFromFiles(sim.DefaultKeyPath, cmdlinePath)
}
