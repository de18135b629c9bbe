package nri

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/containerd/nri/pkg/api"

	"github.com/raksh-project/raksh/envelope"
	"github.com/raksh-project/raksh/policy/guard"
)

// RecipientAnnotation is the pod annotation selecting, by key id, which of
// the configured recipients a pod's envelopes are sealed to.
const RecipientAnnotation = "io.raksh.recipient"

// imageNameAnnotation is the CRI annotation naming a container's image, used
// when the runtime does not fill in the NRI container's Image.
const imageNameAnnotation = "io.kubernetes.cri.image-name"

// Errors returned for refused containers. Each wraps an errdefs sentinel.
var (
	// ErrNotSealed is returned in require-client-sealed mode for a container
	// without an owner-sealed envelope.
	ErrNotSealed = fmt.Errorf("container of a raksh pod is not sealed by its owner: %w", errdefs.ErrFailedPrecondition)
	// ErrOwnerEnvelope is returned for an owner-sealed envelope that does not
	// decode or is bound to another container.
	ErrOwnerEnvelope = fmt.Errorf("invalid owner-sealed envelope: %w", errdefs.ErrInvalidArgument)
	// ErrTooLarge is returned when a value, file or envelope is over its
	// configured limit.
	ErrTooLarge = fmt.Errorf("over the raksh-nri size limit: %w", errdefs.ErrInvalidArgument)
	// ErrUnknownRecipient is returned when a pod selects a recipient key id
	// that is not configured.
	ErrUnknownRecipient = fmt.Errorf("unknown recipient: %w", errdefs.ErrNotFound)
	// ErrSecretVolume is returned when a secret volume cannot be read
	// safely.
	ErrSecretVolume = fmt.Errorf("failed to seal secret volume: %w", errdefs.ErrFailedPrecondition)
)

// state is one validated configuration with its loaded keys. It is
// immutable once built and swapped atomically by Configure.
type state struct {
	cfg        *Config
	recipients []envelope.Recipient
}

func newState(cfg *Config) (*state, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	rs, err := cfg.loadRecipients()
	if err != nil {
		return nil, err
	}
	return &state{cfg: cfg, recipients: rs}, nil
}

// selects reports whether pod is a raksh pod this configuration handles.
func (s *state) selects(pod *api.PodSandbox) bool {
	c := s.cfg
	if c.Mode == ModeOff || !slices.Contains(c.RuntimeHandlers, pod.GetRuntimeHandler()) {
		return false
	}
	ns := pod.GetNamespace()
	if len(c.Namespaces) > 0 && !matchAny(c.Namespaces, ns) {
		return false
	}
	if matchAny(c.ExcludeNamespaces, ns) {
		return false
	}
	labels := pod.GetLabels()
	for k, want := range c.PodSelector {
		got, ok := labels[k]
		if !ok || (want != "*" && got != want) {
			return false
		}
	}
	return true
}

// adjust computes the adjustment of one container: nil for containers of
// pods that are not raksh pods, otherwise the stripping of sealed items and
// the envelope annotation. Errors name fields and items, never values.
func (s *state) adjust(ctx context.Context, pod *api.PodSandbox, ctr *api.Container) (*api.ContainerAdjustment, error) {
	if !s.selects(pod) {
		return nil, nil
	}
	b := envelope.Binding{Namespace: pod.GetNamespace(), Pod: pod.GetName(), Container: ctr.GetName()}
	if data, ok := ownerEnvelope(pod, ctr); ok {
		return s.adopt(ctx, b, ctr, data)
	}
	if s.cfg.Mode == ModeRequireClientSealed {
		return nil, fmt.Errorf("container %s: %w", b, ErrNotSealed)
	}
	return s.seal(ctx, b, pod, ctr)
}

// ownerEnvelope returns the envelope an owner sealed for ctr: the pod
// annotation io.raksh.envelope/<container> or, for runtimes passing it
// through, the container annotation io.raksh.envelope.
func ownerEnvelope(pod *api.PodSandbox, ctr *api.Container) (string, bool) {
	if v, ok := pod.GetAnnotations()[envelope.PodAnnotationPrefix+ctr.GetName()]; ok {
		return v, true
	}
	v, ok := ctr.GetAnnotations()[envelope.ContainerAnnotation]
	return v, ok
}

