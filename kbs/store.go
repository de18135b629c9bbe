package kbs

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/containerd/continuity"
	"github.com/containerd/errdefs"
)

// MaxResourceSize bounds a stored resource.
const MaxResourceSize = 1 << 20

// Store holds resources by path (repo/type/tag).
type Store interface {
	// Get returns the resource, or an error wrapping errdefs.ErrNotFound.
	Get(resourcePath string) ([]byte, error)
	// Set creates or replaces the resource.
	Set(resourcePath string, data []byte) error
}

// ParseResourcePath validates repo/type/tag: three non-empty segments of
// [A-Za-z0-9._-], none "." or "..".
func ParseResourcePath(p string) (string, error) {
	parts := strings.Split(p, "/")
	if len(parts) != 3 {
		return "", fmt.Errorf("resource path %q is not repo/type/tag: %w", p, errdefs.ErrInvalidArgument)
	}
	for _, s := range parts {
		if !validSegment(s) {
			return "", fmt.Errorf("resource path %q has an invalid segment: %w", p, errdefs.ErrInvalidArgument)
		}
	}
	return p, nil
}

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

// FileStore is a Store on disk: <dir>/<repo>/<type>/<tag>, files 0600,
// directories 0700, replaced atomically.
type FileStore struct {
	dir string
}

var _ Store = (*FileStore)(nil)

// NewFileStore returns a store rooted at dir, creating it.
func NewFileStore(dir string) (*FileStore, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("failed to create resource dir: %w", err)
	}
	return &FileStore{dir: dir}, nil
}

// Get implements Store.
func (s *FileStore) Get(resourcePath string) ([]byte, error) {
	p, err := ParseResourcePath(resourcePath)
	if err != nil {
		return nil, err
	}
	data, err := os.ReadFile(filepath.Join(s.dir, filepath.FromSlash(p)))
	if os.IsNotExist(err) {
		return nil, fmt.Errorf("resource %s: %w", p, errdefs.ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("failed to read resource %s: %w", p, err)
	}
	return data, nil
}

// Set implements Store.
func (s *FileStore) Set(resourcePath string, data []byte) error {
	p, err := ParseResourcePath(resourcePath)
	if err != nil {
		return err
	}
	if len(data) > MaxResourceSize {
		return fmt.Errorf("resource %s of %d bytes: %w", p, len(data), errdefs.ErrInvalidArgument)
	}
	target := filepath.Join(s.dir, filepath.FromSlash(p))
	if err := os.MkdirAll(filepath.Dir(target), 0o700); err != nil {
		return fmt.Errorf("failed to create resource dir: %w", err)
	}
	if err := continuity.AtomicWriteFile(target, data, 0o600); err != nil {
		return fmt.Errorf("failed to write resource %s: %w", p, err)
	}
	return nil
}
