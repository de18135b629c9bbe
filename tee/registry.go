package tee

import (
	"fmt"
	"slices"
	"sync"

	"github.com/containerd/errdefs"
)

// Registry holds the Attesters, Verifiers and Launchers of a process by TEE
// type. It is not a package global on purpose: attesters may hold keys, and
// each binary decides which backends it configures. The zero value is not
// usable; call NewRegistry. A Registry is safe for concurrent use.
type Registry struct {
	mu        sync.RWMutex
	attesters map[Type]Attester
	verifiers map[Type]Verifier
	launchers map[Type]Launcher
}

// NewRegistry returns an empty registry.
func NewRegistry() *Registry {
	return &Registry{
		attesters: map[Type]Attester{},
		verifiers: map[Type]Verifier{},
		launchers: map[Type]Launcher{},
	}
}

// RegisterAttester registers a by a.Type(). Registering a type twice
// returns an error wrapping errdefs.ErrAlreadyExists.
func (r *Registry) RegisterAttester(a Attester) error {
	return register(r, r.attesters, a.Type(), a, "attester")
}

// RegisterVerifier registers v by v.Type().
func (r *Registry) RegisterVerifier(v Verifier) error {
	return register(r, r.verifiers, v.Type(), v, "verifier")
}

// RegisterLauncher registers l by l.Type().
func (r *Registry) RegisterLauncher(l Launcher) error {
	return register(r, r.launchers, l.Type(), l, "launcher")
}

// Attester returns the attester of type t, or an error wrapping
// errdefs.ErrNotFound.
func (r *Registry) Attester(t Type) (Attester, error) { return lookup(r, r.attesters, t, "attester") }

// Verifier returns the verifier of type t, or an error wrapping
// errdefs.ErrNotFound.
func (r *Registry) Verifier(t Type) (Verifier, error) { return lookup(r, r.verifiers, t, "verifier") }

// Launcher returns the launcher of type t, or an error wrapping
// errdefs.ErrNotFound.
func (r *Registry) Launcher(t Type) (Launcher, error) { return lookup(r, r.launchers, t, "launcher") }

// VerifierTypes returns the registered verifier types, sorted.
func (r *Registry) VerifierTypes() []Type {
	r.mu.RLock()
	defer r.mu.RUnlock()
	out := make([]Type, 0, len(r.verifiers))
	for t := range r.verifiers {
		out = append(out, t)
	}
	slices.Sort(out)
	return out
}

func register[T any](r *Registry, m map[Type]T, t Type, v T, what string) error {
	if t == "" {
		return fmt.Errorf("%s with empty TEE type: %w", what, errdefs.ErrInvalidArgument)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := m[t]; ok {
		return fmt.Errorf("%s for TEE %q: %w", what, t, errdefs.ErrAlreadyExists)
	}
	m[t] = v
	return nil
}

func lookup[T any](r *Registry, m map[Type]T, t Type, what string) (T, error) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	v, ok := m[t]
	if !ok {
		var zero T
		return zero, fmt.Errorf("no %s for TEE %q: %w", what, t, errdefs.ErrNotFound)
	}
	return v, nil
}
