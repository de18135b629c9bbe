// Package envelope seals the secret parts of a container's process spec
// (args, env, working directory, secret files, image reference, exec policy)
// for one container of one pod, so that only a TEE holding the workload
// private key can open it.
//
// An envelope is a JWE in JSON (flattened) serialization produced with
// go-jose: ECDH-ES+A256KW (P-256/P-384) or RSA-OAEP-256 key management and
// A256GCM content encryption, with a fresh content key and nonce for every
// envelope. The JWE's additional authenticated data is the canonical JSON of
// the envelope's Binding {namespace, pod, container}, so an envelope moved to
// another container or pod is detected before and during decryption. The
// protected header carries the envelope version, the key id (the KBS resource
// URI of the private key, kbs:///repo/type/tag) and a Manifest naming what
// was sealed, never the values.
package envelope

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"path"
	"slices"
	"strings"

	"github.com/containerd/errdefs"
	jose "github.com/go-jose/go-jose/v4"
)

const (
	// Version is the version of the sealed payload and of the envelope
	// header. Parse refuses any other version.
	Version = "raksh.envelope/v1"
	// ContainerAnnotation is the container annotation carrying the envelope
	// (JWE JSON serialization) on the node.
	ContainerAnnotation = "io.raksh.envelope"
	// PodAnnotationPrefix prefixes the pod annotation carrying the envelope
	// an owner sealed for a container: the key is the prefix followed by the
	// container name.
	PodAnnotationPrefix = "io.raksh.envelope/"
	// Placeholder is the value left in visible fields whose content was
	// sealed.
	Placeholder = "raksh-sealed"
	// ContentType is the JWE "cty" of a sealed spec.
	ContentType = "application/vnd.raksh.spec.v1+json"
	// MaxSize is the largest serialized envelope Parse accepts.
	MaxSize = 1 << 20
	// KeyIDScheme prefixes key ids: kbs:///<repo>/<type>/<tag>.
	KeyIDScheme = "kbs:///"

	headerVersion  = "raksh.v"
	headerManifest = "raksh.manifest"

	maxFiles   = 256
	maxEnv     = 4096
	maxArgs    = 4096
	minRSABits = 2048
)

// Errors returned by this package. Each wraps an errdefs sentinel, so callers
// may test either (errors.Is(err, ErrWrongBinding) or errdefs.IsInvalidArgument).
var (
	// ErrMalformed is returned for input that is not a well-formed envelope
	// or a well-formed sealed spec.
	ErrMalformed = fmt.Errorf("malformed envelope: %w", errdefs.ErrInvalidArgument)
	// ErrTooLarge is returned for input over MaxSize or spec limits.
	ErrTooLarge = fmt.Errorf("envelope too large: %w", errdefs.ErrInvalidArgument)
	// ErrUnsupportedVersion is returned for an envelope or payload of an
	// unknown version.
	ErrUnsupportedVersion = fmt.Errorf("unsupported envelope version: %w", errdefs.ErrNotImplemented)
	// ErrUnsupportedAlgorithm is returned for a JWE algorithm, encryption or
	// key type outside the allow-list.
	ErrUnsupportedAlgorithm = fmt.Errorf("unsupported envelope algorithm: %w", errdefs.ErrNotImplemented)
	// ErrWrongBinding is returned when an envelope is bound to another
	// namespace, pod or container than the one opening it.
	ErrWrongBinding = fmt.Errorf("envelope bound to another container: %w", errdefs.ErrPermissionDenied)
	// ErrDecrypt is returned when decryption fails: wrong key, or modified
	// header, key, nonce, ciphertext, tag or binding.
	ErrDecrypt = fmt.Errorf("envelope decryption failed (wrong key or tampered envelope): %w", errdefs.ErrPermissionDenied)
	// ErrInvalidSpec is returned for a spec that cannot be sealed.
	ErrInvalidSpec = fmt.Errorf("invalid sealed spec: %w", errdefs.ErrInvalidArgument)
)

var (
	keyAlgorithms     = []jose.KeyAlgorithm{jose.ECDH_ES_A256KW, jose.RSA_OAEP_256}
	contentEncryption = []jose.ContentEncryption{jose.A256GCM}
)

