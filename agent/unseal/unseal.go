// Package unseal opens a container's envelope inside the TEE: it checks the
// envelope's binding to this pod and container, obtains the workload private
// key (from the KBS after attestation, or a static key in tests) and merges
// the sealed process fields into the container's OCI spec.
package unseal

import (
	"context"
	"crypto"
	"fmt"
	"io/fs"
	"os"
	"path"
	"strings"
	"sync"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/raksh-project/raksh/envelope"
	"github.com/raksh-project/raksh/tee/pef"
)

// Binding identifies the container an envelope is opened for.
type Binding = envelope.Binding

// KeySource returns the private key named by an envelope's key id
// (kbs:///repo/type/tag).
type KeySource interface {
	PrivateKey(ctx context.Context, kid string) (crypto.PrivateKey, error)
}

// Open parses data, checks it is bound to b (before any key is fetched),
// obtains its key from keys and returns the sealed spec.
func Open(ctx context.Context, data []byte, b Binding, keys KeySource) (*envelope.Spec, error) {
	env, err := envelope.Parse(data)
	if err != nil {
		return nil, err
	}
	if err := env.CheckBinding(b); err != nil {
		return nil, err
	}
	key, err := keys.PrivateKey(ctx, env.KeyID())
	if err != nil {
		return nil, fmt.Errorf("failed to get key %s: %w", env.KeyID(), err)
	}
	spec, err := env.Open(b, key)
	if err != nil {
		return nil, err
	}
	log.G(ctx).WithField("binding", b.String()).WithField("kid", env.KeyID()).Debug("envelope opened")
	return spec, nil
}

// StaticKeys is a KeySource holding keys by key id.
type StaticKeys map[string]crypto.PrivateKey

// PrivateKey implements KeySource.
func (s StaticKeys) PrivateKey(_ context.Context, kid string) (crypto.PrivateKey, error) {
	k, ok := s[kid]
	if !ok {
		return nil, fmt.Errorf("key %s: %w", kid, errdefs.ErrNotFound)
	}
	return k, nil
}

// ReleasedFiles reads files a TEE released to this guest by name
// (pef.KeySource: sealed into the initrd, released by the PEF ultravisor).
type ReleasedFiles interface {
	ReadFile(name string) ([]byte, error)
}

// ReleasedKeys is a KeySource taking the workload key of kid
// kbs:///repo/type/tag from the released file
// pef.ResourceFileName(repo/type/tag), sealed into the initrd by its owner:
// PEF without a key broker. A key not released there is asked of Fallback
// (the broker), if any.
type ReleasedKeys struct {
	Files    ReleasedFiles
	Fallback KeySource
}

// PrivateKey implements KeySource.
func (r ReleasedKeys) PrivateKey(ctx context.Context, kid string) (crypto.PrivateKey, error) {
	p, err := envelope.ParseKeyID(kid)
	if err != nil {
		return nil, err
	}
	data, err := r.Files.ReadFile(pef.ResourceFileName(p))
	if errdefs.IsNotFound(err) {
		if r.Fallback == nil {
			return nil, fmt.Errorf("key %s was not sealed into the initrd and there is no key broker: %w", kid, errdefs.ErrNotFound)
		}
		return r.Fallback.PrivateKey(ctx, kid)
	}
	if err != nil {
		return nil, err
	}
	key, err := envelope.ParsePrivateKey(data)
	if err != nil {
		return nil, fmt.Errorf("sealed resource %s is not a workload key: %w", p, err)
	}
	log.G(ctx).WithField("kid", kid).Info("workload key from the initrd's sealed files (released by the ultravisor)")
	return key, nil
}

// ResourceGetter fetches a KBS resource by path (repo/type/tag); the KBS
// client implements it.
type ResourceGetter interface {
	Resource(ctx context.Context, path string) ([]byte, error)
}

