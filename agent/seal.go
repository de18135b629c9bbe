package agent

import (
	"context"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/raksh-project/raksh/agent/unseal"
	"github.com/raksh-project/raksh/envelope"
)

// KeySourceFunc returns the source of workload keys for sealed containers
// (normally a KBS client attesting with the guest's TEE). It is called on
// the first sealed container and again after a failure.
type KeySourceFunc func(ctx context.Context) (unseal.KeySource, error)

// WithKeySource sets how the agent obtains the keys of sealed containers.
// Without it, a container carrying an envelope is refused.
func WithKeySource(f KeySourceFunc) Opt {
	return func(s *Service) { s.keys = f }
}

// ErrNoKeySource is returned for a sealed container when the agent has no
// way to obtain its key.
var ErrNoKeySource = fmt.Errorf("sealed container, but this guest has no key broker configured: %w", errdefs.ErrFailedPrecondition)

// ErrExecDenied is returned for an exec into a sealed container whose
// envelope does not allow exec: an exec'd process could read the sealed
// env, args and files and hand them to the node.
var ErrExecDenied = fmt.Errorf("the container's envelope does not allow exec (seal it with --allow-exec): %w", errdefs.ErrPermissionDenied)

// ErrLogsDenied is returned for a sealed container whose envelope does not
// let its output reach the node, when it asks for a terminal.
var ErrLogsDenied = fmt.Errorf("the container's envelope does not allow logs (seal it with --allow-logs): %w", errdefs.ErrPermissionDenied)

// outputStreams returns the stdout and stderr stream names the container's
// process writes to. When its envelope seals a policy without allow_logs,
// none: the process writes to /dev/null and the streams the shim opened
// are closed at once, so the node reads empty output. Without a sealed
// policy, the output goes to the node as for any container.
func (s *Service) outputStreams(ctx context.Context, c *container, terminal bool, stdout, stderr string) (string, string, error) {
	if !c.noLogs {
		return stdout, stderr, nil
	}
	if terminal {
		return "", "", fmt.Errorf("terminal for sealed container %q: %w", c.id, ErrLogsDenied)
	}
	for _, name := range []string{stdout, stderr} {
		if name == "" {
			continue
		}
		conn, err := s.streams.claim(ctx, name, streamTimeout)
		if err != nil {
			return "", "", err
		}
		conn.Close()
	}
	log.G(ctx).WithField("id", c.id).Info("sealed container: output discarded (the envelope does not allow logs)")
	return "", "", nil
}

// checkExec refuses an exec into c unless its envelope allows it.
// Containers without an envelope allow exec.
func checkExec(c *container) error {
	if c.pod.DenyExec {
		return fmt.Errorf("exec into container %q: %w", c.id, ErrPodExecDenied)
	}
	if c.noExec {
		return fmt.Errorf("exec into sealed container %q: %w", c.id, ErrExecDenied)
	}
	return nil
}

// BindingFor returns the binding the agent opens a container's envelope
// for. A container created through the CRI is named by its CRI annotations
// {sandbox namespace, sandbox name, container name}. A container created
// outside the CRI (ctr run, nerdctl) is named by {containerd namespace,
// container id, container id}: seal it as a pod named like the container,
// with one container of that name, in the namespace it runs in.
func BindingFor(spec *specs.Spec, containerdNamespace, id string) (envelope.Binding, error) {
	a := spec.Annotations
	if a[unseal.SandboxNamespaceAnnotation] != "" || a[unseal.SandboxNameAnnotation] != "" || a[unseal.ContainerNameAnnotation] != "" {
		return unseal.BindingFromSpec(spec)
	}
	b := envelope.Binding{Namespace: containerdNamespace, Pod: id, Container: id}
	if err := b.Validate(); err != nil {
		return b, fmt.Errorf("container %q has no CRI annotations and no containerd namespace: %w", id, err)
	}
	return b, nil
}

// unseal opens the container's sealed envelope, if it carries one, merges
// the sealed process fields into its spec and mounts the sealed files (see
// mountSealedFiles; the rootfs is left alone). Errors name fields and
// paths, never values.
func (s *Service) unseal(ctx context.Context, c *container, rootfs string) error {
	data, ok := c.spec.Annotations[envelope.ContainerAnnotation]
	if !ok {
		return nil
	}
	start := time.Now()
	ns, _ := namespaces.Namespace(ctx)
	b, err := BindingFor(c.spec, ns, c.id)
	if err != nil {
		return fmt.Errorf("unseal container %q: %w", c.id, err)
	}
	if s.keys == nil {
		return fmt.Errorf("unseal container %q: %w", c.id, ErrNoKeySource)
	}
	keys, err := s.keys(ctx)
	if err != nil {
		return fmt.Errorf("unseal container %q: key broker: %w", c.id, err)
	}
	sealed, err := unseal.Open(ctx, []byte(data), b, keys)
	if err != nil {
		return fmt.Errorf("unseal container %q (binding %s): %w", c.id, b, err)
	}
	if err := unseal.Merge(c.spec, sealed); err != nil {
		return fmt.Errorf("unseal container %q: %w", c.id, err)
	}
	if err := checkPlaceholders(c.spec.Process); err != nil {
		return fmt.Errorf("unseal container %q (binding %s): %w", c.id, b, err)
	}
	c.sealed = true
	c.noExec = sealed.Exec == nil || !sealed.Exec.AllowExec
	c.noLogs = sealed.Exec != nil && !sealed.Exec.AllowLogs
	c.mountPolicy = sealed.Mounts
	if err := s.mountSealedFiles(c, sealed.Files); err != nil {
		return fmt.Errorf("unseal container %q: secret files: %w", c.id, err)
	}
	log.G(ctx).WithField("id", c.id).WithField("binding", b.String()).
		WithField("files", len(sealed.Files)).WithField("elapsed", time.Since(start)).Info("sealed container opened")
	return nil
}

// sealedFilesDir is where, under a container's bundle in the guest, its
// sealed files are written.
const sealedFilesDir = "sealed"

// mountSealedFiles writes the sealed files under the container's bundle in
// the guest (guest memory, never the host's snapshot) and bind mounts each,
// read-only, at its path in the container. A bind mount, rather than a file
// written into the rootfs, stays visible under the mounts of the spec (ctr
// and nerdctl mount a tmpfs on /run; /run/secrets is a common place for
// secrets), like a Kubernetes secret volume.
func (s *Service) mountSealedFiles(c *container, files []envelope.File) error {
	if len(files) == 0 {
		return nil
	}
	dir := filepath.Join(c.bundle, sealedFilesDir)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	if err := unseal.WriteFiles(dir, files); err != nil {
		return err
	}
	for _, f := range files {
		p := path.Clean("/" + f.Path)
		c.sealedMounts = append(c.sealedMounts, specs.Mount{
			Destination: p, Type: "bind", Source: filepath.Join(dir, filepath.FromSlash(p)),
			Options: []string{"rbind", "ro", "nosuid", "nodev", "noexec"},
		})
	}
	return nil
}

// checkPlaceholders refuses a process that still holds the placeholder in
// its args or env after merging: the node put one where nothing was sealed.
func checkPlaceholders(p *specs.Process) error {
	if p == nil {
		return nil
	}
	if slices.Contains(p.Args, envelope.Placeholder) {
		return fmt.Errorf("args: %w", unseal.ErrPlaceholder)
	}
	for _, e := range p.Env {
		if name, v, _ := strings.Cut(e, "="); v == envelope.Placeholder {
			return fmt.Errorf("env %s: %w", name, unseal.ErrPlaceholder)
		}
	}
	return nil
}