// adopt checks an owner-sealed envelope without decrypting it (it decodes
// and is bound to this pod and container) and strips from the container
// what its manifest says was sealed, placeholders included.
func (s *state) adopt(ctx context.Context, b envelope.Binding, ctr *api.Container, data string) (*api.ContainerAdjustment, error) {
	if len(data) > s.cfg.Limits.MaxEnvelopeBytes {
		return nil, fmt.Errorf("container %s: owner envelope is %d bytes, limit %d: %w", b, len(data), s.cfg.Limits.MaxEnvelopeBytes, ErrTooLarge)
	}
	env, err := envelope.Parse([]byte(data))
	if err != nil {
		return nil, fmt.Errorf("container %s: %w: %w", b, ErrOwnerEnvelope, err)
	}
	if err := env.CheckBinding(b); err != nil {
		return nil, fmt.Errorf("container %s: %w: %w", b, ErrOwnerEnvelope, err)
	}
	m := env.Manifest()
	adj := &api.ContainerAdjustment{}
	if m.Args && !isPlaceholderArgs(ctr.GetArgs()) {
		adj.SetArgs([]string{envelope.Placeholder})
	}
	sealed := make(map[string]bool, len(m.Env))
	for _, n := range m.Env {
		sealed[n] = true
	}
	removed := map[string]bool{}
	for _, e := range ctr.GetEnv() {
		name, value, _ := strings.Cut(e, "=")
		if removed[name] {
			continue
		}
		switch {
		case sealed[name] && value != envelope.Placeholder:
			removed[name] = true
			stripEnv(adj, name)
		case value == envelope.Placeholder:
			// A stray placeholder: removal is best effort (see stripEnv).
			removed[name] = true
			adj.RemoveEnv(name)
		}
	}
	var mounts []string
	for _, mnt := range ctr.GetMounts() {
		if exposesAny(mnt, m.Files) {
			mounts = append(mounts, mnt.GetDestination())
			adj.RemoveMount(mnt.GetDestination())
		}
	}
	if ctr.GetAnnotations()[envelope.ContainerAnnotation] != data {
		adj.AddAnnotation(envelope.ContainerAnnotation, data)
	}
	log.G(ctx).WithFields(log.Fields{
		"binding":        b.String(),
		"kid":            env.KeyID(),
		"args":           m.Args,
		"env":            slices.Sorted(maps.Keys(removed)),
		"mounts_removed": mounts,
	}).Info("adopted owner-sealed envelope")
	return adj, nil
}

// seal seals on the node what the configuration selects and strips it from
// the container.
func (s *state) seal(ctx context.Context, b envelope.Binding, pod *api.PodSandbox, ctr *api.Container) (*api.ContainerAdjustment, error) {
	c, lim := s.cfg.Seal, s.cfg.Limits
	r, err := s.recipient(pod)
	if err != nil {
		return nil, fmt.Errorf("container %s: %w", b, err)
	}
	spec := &envelope.Spec{}
	adj := &api.ContainerAdjustment{}
	total := 0

	if args := ctr.GetArgs(); c.Args && len(args) > 0 && !isPlaceholderArgs(args) {
		for i, a := range args {
			if len(a) > lim.MaxValueBytes {
				return nil, fmt.Errorf("container %s: args[%d] is %d bytes, limit %d: %w", b, i, len(a), lim.MaxValueBytes, ErrTooLarge)
			}
			total += len(a)
		}
		spec.Args = slices.Clone(args)
		adj.SetArgs([]string{envelope.Placeholder})
	}

	seen := map[string]bool{}
	for _, e := range ctr.GetEnv() {
		name, _, ok := strings.Cut(e, "=")
		if !ok || name == "" || seen[name] || !c.Env.selects(name) {
			continue
		}
		if len(e) > lim.MaxValueBytes {
			return nil, fmt.Errorf("container %s: env %q is %d bytes, limit %d: %w", b, name, len(e), lim.MaxValueBytes, ErrTooLarge)
		}
		seen[name] = true
		total += len(e)
		spec.Env = append(spec.Env, e)
		stripEnv(adj, name)
	}

	var mounts []string
	for _, mnt := range ctr.GetMounts() {
		if !s.sealsVolume(mnt.GetSource()) {
			continue
		}
		files, err := readVolume(mnt.GetSource(), mnt.GetDestination(), s.cfg.KubeletPodsDir, lim, &total)
		if err != nil {
			return nil, fmt.Errorf("container %s: mount %q: %w", b, mnt.GetDestination(), err)
		}
		spec.Files = append(spec.Files, files...)
		mounts = append(mounts, mnt.GetDestination())
		adj.RemoveMount(mnt.GetDestination())
	}

	if c.Image {
		if ref := imageRef(ctr); ref != nil {
			spec.Image = ref
		}
	}

	if total > lim.MaxEnvelopeBytes {
		return nil, fmt.Errorf("container %s: %d bytes to seal, over the envelope limit %d: %w", b, total, lim.MaxEnvelopeBytes, ErrTooLarge)
	}
	data, err := envelope.Seal(spec, b, r)
	if err != nil {
		return nil, fmt.Errorf("container %s: failed to seal: %w", b, err)
	}
	if len(data) > lim.MaxEnvelopeBytes {
		return nil, fmt.Errorf("container %s: envelope is %d bytes, over the envelope limit %d: %w", b, len(data), lim.MaxEnvelopeBytes, ErrTooLarge)
	}
	adj.AddAnnotation(envelope.ContainerAnnotation, string(data))
	log.G(ctx).WithFields(log.Fields{
		"binding":        b.String(),
		"kid":            r.KeyID,
		"args":           len(spec.Args) > 0,
		"env":            slices.Sorted(maps.Keys(seen)),
		"files":          len(spec.Files),
		"mounts_removed": mounts,
		"image":          spec.Image != nil,
	}).Info("sealed container on the node")
	return adj, nil
}

