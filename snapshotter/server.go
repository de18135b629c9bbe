//go:build linux

package snapshotter

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"time"

	diffapi "github.com/containerd/containerd/api/services/diff/v1"
	imagesapi "github.com/containerd/containerd/api/services/images/v1"
	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/v2/contrib/snapshotservice"
	"github.com/containerd/containerd/v2/core/content"
	contentproxy "github.com/containerd/containerd/v2/core/content/proxy"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/oci"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/containerd/log"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// Listen opens the unix socket at address, removing a stale socket file left
// by a previous instance. A socket that still accepts connections is an
// error: another instance is running.
func Listen(address string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(address), 0o711); err != nil {
		return nil, err
	}
	if fi, err := os.Lstat(address); err == nil {
		if fi.Mode()&fs.ModeSocket == 0 {
			return nil, fmt.Errorf("%s exists and is not a socket: %w", address, errdefs.ErrAlreadyExists)
		}
		if c, err := net.DialTimeout("unix", address, time.Second); err == nil {
			c.Close()
			return nil, fmt.Errorf("%s is in use by another process: %w", address, errdefs.ErrAlreadyExists)
		}
		if err := os.Remove(address); err != nil {
			return nil, fmt.Errorf("failed to remove stale socket %s: %w", address, err)
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	l, err := net.Listen("unix", address)
	if err != nil {
		return nil, err
	}
	if err := os.Chmod(address, 0o600); err != nil {
		l.Close()
		return nil, err
	}
	return l, nil
}

// NewGRPCServer returns a gRPC server exposing sn as containerd's snapshots
// service and its Differ as containerd's diff service.
func NewGRPCServer(sn *Snapshotter) *grpc.Server {
	srv := grpc.NewServer()
	snapshotsapi.RegisterSnapshotsServer(srv, snapshotservice.FromSnapshotter(sn))
	diffapi.RegisterDiffServer(srv, &diffService{d: sn.Differ()})
	return srv
}

// ContainerdContent returns a content provider reading containerd's content
// store over its gRPC socket, in the namespace of the incoming request.
func ContainerdContent(address string) (content.Provider, func() error, error) {
	conn, err := grpc.NewClient("unix://"+address, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, nil, err
	}
	return nsProvider{p: contentproxy.NewContentStore(conn)}, conn.Close, nil
}

// ContainerdImages returns an ImageLister reading containerd's images over
// its gRPC socket, in the namespace of the incoming request.
func ContainerdImages(address string) (ImageLister, func() error, error) {
	conn, err := grpc.NewClient("unix://"+address, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, nil, err
	}
	return nsImages{c: imagesapi.NewImagesClient(conn)}, conn.Close, nil
}

type nsImages struct{ c imagesapi.ImagesClient }

func (n nsImages) List(ctx context.Context, filters ...string) ([]images.Image, error) {
	ctx, err := nsContext(ctx)
	if err != nil {
		return nil, err
	}
	resp, err := n.c.List(ctx, &imagesapi.ListImagesRequest{Filters: filters})
	if err != nil {
		return nil, errgrpc.ToNative(err)
	}
	out := make([]images.Image, 0, len(resp.Images))
	for _, im := range resp.Images {
		out = append(out, images.Image{Name: im.Name, Target: oci.DescriptorFromProto(im.Target)})
	}
	return out, nil
}

type nsProvider struct{ p content.Store }

func nsContext(ctx context.Context) (context.Context, error) {
	ns, err := namespaces.NamespaceRequired(ctx)
	if err != nil {
		return nil, err
	}
	// Forward the caller's namespace as an outgoing header.
	return namespaces.WithNamespace(ctx, ns), nil
}

// Walk implements the content.Manager subset the differ uses.
func (n nsProvider) Walk(ctx context.Context, fn content.WalkFunc, filters ...string) error {
	ctx, err := nsContext(ctx)
	if err != nil {
		return err
	}
	return n.p.Walk(ctx, fn, filters...)
}

func (n nsProvider) Info(ctx context.Context, d digest.Digest) (content.Info, error) {
	ctx, err := nsContext(ctx)
	if err != nil {
		return content.Info{}, err
	}
	return n.p.Info(ctx, d)
}

func (n nsProvider) Update(ctx context.Context, info content.Info, fieldpaths ...string) (content.Info, error) {
	return content.Info{}, fmt.Errorf("read-only: %w", errdefs.ErrNotImplemented)
}

func (n nsProvider) Delete(ctx context.Context, d digest.Digest) error {
	return fmt.Errorf("read-only: %w", errdefs.ErrNotImplemented)
}

func (n nsProvider) ReaderAt(ctx context.Context, desc ocispec.Descriptor) (content.ReaderAt, error) {
	ctx, err := nsContext(ctx)
	if err != nil {
		return nil, err
	}
	return n.p.ReaderAt(ctx, desc)
}

type diffService struct {
	diffapi.UnimplementedDiffServer
	d *Differ
}

func (s *diffService) Apply(ctx context.Context, req *diffapi.ApplyRequest) (*diffapi.ApplyResponse, error) {
	// req.Payloads may carry decryption keys meant for imgcrypt's stream
	// processor: they are never used, logged or stored here.
	desc, err := s.d.Apply(ctx, oci.DescriptorFromProto(req.Diff), mount.FromProto(req.Mounts))
	if err != nil {
		if !errdefs.IsNotImplemented(err) {
			log.G(ctx).WithError(err).WithField("layer", req.GetDiff().GetDigest()).Warn("apply failed")
		}
		return nil, errgrpc.ToGRPC(err)
	}
	return &diffapi.ApplyResponse{Applied: oci.DescriptorToProto(desc)}, nil
}

// Serve runs the snapshotter described by cfg until ctx is cancelled, then
// stops gracefully (in-flight calls finish, at most 10s) and closes the
// metadata store.
func Serve(ctx context.Context, cfg Config) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	opts := cfg.Opts()
	if cfg.ContainerdAddress != "" {
		p, closeFn, err := ContainerdContent(cfg.ContainerdAddress)
		if err != nil {
			return err
		}
		defer closeFn()
		opts = append(opts, WithContentProvider(p))
		il, closeImages, err := ContainerdImages(cfg.ContainerdAddress)
		if err != nil {
			return err
		}
		defer closeImages()
		opts = append(opts, WithImageLister(il))
	}
	sn, err := New(cfg.Root, opts...)
	if err != nil {
		return err
	}
	defer sn.Close()

	l, err := Listen(cfg.Address)
	if err != nil {
		return err
	}
	srv := NewGRPCServer(sn)
	errC := make(chan error, 1)
	go func() { errC <- srv.Serve(l) }()
	log.G(ctx).WithField("address", cfg.Address).WithField("root", cfg.Root).Info("raksh-snapshotter serving")

	select {
	case err := <-errC:
		return err
	case <-ctx.Done():
	}
	log.G(ctx).Info("shutting down")
	done := make(chan struct{})
	go func() { srv.GracefulStop(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		srv.Stop()
	}
	os.Remove(cfg.Address)
	return nil
}
