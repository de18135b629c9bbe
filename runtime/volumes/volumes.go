// Package volumes is the shim's half of volume delivery (docs/volumes.md):
// it classifies a container spec's bind mounts, copies the content of
// kubelet's ConfigMap, Secret, projected and downward-API volumes and of
// CRI's per-pod files into the guest through the agent's Volumes service,
// polls them for kubelet's atomic ..data swaps and token rotations and
// sends the updates, and asks the agent for a guest tmpfs for each
// emptyDir. Those are never shared with the guest: the guest gets copies,
// bounded by Config. Only when the runtime config sets shared_fs =
// "virtio-fs" are the other bind mounts (hostPath, persistent volumes,
// image volumes) shared live through the pod's virtio-fs share (Share).
package volumes

import (
	"context"
	"crypto/sha256"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	agentapi "github.com/raksh-project/raksh/api/agent/v1"
)

// Config bounds what the shim copies into the guest ([volumes] of the
// runtime config).
type Config struct {
	// MaxBytes bounds the content of one copied volume.
	MaxBytes int64 `toml:"max_bytes"`
	// MaxFiles bounds the entries (files, directories, symlinks) of one
	// copied volume.
	MaxFiles int `toml:"max_files"`
	// PollInterval is how often copied volumes are checked for updates.
	PollInterval time.Duration `toml:"poll_interval"`
}

// DefaultConfig is used for unset fields.
func DefaultConfig() Config {
	return Config{MaxBytes: 16 << 20, MaxFiles: 1024, PollInterval: time.Second}
}

// Kind is how a mount reaches the guest.
type Kind int

const (
	// Tree is a kubelet volume directory, copied.
	Tree Kind = iota
	// File is one of CRI's per-pod files, copied.
	File
	// EmptyDir is a guest tmpfs shared by the pod's containers.
	EmptyDir
	// Shared is a node path shared with virtio-fs (shared_fs).
	Shared
)

// Volume is a mount of the spec the shim delivers.
type Volume struct {
	Kind        Kind
	Source      string
	Destination string
	// Plugin is the kubelet volume plugin ("configmap", ...) or, for
	// files, "cri".
	Plugin string
	// Name and SizeBytes of an emptyDir (SizeBytes from the node's tmpfs
	// for medium: Memory; 0 for a disk-backed one).
	Name      string
	SizeBytes int64
	// Options are a shared mount's bind options (ro, rro, rbind,
	// propagation).
	Options []string
}

// copied are the kubelet volume plugins whose content is copied.
var copied = []string{"configmap", "secret", "projected", "downward-api"}

// criFiles are the per-pod files CRI and kubelet bind into containers.
var criFiles = []string{"/etc/hosts", "/etc/hostname", "/etc/resolv.conf", "/dev/termination-log"}

func isBind(m specs.Mount) bool {
	return m.Type == "bind" || slices.Contains(m.Options, "bind") || slices.Contains(m.Options, "rbind")
}

// Classify returns the bind mounts of spec the shim delivers into the
// guest. With share (shared_fs = "virtio-fs"), every other bind mount but
// /dev/shm is Shared; without, it is left to the agent, which refuses it
// naming it (hostPath, PVs, subPath mounts, nerdctl -v).
func Classify(spec *specs.Spec, share bool) []Volume {
	var vols []Volume
	for _, m := range spec.Mounts {
		if !isBind(m) {
			continue
		}
		if plugin, name, ok := kubeletVolume(m.Source); ok {
			switch {
			case slices.Contains(copied, plugin):
				vols = append(vols, Volume{Kind: Tree, Source: m.Source, Destination: path.Clean(m.Destination), Plugin: plugin})
				continue
			case plugin == "empty-dir":
				vols = append(vols, Volume{Kind: EmptyDir, Source: m.Source, Destination: path.Clean(m.Destination), Plugin: plugin,
					Name: name, SizeBytes: tmpfsSize(m.Source)})
				continue
			}
			// Persistent volumes (csi, local, ...): shared or refused.
		}
		if slices.Contains(criFiles, path.Clean(m.Destination)) {
			if st, err := os.Stat(m.Source); err == nil && st.Mode().IsRegular() {
				vols = append(vols, Volume{Kind: File, Source: m.Source, Destination: path.Clean(m.Destination), Plugin: "cri"})
				continue
			}
		}
		if share && sharedCandidate(m) {
			vols = append(vols, Volume{Kind: Shared, Source: m.Source, Destination: path.Clean(m.Destination), Plugin: "shared",
				Options: slices.Clone(m.Options)})
		}
	}
	return vols
}