// Binding identifies the container an envelope may be opened for.
//
// Namespace and Container are always exact. Pod is a pod name or, for pods
// a controller creates (Deployment, StatefulSet, ...), a pattern in which
// each "*" stands for one generated name segment: one or more of [a-z0-9],
// never "-". "web-*-*" matches the pods of Deployment "web" (web-<hash>-<id>)
// but not those of Deployment "web-admin" (web-admin-<hash>-<id>).
type Binding struct {
	Namespace string `json:"namespace"`
	Pod       string `json:"pod"`
	Container string `json:"container"`
}

// String renders the binding as namespace/pod/container.
func (b Binding) String() string { return b.Namespace + "/" + b.Pod + "/" + b.Container }

// Validate returns an error if a field of the binding is empty, or if
// Namespace or Container holds a "*".
func (b Binding) Validate() error {
	if b.Namespace == "" || b.Pod == "" || b.Container == "" {
		return fmt.Errorf("binding %q: namespace, pod and container are required: %w", b.String(), errdefs.ErrInvalidArgument)
	}
	if strings.Contains(b.Namespace, "*") || strings.Contains(b.Container, "*") || strings.Contains(b.Pod, "**") {
		return fmt.Errorf("binding %q: only the pod name may hold single \"*\" segments: %w", b.String(), errdefs.ErrInvalidArgument)
	}
	return nil
}

// Matches reports whether the concrete binding actual (a running pod's
// namespace, name and container) is covered by b.
func (b Binding) Matches(actual Binding) bool {
	if b.Namespace != actual.Namespace || b.Container != actual.Container {
		return false
	}
	return matchPod(b.Pod, actual.Pod)
}

// matchPod matches name against pattern, where "*" matches one or more of
// [a-z0-9].
func matchPod(pattern, name string) bool {
	for pattern != "" {
		i := strings.IndexByte(pattern, '*')
		if i < 0 {
			return pattern == name
		}
		if !strings.HasPrefix(name, pattern[:i]) {
			return false
		}
		name, pattern = name[i:], pattern[i+1:]
		n := 0
		for n < len(name) && (name[n] >= 'a' && name[n] <= 'z' || name[n] >= '0' && name[n] <= '9') {
			n++
		}
		if n == 0 {
			return false
		}
		name = name[n:]
	}
	return name == ""
}

// canonical is the canonical JSON of the binding: keys sorted, no
// whitespace, no HTML escaping. It is the JWE additional authenticated data.
func (b Binding) canonical() ([]byte, error) {
	v := struct {
		Container string `json:"container"`
		Namespace string `json:"namespace"`
		Pod       string `json:"pod"`
	}{b.Container, b.Namespace, b.Pod}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n")), nil
}

// File is a secret file written into the container's root filesystem.
type File struct {
	// Path is the absolute, clean path inside the container.
	Path string `json:"path"`
	// Mode is the permission bits of the file (0 means 0400).
	Mode uint32 `json:"mode"`
	// Content is the file content.
	Content []byte `json:"content"`
}

// ImageRef names the image a sealed container must run.
type ImageRef struct {
	// Reference is the image reference (registry/repo:tag or @digest).
	Reference string `json:"reference"`
	// Digest is the manifest digest the image must match, if set.
	Digest string `json:"digest,omitempty"`
}

// ExecPolicy says what the node may do with a running sealed container.
type ExecPolicy struct {
	// AllowExec allows exec into the container.
	AllowExec bool `json:"allow_exec"`
	// AllowLogs allows the container's stdout/stderr to reach the node.
	AllowLogs bool `json:"allow_logs"`
}

// Spec is the sealed part of a container's spec.
type Spec struct {
	// Version is Version; Seal sets it when empty.
	Version string `json:"version"`
	// Args replaces the process args when not empty.
	Args []string `json:"args,omitempty"`
	// Env entries (KEY=VALUE) replace or add variables by name.
	Env []string `json:"env,omitempty"`
	// Cwd replaces the working directory when not empty.
	Cwd string `json:"cwd,omitempty"`
	// Files are secret files written into the container.
	Files []File `json:"files,omitempty"`
	// Image is the image the container must run, if sealed.
	Image *ImageRef `json:"image,omitempty"`
	// Exec is the exec/log policy, if any.
	Exec *ExecPolicy `json:"exec,omitempty"`
	// Mounts restricts the node's volume mounts, if set.
	Mounts *MountPolicy `json:"mounts,omitempty"`
}

