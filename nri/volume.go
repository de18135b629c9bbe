package nri

import (
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"

	"github.com/raksh-project/raksh/envelope"
)

// readVolume reads the files of a secret or projected volume mounted at dest
// from its host source, which must lie below podsDir. It follows the
// kubelet's atomic-writer layout (visible names are symlinks into ..data;
// names starting with ".." are internal and skipped) without ever leaving
// the volume directory. Every file is at most lim.MaxFileBytes; *total
// accumulates the bytes read and is checked against lim.MaxEnvelopeBytes.
// Errors name paths, never contents.
func readVolume(source, dest, podsDir string, lim Limits, total *int) ([]envelope.File, error) {
	src := filepath.Clean(source)
	if !within(podsDir, src) {
		return nil, fmt.Errorf("source is not below the kubelet pods directory %s: %w", podsDir, ErrSecretVolume)
	}
	root, err := filepath.EvalSymlinks(src)
	if err != nil {
		return nil, fmt.Errorf("%v: %w", err, ErrSecretVolume)
	}
	realPods, err := filepath.EvalSymlinks(podsDir)
	if err != nil {
		return nil, fmt.Errorf("%v: %w", err, ErrSecretVolume)
	}
	if !within(realPods, root) {
		return nil, fmt.Errorf("source resolves outside the kubelet pods directory: %w", ErrSecretVolume)
	}
	fi, err := os.Stat(root)
	if err != nil {
		return nil, fmt.Errorf("%v: %w", err, ErrSecretVolume)
	}
	dest = path.Clean("/" + dest)
	r := &volumeReader{root: root, lim: lim, total: total}
	if !fi.IsDir() {
		f, err := r.file(root, dest, fi)
		if err != nil {
			return nil, err
		}
		return []envelope.File{f}, nil
	}
	if err := r.dir(root, dest, 0); err != nil {
		return nil, err
	}
	return r.files, nil
}

// maxVolumeDepth bounds directory nesting inside a volume.
const maxVolumeDepth = 16

type volumeReader struct {
	root  string
	lim   Limits
	total *int
	files []envelope.File
}

func (r *volumeReader) dir(dir, dest string, depth int) error {
	if depth > maxVolumeDepth {
		return fmt.Errorf("directory %q nested too deep: %w", dest, ErrSecretVolume)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("%v: %w", err, ErrSecretVolume)
	}
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), "..") {
			continue
		}
		p, err := filepath.EvalSymlinks(filepath.Join(dir, e.Name()))
		if err != nil {
			return fmt.Errorf("%q: %v: %w", path.Join(dest, e.Name()), err, ErrSecretVolume)
		}
		if !within(r.root, p) {
			return fmt.Errorf("%q links outside its volume: %w", path.Join(dest, e.Name()), ErrSecretVolume)
		}
		fi, err := os.Stat(p)
		if err != nil {
			return fmt.Errorf("%v: %w", err, ErrSecretVolume)
		}
		target := path.Join(dest, e.Name())
		switch {
		case fi.IsDir():
			if err := r.dir(p, target, depth+1); err != nil {
				return err
			}
		case fi.Mode().IsRegular():
			f, err := r.file(p, target, fi)
			if err != nil {
				return err
			}
			r.files = append(r.files, f)
		}
	}
	return nil
}

func (r *volumeReader) file(p, dest string, fi os.FileInfo) (envelope.File, error) {
	if fi.Size() > int64(r.lim.MaxFileBytes) {
		return envelope.File{}, fmt.Errorf("file %q is %d bytes, limit %d: %w", dest, fi.Size(), r.lim.MaxFileBytes, ErrTooLarge)
	}
	f, err := os.Open(p)
	if err != nil {
		return envelope.File{}, fmt.Errorf("%v: %w", err, ErrSecretVolume)
	}
	defer f.Close()
	// Read one byte past the limit: the file may have grown since Stat.
	content, err := io.ReadAll(io.LimitReader(f, int64(r.lim.MaxFileBytes)+1))
	if err != nil {
		return envelope.File{}, fmt.Errorf("file %q: %v: %w", dest, err, ErrSecretVolume)
	}
	if len(content) > r.lim.MaxFileBytes {
		return envelope.File{}, fmt.Errorf("file %q is over the %d-byte limit: %w", dest, r.lim.MaxFileBytes, ErrTooLarge)
	}
	*r.total += len(content)
	if *r.total > r.lim.MaxEnvelopeBytes {
		return envelope.File{}, fmt.Errorf("sealing file %q goes over the envelope limit %d: %w", dest, r.lim.MaxEnvelopeBytes, ErrTooLarge)
	}
	return envelope.File{Path: dest, Mode: uint32(fi.Mode().Perm()), Content: content}, nil
}

// within reports whether p is dir or lies below it (both clean).
func within(dir, p string) bool {
	return p == dir || strings.HasPrefix(p, strings.TrimSuffix(dir, "/")+"/")
}