// kubeletVolume parses ".../volumes/kubernetes.io~<plugin>/<name>".
func kubeletVolume(source string) (plugin, name string, ok bool) {
	dir, base := path.Split(path.Clean(source))
	parent := path.Base(dir)
	if !strings.HasPrefix(parent, "kubernetes.io~") || path.Base(path.Dir(path.Clean(dir))) != "volumes" {
		return "", "", false
	}
	return strings.TrimPrefix(parent, "kubernetes.io~"), base, true
}

// tmpfsSize returns the size of the tmpfs kubelet mounted for a
// medium: Memory emptyDir (its sizeLimit), 0 for a disk-backed one.
func tmpfsSize(dir string) int64 {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil || st.Type != unix.TMPFS_MAGIC {
		return 0
	}
	return int64(st.Blocks) * st.Bsize
}

// read returns the guest request for v's current content, refusing above
// the limits.
func read(v Volume, cfg Config) ([]*agentapi.VolumeEntry, error) {
	switch v.Kind {
	case File:
		st, err := os.Lstat(v.Source)
		if err != nil {
			return nil, err
		}
		if !st.Mode().IsRegular() {
			return nil, fmt.Errorf("%s is not a regular file: %w", v.Source, errdefs.ErrInvalidArgument)
		}
		if st.Size() > cfg.MaxBytes {
			return nil, limitErr(v, fmt.Sprintf("%d bytes", st.Size()), fmt.Sprintf("max_bytes = %d", cfg.MaxBytes))
		}
		b, err := os.ReadFile(v.Source)
		if err != nil {
			return nil, err
		}
		return []*agentapi.VolumeEntry{entry("", st, b, "")}, nil
	case Tree:
	default:
		return nil, nil
	}
	var (
		entries []*agentapi.VolumeEntry
		total   int64
	)
	err := filepath.WalkDir(v.Source, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p == v.Source {
			return nil
		}
		rel, err := filepath.Rel(v.Source, p)
		if err != nil {
			return err
		}
		rel = filepath.ToSlash(rel)
		if len(entries) >= cfg.MaxFiles {
			return limitErr(v, fmt.Sprintf("more than %d files", cfg.MaxFiles), fmt.Sprintf("max_files = %d", cfg.MaxFiles))
		}
		st, err := os.Lstat(p)
		if err != nil {
			return err
		}
		switch {
		case st.IsDir():
			entries = append(entries, entry(rel, st, nil, ""))
		case st.Mode()&fs.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			entries = append(entries, entry(rel, st, nil, target))
		case st.Mode().IsRegular():
			total += st.Size()
			if total > cfg.MaxBytes {
				return limitErr(v, fmt.Sprintf("more than %d bytes", cfg.MaxBytes), fmt.Sprintf("max_bytes = %d", cfg.MaxBytes))
			}
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			entries = append(entries, entry(rel, st, b, ""))
		default:
			return fmt.Errorf("%s: %s is neither a file, a directory nor a symlink: %w", v.Source, rel, errdefs.ErrInvalidArgument)
		}
		return nil
	})
	return entries, err
}

func limitErr(v Volume, what, limit string) error {
	return fmt.Errorf("%s volume %s mounted at %s holds %s, more than the runtime config allows ([volumes] %s): %w",
		v.Plugin, v.Source, v.Destination, what, limit, errdefs.ErrInvalidArgument)
}

func entry(rel string, st fs.FileInfo, data []byte, target string) *agentapi.VolumeEntry {
	e := &agentapi.VolumeEntry{Path: rel, Mode: uint32(st.Mode().Perm()), Data: data, Target: target}
	if st.Mode()&fs.ModeSticky != 0 {
		e.Mode |= 0o1000
	}
	if sys, ok := st.Sys().(*unix.Stat_t); ok {
		e.Uid, e.Gid = sys.Uid, sys.Gid
	}
	switch {
	case st.IsDir():
		e.Type = agentapi.EntryType_ENTRY_TYPE_DIR
	case st.Mode()&fs.ModeSymlink != 0:
		e.Type = agentapi.EntryType_ENTRY_TYPE_SYMLINK
	default:
		e.Type = agentapi.EntryType_ENTRY_TYPE_REGULAR
	}
	return e
}