// Mount kinds a MountPolicy names: how a volume of the node's spec reaches
// the guest (docs/volumes.md).
const (
	// MountCopy is a volume copied into the guest: ConfigMap, Secret,
	// projected and downward-API volumes, CRI's /etc/hosts, /etc/hostname,
	// /etc/resolv.conf and /dev/termination-log.
	MountCopy = "copy"
	// MountEmptyDir is an emptyDir: a guest tmpfs.
	MountEmptyDir = "empty-dir"
	// MountShared is a node path shared live with virtio-fs (only where
	// the node's runtime config allows it): the node's content.
	MountShared = "shared"
)

// MountPolicy says which of the node's volume mounts a sealed container
// accepts. Every bind mount of the node's spec (other than the pod's
// /dev/shm) must match a rule, or the container is not created; the
// filesystems the guest kernel creates (proc, sysfs, tmpfs, ...) and the
// sealed files are not volumes and always kept.
type MountPolicy struct {
	// Allow are the accepted mounts.
	Allow []MountRule `json:"allow"`
}

// MountRule accepts the mounts at one destination.
type MountRule struct {
	// Destination is the absolute, clean path in the container; a final
	// "/*" element accepts anything below the directory (not the
	// directory itself).
	Destination string `json:"destination"`
	// Kinds are the accepted MountCopy, MountEmptyDir or MountShared;
	// empty accepts copies and emptyDirs, never a shared node path.
	Kinds []string `json:"kinds,omitempty"`
	// ReadOnly requires the mount to be read-only in the container.
	ReadOnly bool `json:"read_only,omitempty"`
}

// maxMountRules bounds a MountPolicy.
const maxMountRules = 256

// Match reports whether the rule accepts a mount at destination of kind,
// read-only or not.
func (r MountRule) Match(destination, kind string, readOnly bool) bool {
	if prefix, ok := strings.CutSuffix(r.Destination, "/*"); ok {
		if !strings.HasPrefix(destination, strings.TrimSuffix(prefix, "/")+"/") {
			return false
		}
	} else if destination != r.Destination {
		return false
	}
	if r.ReadOnly && !readOnly {
		return false
	}
	kinds := r.Kinds
	if len(kinds) == 0 {
		kinds = []string{MountCopy, MountEmptyDir}
	}
	return slices.Contains(kinds, kind)
}

// Allows reports whether p accepts a mount at destination of kind.
func (p *MountPolicy) Allows(destination, kind string, readOnly bool) bool {
	for _, r := range p.Allow {
		if r.Match(destination, kind, readOnly) {
			return true
		}
	}
	return false
}

func (p *MountPolicy) validate() error {
	if len(p.Allow) > maxMountRules {
		return fmt.Errorf("more than %d mount rules: %w", maxMountRules, ErrTooLarge)
	}
	for _, r := range p.Allow {
		d := strings.TrimSuffix(r.Destination, "/*")
		if d == "" && r.Destination == "/*" {
			d = "/"
		}
		if !path.IsAbs(d) || path.Clean(d) != d {
			return fmt.Errorf("mount rule destination %q must be absolute and clean: %w", r.Destination, ErrInvalidSpec)
		}
		for _, k := range r.Kinds {
			if k != MountCopy && k != MountEmptyDir && k != MountShared {
				return fmt.Errorf("mount rule %q: unknown kind %q (copy, empty-dir or shared): %w", r.Destination, k, ErrInvalidSpec)
			}
		}
	}
	return nil
}

// Manifest names what an envelope seals, without values. It travels in the
// JWE protected header: readable without the key, authenticated on Open.
type Manifest struct {
	Args  bool     `json:"args,omitempty"`
	Cwd   bool     `json:"cwd,omitempty"`
	Env   []string `json:"env,omitempty"`
	Files []string `json:"files,omitempty"`
	Image bool     `json:"image,omitempty"`
	Exec  bool     `json:"exec,omitempty"`
	// Mounts is set when a mount policy is sealed.
	Mounts bool `json:"mounts,omitempty"`
}

// Manifest returns the manifest of s.
func (s *Spec) Manifest() Manifest {
	m := Manifest{Args: len(s.Args) > 0, Cwd: s.Cwd != "", Image: s.Image != nil, Exec: s.Exec != nil, Mounts: s.Mounts != nil}
	for _, e := range s.Env {
		name, _, _ := strings.Cut(e, "=")
		m.Env = append(m.Env, name)
	}
	for _, f := range s.Files {
		m.Files = append(m.Files, f.Path)
	}
	return m
}

