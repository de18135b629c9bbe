package unseal

import (
	"context"
	"crypto"
	"errors"
	"strings"
	"testing"

	"github.com/containerd/errdefs"

	"github.com/raksh-project/raksh/envelope"
	"github.com/raksh-project/raksh/tee/pef"
)

type releasedMap map[string][]byte

func (m releasedMap) ReadFile(name string) ([]byte, error) {
	b, ok := m[name]
	if !ok {
		return nil, errdefs.ErrNotFound
	}
	return b, nil
}

// TestReleasedKeys takes a workload key from the files a PEF ultravisor
// released (sealed under pef.ResourceFileName of the kid's path), asks the
// broker for keys not sealed, and refuses what it cannot use.
func TestReleasedKeys(t *testing.T) {
	ctx := context.Background()
	sealedKey, _ := envelope.GenerateKey(envelope.KeyP256)
	brokerKey, _ := envelope.GenerateKey(envelope.KeyP256)
	pemKey, _ := envelope.MarshalPrivateKey(sealedKey)
	files := releasedMap{pef.ResourceFileName("default/local/key"): pemKey, pef.ResourceFileName("default/local/bad"): []byte("not a key")}
	broker := StaticKeys{"kbs:///default/broker/key": brokerKey}
	r := ReleasedKeys{Files: files, Fallback: broker}

	k, err := r.PrivateKey(ctx, "kbs:///default/local/key")
	if err != nil || !sealedKey.(interface{ Equal(crypto.PrivateKey) bool }).Equal(k) {
		t.Fatalf("sealed key: %v", err)
	}
	if k, err := r.PrivateKey(ctx, "kbs:///default/broker/key"); err != nil || k != brokerKey {
		t.Fatalf("broker fallback: %v", err)
	}
	if _, err := r.PrivateKey(ctx, "kbs:///default/local/bad"); err == nil || !strings.Contains(err.Error(), "not a workload key") {
		t.Fatalf("bad sealed key: %v", err)
	}
	if _, err := r.PrivateKey(ctx, "kbs:///default/../key"); !errdefs.IsInvalidArgument(err) {
		t.Fatalf("bad kid: %v", err)
	}
	if _, err := (ReleasedKeys{Files: files}).PrivateKey(ctx, "kbs:///default/broker/key"); !errors.Is(err, errdefs.ErrNotFound) || !strings.Contains(err.Error(), "no key broker") {
		t.Fatalf("no broker: %v", err)
	}
	if n := pef.ResourceFileName("default/local/key"); len(n) > pef.MaxFileNameSize || !strings.HasPrefix(n, "kbs-") {
		t.Fatalf("resource file name %q", n)
	}
}