// fingerprint summarises v's current state cheaply (names, types, sizes,
// times, link targets): a change means an update to send.
func fingerprint(v Volume) [32]byte {
	h := sha256.New()
	filepath.WalkDir(v.Source, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			fmt.Fprintf(h, "err %s\n", p)
			return nil
		}
		st, err := os.Lstat(p)
		if err != nil {
			return nil
		}
		target, _ := os.Readlink(p)
		fmt.Fprintf(h, "%s %o %d %d %s\n", p, st.Mode(), st.Size(), st.ModTime().UnixNano(), target)
		return nil
	})
	var sum [32]byte
	copy(sum[:], h.Sum(nil))
	return sum
}

// Syncer delivers and keeps updated the volumes of a shim's containers.
type Syncer struct {
	client agentapi.VolumesService
	cfg    Config
	share  *Share

	mu      sync.Mutex
	watches map[string]*watch
	// termLogs are the containers' termination-log file volumes, copied
	// back to the node at exit.
	termLogs map[string]Volume
}

// TerminationLog is where kubelet binds a container's termination
// message file (its default terminationMessagePath).
const TerminationLog = "/dev/termination-log"

// MaxTerminationMessage is what is copied back of a termination message:
// kubelet reads at most 4096 bytes of it.
const MaxTerminationMessage = 4096

// NewSyncer returns a Syncer putting volumes through client.
func NewSyncer(client agentapi.VolumesService, cfg Config) *Syncer {
	def := DefaultConfig()
	if cfg.MaxBytes <= 0 {
		cfg.MaxBytes = def.MaxBytes
	}
	if cfg.MaxFiles <= 0 {
		cfg.MaxFiles = def.MaxFiles
	}
	if cfg.PollInterval <= 0 {
		cfg.PollInterval = def.PollInterval
	}
	return &Syncer{client: client, cfg: cfg, watches: map[string]*watch{}, termLogs: map[string]Volume{}}
}

// WithShare has s share Shared volumes through share.
func (s *Syncer) WithShare(share *Share) *Syncer {
	s.share = share
	return s
}

func (s *Syncer) put(ctx context.Context, id, pod string, v Volume) error {
	req := &agentapi.PutVolumeRequest{ContainerId: id, Destination: v.Destination}
	switch v.Kind {
	case Tree:
		req.Kind = agentapi.VolumeKind_VOLUME_KIND_TREE
	case File:
		req.Kind = agentapi.VolumeKind_VOLUME_KIND_FILE
	case EmptyDir:
		req.Kind = agentapi.VolumeKind_VOLUME_KIND_EMPTY_DIR
		req.PodId, req.Name, req.SizeBytes = pod, v.Name, v.SizeBytes
	case Shared:
		if s.share == nil {
			return fmt.Errorf("bind mount of %q at %q: no virtio-fs share (shared_fs): %w", v.Source, v.Destination, errdefs.ErrInvalidArgument)
		}
		req.Kind = agentapi.VolumeKind_VOLUME_KIND_SHARED
		req.Name = ShareID(id, v.Destination)
		if err := s.share.Bind(id, req.Name, v); err != nil {
			return err
		}
		if _, err := s.client.Put(ctx, req); err != nil {
			return fmt.Errorf("share bind mount of %q at %q with the guest: %w", v.Source, v.Destination, err)
		}
		return nil
	}
	entries, err := read(v, s.cfg)
	if err != nil {
		return err
	}
	req.Entries = entries
	if _, err := s.client.Put(ctx, req); err != nil {
		return fmt.Errorf("deliver %s volume %s at %s into the guest: %w", v.Plugin, v.Source, v.Destination, err)
	}
	return nil
}