// Validate checks the spec's shape. Error messages name fields and paths,
// never values.
func (s *Spec) Validate() error {
	if s.Version != Version {
		return fmt.Errorf("spec version %q: %w", s.Version, ErrUnsupportedVersion)
	}
	if len(s.Args) > maxArgs || len(s.Env) > maxEnv || len(s.Files) > maxFiles {
		return fmt.Errorf("too many args, env entries or files: %w", ErrTooLarge)
	}
	seen := map[string]bool{}
	for i, e := range s.Env {
		name, _, ok := strings.Cut(e, "=")
		if !ok || name == "" {
			return fmt.Errorf("env entry %d is not KEY=VALUE: %w", i, ErrInvalidSpec)
		}
		if seen[name] {
			return fmt.Errorf("env %q set twice: %w", name, ErrInvalidSpec)
		}
		seen[name] = true
	}
	if s.Cwd != "" && !path.IsAbs(s.Cwd) {
		return fmt.Errorf("cwd must be absolute: %w", ErrInvalidSpec)
	}
	files := map[string]bool{}
	for _, f := range s.Files {
		if !path.IsAbs(f.Path) || path.Clean(f.Path) != f.Path || f.Path == "/" {
			return fmt.Errorf("file path %q must be absolute and clean: %w", f.Path, ErrInvalidSpec)
		}
		if f.Mode&^0o777 != 0 {
			return fmt.Errorf("file %q: mode %o has bits beyond 0777: %w", f.Path, f.Mode, ErrInvalidSpec)
		}
		if files[f.Path] {
			return fmt.Errorf("file %q sealed twice: %w", f.Path, ErrInvalidSpec)
		}
		files[f.Path] = true
	}
	if s.Image != nil && s.Image.Reference == "" {
		return fmt.Errorf("image reference is empty: %w", ErrInvalidSpec)
	}
	if s.Mounts != nil {
		if err := s.Mounts.validate(); err != nil {
			return err
		}
	}
	return nil
}

// Recipient is the public key an envelope is sealed to.
type Recipient struct {
	// KeyID is the KBS resource URI of the private key (kbs:///repo/type/tag).
	KeyID string
	// Key is an *ecdsa.PublicKey (P-256 or P-384) or an *rsa.PublicKey
	// (2048 bits or more).
	Key crypto.PublicKey
}

// ParseKeyID returns the KBS resource path (repo/type/tag) of a key id.
func ParseKeyID(kid string) (string, error) {
	p, ok := strings.CutPrefix(kid, KeyIDScheme)
	if !ok {
		return "", fmt.Errorf("key id %q does not start with %s: %w", kid, KeyIDScheme, errdefs.ErrInvalidArgument)
	}
	parts := strings.Split(p, "/")
	if len(parts) != 3 {
		return "", fmt.Errorf("key id %q is not %s<repo>/<type>/<tag>: %w", kid, KeyIDScheme, errdefs.ErrInvalidArgument)
	}
	for _, s := range parts {
		if !validSegment(s) {
			return "", fmt.Errorf("key id %q has an invalid path segment: %w", kid, errdefs.ErrInvalidArgument)
		}
	}
	return p, nil
}

// validSegment accepts one KBS resource path segment.
func validSegment(s string) bool {
	if s == "" || s == "." || s == ".." || len(s) > 128 {
		return false
	}
	for _, r := range s {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '-', r == '_', r == '.':
		default:
			return false
		}
	}
	return true
}

// keyAlgorithm picks the JWE key management algorithm for a public key.
func keyAlgorithm(k crypto.PublicKey) (jose.KeyAlgorithm, error) {
	switch k := k.(type) {
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() && k.Curve != elliptic.P384() {
			return "", fmt.Errorf("EC curve %s: %w", k.Curve.Params().Name, ErrUnsupportedAlgorithm)
		}
		return jose.ECDH_ES_A256KW, nil
	case *rsa.PublicKey:
		if k.N.BitLen() < minRSABits {
			return "", fmt.Errorf("RSA key of %d bits: %w", k.N.BitLen(), ErrUnsupportedAlgorithm)
		}
		return jose.RSA_OAEP_256, nil
	default:
		return "", fmt.Errorf("key type %T: %w", k, ErrUnsupportedAlgorithm)
	}
}