// stripEnv replaces the value of the environment variable name with the
// placeholder. NRI drops the removal of a variable the container already has
// (the runtime side merges it away, containerd #13432), so removing alone
// leaves the value in clear; an override does reach the spec. The removal
// first claims the variable from any other plugin, as NRI requires.
func stripEnv(adj *api.ContainerAdjustment, name string) {
	adj.RemoveEnv(name)
	adj.AddEnv(name, envelope.Placeholder)
}

// recipient returns the recipient a pod's envelopes are sealed to.
func (s *state) recipient(pod *api.PodSandbox) (envelope.Recipient, error) {
	if len(s.recipients) == 0 {
		return envelope.Recipient{}, fmt.Errorf("no recipient key configured: %w", errdefs.ErrFailedPrecondition)
	}
	kid, ok := pod.GetAnnotations()[RecipientAnnotation]
	if !ok {
		return s.recipients[0], nil
	}
	for _, r := range s.recipients {
		if r.KeyID == kid {
			return r, nil
		}
	}
	return envelope.Recipient{}, fmt.Errorf("pod annotation %s names %q: %w", RecipientAnnotation, kid, ErrUnknownRecipient)
}

// selects reports whether env variable name is sealed.
func (e EnvSelector) selects(name string) bool {
	if matchAny(e.Exclude, name) {
		return false
	}
	return e.All || slices.Contains(e.Names, name) || matchAny(e.Patterns, name)
}

// sealsVolume reports whether a mount source is a volume whose files are
// sealed.
func (s *state) sealsVolume(source string) bool {
	f := s.cfg.Seal.Files
	return (f.Secrets && strings.Contains(source, "/volumes/kubernetes.io~secret/")) ||
		(f.Projected && strings.Contains(source, "/volumes/kubernetes.io~projected/"))
}

// imageRef returns the container's image reference, if known.
func imageRef(ctr *api.Container) *envelope.ImageRef {
	if img := ctr.GetImage(); img != nil && img.GetName() != "" {
		return &envelope.ImageRef{Reference: img.GetName(), Digest: img.GetDigest()}
	}
	if name := ctr.GetAnnotations()[imageNameAnnotation]; name != "" {
		return &envelope.ImageRef{Reference: name}
	}
	return nil
}

// isPlaceholderArgs reports whether args are already the agent's
// placeholder.
func isPlaceholderArgs(args []string) bool {
	return len(args) == 1 && args[0] == envelope.Placeholder
}

// exposesAny reports whether mnt makes one of the sealed files visible.
func exposesAny(mnt *api.Mount, files []string) bool {
	if !guard.HostBacked(mnt.GetType(), mnt.GetOptions()) {
		return false
	}
	dest := mnt.GetDestination()
	return slices.ContainsFunc(files, func(f string) bool { return guard.Covers(dest, f) })
}