// Deliver copies container id's volumes into the guest (pod is its CRI
// sandbox, or id) and starts polling the copied ones for updates until
// Stop. It fails, naming the volume, on any volume it cannot deliver.
func (s *Syncer) Deliver(ctx context.Context, id, pod string, vols []Volume) (retErr error) {
	defer func() {
		if retErr != nil && s.share != nil {
			s.share.Unbind(id)
		}
	}()
	var (
		watched []Volume
		prints  [][32]byte
	)
	for _, v := range vols {
		// Fingerprinted before it is read: a change racing the read is
		// sent at the first poll.
		fp := fingerprint(v)
		if err := s.put(ctx, id, pod, v); err != nil {
			return err
		}
		if v.Kind == File && v.Destination == TerminationLog {
			s.mu.Lock()
			s.termLogs[id] = v
			s.mu.Unlock()
		}
		if v.Kind == Tree || v.Kind == File {
			watched = append(watched, v)
			prints = append(prints, fp)
		}
	}
	if len(watched) == 0 {
		return nil
	}
	wctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	w := &watch{cancel: cancel, done: make(chan struct{})}
	s.mu.Lock()
	old := s.watches[id]
	s.watches[id] = w
	s.mu.Unlock()
	old.stop()
	go func() {
		defer close(w.done)
		s.poll(wctx, id, pod, watched, prints)
	}()
	return nil
}

// watch is the polling goroutine of one container's volumes.
type watch struct {
	cancel context.CancelFunc
	done   chan struct{}
}

// stop cancels the polling and waits for it to end, so that no update is
// delivered once stop returns. A nil watch is a no-op.
func (w *watch) stop() {
	if w == nil {
		return
	}
	w.cancel()
	<-w.done
}

func (s *Syncer) poll(ctx context.Context, id, pod string, vols []Volume, prints [][32]byte) {
	t := time.NewTicker(s.cfg.PollInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		for i, v := range vols {
			fp := fingerprint(v)
			if fp == prints[i] {
				continue
			}
			if err := s.put(ctx, id, pod, v); err != nil {
				if ctx.Err() != nil {
					return
				}
				// Kept as it was; retried at the next change.
				log.G(ctx).WithError(err).WithField("id", id).WithField("destination", v.Destination).Warn("volume update not delivered")
			} else {
				log.G(ctx).WithField("id", id).WithField("destination", v.Destination).Debug("volume update delivered")
			}
			prints[i] = fp
		}
	}
}

// CopyBack writes container id's termination message (what it wrote to
// /dev/termination-log in the guest, at most MaxTerminationMessage bytes)
// to the node file kubelet bound there, for kubelet to read once the
// container has exited. A container without one is not an error. The
// node file is written in place, never created, and not through a symlink.
func (s *Syncer) CopyBack(ctx context.Context, id string) error {
	s.mu.Lock()
	v, ok := s.termLogs[id]
	w := s.watches[id]
	s.mu.Unlock()
	if !ok {
		return nil
	}
	// The copy back must not be sent into the guest again.
	w.stop()
	r, err := s.client.Get(ctx, &agentapi.GetVolumeRequest{ContainerId: id, Destination: v.Destination, MaxBytes: MaxTerminationMessage})
	if err != nil {
		return fmt.Errorf("read the termination message of %s in the guest: %w", id, err)
	}
	f, err := os.OpenFile(v.Source, os.O_WRONLY|os.O_TRUNC|unix.O_NOFOLLOW, 0)
	if err != nil {
		return fmt.Errorf("termination message file %s: %w", v.Source, err)
	}
	if _, err := f.Write(r.GetData()); err != nil {
		f.Close()
		return err
	}
	if r.GetTruncated() {
		log.G(ctx).WithField("id", id).Warnf("termination message truncated to %d bytes", MaxTerminationMessage)
	}
	return f.Close()
}

// Stop ends the polling of container id's volumes (waiting for an update in
// flight, so none is delivered after it returns) and removes its
// shared mounts from the pod's virtio-fs share.
func (s *Syncer) Stop(id string) error {
	s.mu.Lock()
	w := s.watches[id]
	delete(s.watches, id)
	delete(s.termLogs, id)
	s.mu.Unlock()
	w.stop()
	if s.share != nil {
		return s.share.Unbind(id)
	}
	return nil
}