// Seal encrypts spec for the container identified by b, to recipient r. Every
// call uses a fresh content key and nonce. spec.Version may be empty.
func Seal(spec *Spec, b Binding, r Recipient) ([]byte, error) {
	if spec == nil {
		return nil, fmt.Errorf("nil spec: %w", ErrInvalidSpec)
	}
	if err := b.Validate(); err != nil {
		return nil, err
	}
	if _, err := ParseKeyID(r.KeyID); err != nil {
		return nil, err
	}
	alg, err := keyAlgorithm(r.Key)
	if err != nil {
		return nil, err
	}
	s := *spec
	if s.Version == "" {
		s.Version = Version
	}
	if err := s.Validate(); err != nil {
		return nil, err
	}
	payload, err := json.Marshal(&s)
	if err != nil {
		return nil, fmt.Errorf("failed to encode sealed spec: %w", err)
	}
	aad, err := b.canonical()
	if err != nil {
		return nil, err
	}
	opts := (&jose.EncrypterOptions{}).
		WithContentType(ContentType).
		WithHeader(headerVersion, Version).
		WithHeader(headerManifest, s.Manifest())
	enc, err := jose.NewEncrypter(jose.A256GCM, jose.Recipient{Algorithm: alg, Key: r.Key, KeyID: r.KeyID}, opts)
	if err != nil {
		return nil, fmt.Errorf("failed to create encrypter: %w", err)
	}
	obj, err := enc.EncryptWithAuthData(payload, aad)
	if err != nil {
		return nil, fmt.Errorf("failed to encrypt envelope: %w", err)
	}
	out := obj.FullSerialize()
	if out == "" {
		return nil, errors.New("failed to serialize envelope")
	}
	if len(out) > MaxSize {
		return nil, fmt.Errorf("sealed envelope is %d bytes, limit %d: %w", len(out), MaxSize, ErrTooLarge)
	}
	return []byte(out), nil
}

// Envelope is a parsed, not yet decrypted, envelope.
type Envelope struct {
	jwe      *jose.JSONWebEncryption
	alg      jose.KeyAlgorithm
	kid      string
	binding  Binding
	manifest Manifest
	aad      []byte
}

// rawEnvelope is the only accepted shape: flattened JWE JSON, every header
// protected.
type rawEnvelope struct {
	Protected    string `json:"protected"`
	EncryptedKey string `json:"encrypted_key"`
	AAD          string `json:"aad"`
	IV           string `json:"iv"`
	Ciphertext   string `json:"ciphertext"`
	Tag          string `json:"tag"`
}

// protectedHeader is the accepted protected header.
type protectedHeader struct {
	Alg      string          `json:"alg"`
	Enc      string          `json:"enc"`
	Kid      string          `json:"kid"`
	Cty      string          `json:"cty"`
	EPK      json.RawMessage `json:"epk,omitempty"`
	Version  string          `json:"raksh.v"`
	Manifest *Manifest       `json:"raksh.manifest"`
}

func strictUnmarshal(data []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if err := dec.Decode(&struct{}{}); err != io.EOF {
		return errors.New("trailing data")
	}
	return nil
}