// KBSKeys is a KeySource fetching private keys from a KBS. Parsed keys are
// cached for the life of the value.
type KBSKeys struct {
	client ResourceGetter
	mu     sync.Mutex
	cache  map[string]crypto.PrivateKey
}

// NewKBSKeys returns a KeySource backed by a KBS client.
func NewKBSKeys(c ResourceGetter) *KBSKeys {
	return &KBSKeys{client: c, cache: map[string]crypto.PrivateKey{}}
}

// PrivateKey implements KeySource.
func (k *KBSKeys) PrivateKey(ctx context.Context, kid string) (crypto.PrivateKey, error) {
	p, err := envelope.ParseKeyID(kid)
	if err != nil {
		return nil, err
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	if key, ok := k.cache[kid]; ok {
		return key, nil
	}
	data, err := k.client.Resource(ctx, p)
	if err != nil {
		return nil, err
	}
	key, err := envelope.ParsePrivateKey(data)
	if err != nil {
		return nil, fmt.Errorf("resource %s is not a workload key: %w", p, err)
	}
	k.cache[kid] = key
	return key, nil
}

// Merge applies the sealed process fields to spec: args replace the args
// when sealed, env entries replace variables of the same name or are added,
// cwd replaces the working directory when sealed. Files are not written:
// see WriteFiles.
func Merge(spec *specs.Spec, sealed *envelope.Spec) error {
	if spec == nil || sealed == nil {
		return fmt.Errorf("nil spec: %w", errdefs.ErrInvalidArgument)
	}
	if spec.Process == nil {
		spec.Process = &specs.Process{}
	}
	p := spec.Process
	if len(sealed.Args) > 0 {
		p.Args = append([]string(nil), sealed.Args...)
	}
	if sealed.Cwd != "" {
		p.Cwd = sealed.Cwd
	}
	p.Env = MergeEnv(p.Env, sealed.Env)
	return nil
}

// MergeEnv returns env with each KEY=VALUE of sealed replacing the entries
// named KEY (all of them), or appended when absent.
func MergeEnv(env, sealed []string) []string {
	if len(sealed) == 0 {
		return env
	}
	names := map[string]bool{}
	for _, e := range sealed {
		n, _, _ := strings.Cut(e, "=")
		names[n] = true
	}
	out := make([]string, 0, len(env)+len(sealed))
	for _, e := range env {
		n, _, _ := strings.Cut(e, "=")
		if !names[n] {
			out = append(out, e)
		}
	}
	return append(out, sealed...)
}

// WriteFiles writes the sealed files under rootfs with their modes (0400
// when 0), creating parent directories (0755). Paths are resolved inside
// rootfs: symlinks and ".." cannot escape it.
func WriteFiles(rootfs string, files []envelope.File) error {
	root, err := os.OpenRoot(rootfs)
	if err != nil {
		return fmt.Errorf("failed to open rootfs: %w", err)
	}
	defer root.Close()
	for _, f := range files {
		rel := strings.TrimPrefix(path.Clean("/"+f.Path), "/")
		if rel == "" {
			return fmt.Errorf("file path %q: %w", f.Path, errdefs.ErrInvalidArgument)
		}
		if dir := path.Dir(rel); dir != "." {
			if err := root.MkdirAll(dir, 0o755); err != nil {
				return fmt.Errorf("failed to create parent of %s: %w", f.Path, err)
			}
		}
		mode := fs.FileMode(f.Mode & 0o777)
		if mode == 0 {
			mode = 0o400
		}
		w, err := root.OpenFile(rel, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, mode)
		if err != nil {
			return fmt.Errorf("failed to create %s: %w", f.Path, err)
		}
		_, werr := w.Write(f.Content)
		cerr := w.Close()
		if werr != nil || cerr != nil {
			return fmt.Errorf("failed to write %s", f.Path)
		}
		if err := root.Chmod(rel, mode); err != nil {
			return fmt.Errorf("failed to chmod %s: %w", f.Path, err)
		}
	}
	return nil
}