// Parse parses a serialized envelope without decrypting it. It accepts only
// the flattened JWE JSON serialization with every header protected, the
// allowed algorithms, this package's Version and a valid key id and binding.
func Parse(data []byte) (*Envelope, error) {
	if len(data) > MaxSize {
		return nil, fmt.Errorf("%d bytes, limit %d: %w", len(data), MaxSize, ErrTooLarge)
	}
	var raw rawEnvelope
	if err := strictUnmarshal(data, &raw); err != nil {
		return nil, fmt.Errorf("not a flattened JWE JSON object (%v): %w", err, ErrMalformed)
	}
	if raw.Protected == "" || raw.EncryptedKey == "" || raw.AAD == "" || raw.IV == "" || raw.Ciphertext == "" || raw.Tag == "" {
		return nil, fmt.Errorf("missing JWE member: %w", ErrMalformed)
	}
	hb, err := base64.RawURLEncoding.DecodeString(raw.Protected)
	if err != nil {
		return nil, fmt.Errorf("protected header is not base64url: %w", ErrMalformed)
	}
	var h protectedHeader
	if err := strictUnmarshal(hb, &h); err != nil {
		return nil, fmt.Errorf("protected header (%v): %w", err, ErrMalformed)
	}
	if h.Version != Version {
		return nil, fmt.Errorf("header version %q: %w", h.Version, ErrUnsupportedVersion)
	}
	alg := jose.KeyAlgorithm(h.Alg)
	if alg != jose.ECDH_ES_A256KW && alg != jose.RSA_OAEP_256 {
		return nil, fmt.Errorf("alg %q: %w", h.Alg, ErrUnsupportedAlgorithm)
	}
	if jose.ContentEncryption(h.Enc) != jose.A256GCM {
		return nil, fmt.Errorf("enc %q: %w", h.Enc, ErrUnsupportedAlgorithm)
	}
	if h.Cty != ContentType {
		return nil, fmt.Errorf("content type %q: %w", h.Cty, ErrMalformed)
	}
	if h.Manifest == nil {
		return nil, fmt.Errorf("missing manifest: %w", ErrMalformed)
	}
	if _, err := ParseKeyID(h.Kid); err != nil {
		return nil, fmt.Errorf("%v: %w", err, ErrMalformed)
	}
	aad, err := base64.RawURLEncoding.DecodeString(raw.AAD)
	if err != nil {
		return nil, fmt.Errorf("aad is not base64url: %w", ErrMalformed)
	}
	var b Binding
	if err := strictUnmarshal(aad, &b); err != nil {
		return nil, fmt.Errorf("binding (%v): %w", err, ErrMalformed)
	}
	if c, err := b.canonical(); err != nil || !bytes.Equal(c, aad) {
		return nil, fmt.Errorf("binding is not canonical JSON: %w", ErrMalformed)
	}
	if err := b.Validate(); err != nil {
		return nil, fmt.Errorf("%v: %w", err, ErrMalformed)
	}
	obj, err := jose.ParseEncryptedJSON(string(data), keyAlgorithms, contentEncryption)
	if err != nil {
		return nil, fmt.Errorf("JWE (%v): %w", err, ErrMalformed)
	}
	// Guard against parser differentials (duplicate members): go-jose must
	// have seen what we checked.
	if !bytes.Equal(obj.GetAuthData(), aad) || obj.Header.KeyID != h.Kid || obj.Header.Algorithm != h.Alg {
		return nil, fmt.Errorf("ambiguous JWE members: %w", ErrMalformed)
	}
	return &Envelope{jwe: obj, alg: alg, kid: h.Kid, binding: b, manifest: *h.Manifest, aad: aad}, nil
}

// KeyID returns the KBS resource URI of the private key that opens e.
func (e *Envelope) KeyID() string { return e.kid }

// Algorithm returns the JWE key management algorithm of e.
func (e *Envelope) Algorithm() string { return string(e.alg) }

// Binding returns the container e claims to be bound to. It is
// authenticated only once Open succeeds.
func (e *Envelope) Binding() Binding { return e.binding }

// Manifest returns the names of what e seals. It is authenticated only once
// Open succeeds.
func (e *Envelope) Manifest() Manifest { return e.manifest }

// CheckBinding returns ErrWrongBinding unless e's binding covers b, the
// concrete namespace, pod and container opening it (see Binding.Matches).
// It does not decrypt.
func (e *Envelope) CheckBinding(b Binding) error {
	if e.binding != b && !e.binding.Matches(b) {
		return fmt.Errorf("envelope for %s opened as %s: %w", e.binding, b, ErrWrongBinding)
	}
	return nil
}

// Open checks that e is bound to b, decrypts it with key (an
// *ecdsa.PrivateKey or *rsa.PrivateKey) and returns the sealed spec.
func (e *Envelope) Open(b Binding, key crypto.PrivateKey) (*Spec, error) {
	if err := e.CheckBinding(b); err != nil {
		return nil, err
	}
	switch k := key.(type) {
	case *ecdsa.PrivateKey:
		if e.alg != jose.ECDH_ES_A256KW {
			return nil, fmt.Errorf("EC key for %s envelope: %w", e.alg, ErrDecrypt)
		}
	case *rsa.PrivateKey:
		if e.alg != jose.RSA_OAEP_256 {
			return nil, fmt.Errorf("RSA key for %s envelope: %w", e.alg, ErrDecrypt)
		}
	default:
		return nil, fmt.Errorf("private key type %T: %w", k, ErrUnsupportedAlgorithm)
	}
	payload, err := e.jwe.Decrypt(key)
	if err != nil {
		return nil, ErrDecrypt
	}
	var s Spec
	if err := strictUnmarshal(payload, &s); err != nil {
		return nil, fmt.Errorf("sealed spec does not decode: %w", ErrMalformed)
	}
	if err := s.Validate(); err != nil {
		return nil, err
	}
	if !manifestEqual(s.Manifest(), e.manifest) {
		return nil, fmt.Errorf("manifest does not match the sealed spec: %w", ErrMalformed)
	}
	return &s, nil
}

func manifestEqual(a, b Manifest) bool {
	ja, _ := json.Marshal(a)
	jb, _ := json.Marshal(b)
	return bytes.Equal(ja, jb)
}
