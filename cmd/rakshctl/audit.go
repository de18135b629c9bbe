package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	containersapi "github.com/containerd/containerd/api/services/containers/v1"
	contentapi "github.com/containerd/containerd/api/services/content/v1"
	imagesapi "github.com/containerd/containerd/api/services/images/v1"
	namespacesapi "github.com/containerd/containerd/api/services/namespaces/v1"
	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/errdefs"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"github.com/urfave/cli/v2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	"github.com/raksh-project/raksh/envelope"
)

// Exit codes of rakshctl audit.
const (
	auditClean    = 0
	auditFindings = 1
	auditError    = 2
)

// auditCannotSee is said plainly in every report.
var auditCannotSee = []string{
	"the memory of containerd, the shims, QEMU and the kubelet (a root process on the node can read it; the audit reads only files and /proc/*/{cmdline,environ})",
	"guest memory (with a hardware TEE it is encrypted; on the simulated TEE the node can read it through QEMU)",
	"the kubelet's and the API server's view: Pod and Secret objects in etcd, the kubelet's memory, secret volumes on tmpfs outside the scanned roots",
	"files outside the scanned roots, swap, and content compressed other than gzip",
}

var auditCommand = &cli.Command{
	Name:  "audit",
	Usage: "on a node (as root): show what the node holds of each raksh container and search the node for secrets",
	Description: `Lists the raksh containers containerd knows (all namespaces), and for each shows
what the node holds (process args, env names, annotations, mounts, bundle, snapshot
kinds, the image's cached blobs and their media types) next to what its envelope
seals. Then searches containerd's root and state, the snapshotter's root, the
runtime's state directory, logs and /proc/*/{cmdline,environ} for the given
markers (--marker, --marker-file) or, without markers or with --patterns, for
well-known secret shapes (PEM private keys, cloud and chat tokens, JWK private
keys). gzip files are searched decompressed too. A hit names the place, file,
offset and which marker or pattern matched, never the value.
Exit status: 0 nothing found, 1 findings, 2 error (some place could not be read).`,
	Flags: []cli.Flag{
		&cli.StringFlag{Name: "address", Value: "/run/containerd/containerd.sock", Usage: "containerd socket (empty: do not list containers)"},
		&cli.StringFlag{Name: "namespace", Usage: "containerd namespace (default: all)"},
		&cli.StringFlag{Name: "runtime", Value: "io.containerd.raksh.v2", Usage: "runtime name of raksh containers"},
		&cli.StringSliceFlag{Name: "marker", Usage: "string that must not appear on the node (repeatable; prefer --marker-file: arguments are visible in /proc)"},
		&cli.StringFlag{Name: "marker-file", Usage: "file of markers, one per line"},
		&cli.BoolFlag{Name: "patterns", Usage: "also search for well-known secret shapes (the default without markers)"},
		&cli.StringFlag{Name: "containerd-root", Value: "/var/lib/containerd", Usage: "containerd's root directory"},
		&cli.StringFlag{Name: "containerd-state", Value: "/run/containerd", Usage: "containerd's state directory"},
		&cli.StringFlag{Name: "snapshotter-root", Value: "/var/lib/raksh-snapshotter", Usage: "raksh-snapshotter's root directory"},
		&cli.StringFlag{Name: "runtime-state", Value: "/run/raksh", Usage: "the shim's state_dir"},
		&cli.StringSliceFlag{Name: "log", Value: cli.NewStringSlice("/var/log/pods", "/var/log/containers", "/var/log/containerd.log", "/var/log/journal"), Usage: "log files or directories (repeatable)"},
		&cli.StringSliceFlag{Name: "path", Usage: "another file or directory to search (repeatable)"},
		&cli.StringFlag{Name: "proc", Value: "/proc", Usage: "procfs to search (empty: skip processes)"},
		outputFlag("text", "text", "json"),
	},
	Action: auditAction,
}

// auditReport is the whole result (-o json).
type auditReport struct {
	Containers []containerView `json:"containers"`
	Findings   []finding       `json:"findings"`
	Scanned    []scannedPlace  `json:"scanned"`
	Searched   []string        `json:"searchedFor"`
	CannotSee  []string        `json:"cannotSee"`
	Errors     []string        `json:"errors,omitempty"`
}

// containerView is what the node holds of one container, next to what its
// envelope seals. Values the node holds in clear are counted, not shown.
type containerView struct {
	Namespace   string      `json:"namespace"`
	ID          string      `json:"id"`
	Runtime     string      `json:"runtime"`
	Image       string      `json:"image"`
	Args        string      `json:"args"`
	Env         []envView   `json:"env"`
	Cwd         string      `json:"cwd,omitempty"`
	Annotations []string    `json:"annotations"`
	Mounts      []string    `json:"mounts"`
	Bundle      string      `json:"bundle"`
	BundleFound bool        `json:"bundleOnDisk"`
	Snapshotter string      `json:"snapshotter"`
	Snapshots   []string    `json:"snapshots"`
	Blobs       []blobView  `json:"blobs"`
	Sealed      *sealedView `json:"sealed,omitempty"`
	Notes       []string    `json:"notes,omitempty"`
}

type envView struct {
	Name   string `json:"name"`
	Holds  string `json:"nodeHolds"` // "placeholder" or "clear"
	Sealed bool   `json:"sealed"`
}

type blobView struct {
	Digest    string `json:"digest"`
	MediaType string `json:"mediaType"`
	Size      int64  `json:"size"`
	Cached    bool   `json:"inContentStore"`
}

type sealedView struct {
	KeyID     string            `json:"kid"`
	Algorithm string            `json:"alg"`
	Binding   string            `json:"binding"`
	Manifest  envelope.Manifest `json:"manifest"`
	Error     string            `json:"error,omitempty"`
}

// exitError carries an exit code through urfave/cli.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string {
	if e.err == nil {
		return ""
	}
	return e.err.Error()
}
func (e *exitError) ExitCode() int { return e.code }
func (e *exitError) Unwrap() error { return e.err }

func auditAction(c *cli.Context) error {
	out, err := checkOutput(c, "text", "json")
	if err != nil {
		return &exitError{auditError, err}
	}
	markers, err := auditMarkers(c)
	if err != nil {
		return &exitError{auditError, err}
	}
	s := &scanner{skipPIDs: map[int]bool{os.Getpid(): true}}
	for _, m := range markers {
		s.markers = append(s.markers, []byte(m))
	}
	searched := []string{fmt.Sprintf("%d marker(s)", len(markers))}
	if len(markers) == 0 || c.Bool("patterns") {
		s.patterns = knownSecretPatterns
		for _, p := range s.patterns {
			searched = append(searched, "pattern "+p.Name)
		}
	}
	rep := auditReport{Containers: []containerView{}, Searched: searched, CannotSee: auditCannotSee}
	if addr := c.String("address"); addr != "" {
		views, err := listRakshContainers(c.Context, addr, c.String("namespace"), c.String("runtime"), c.String("containerd-state"))
		if err != nil {
			s.errorf("containerd %s: %v", addr, err)
		}
		rep.Containers = append(rep.Containers, views...)
	}
	s.scanTree("containerd-root", c.String("containerd-root"))
	s.scanTree("containerd-state", c.String("containerd-state"))
	s.scanTree("snapshotter-root", c.String("snapshotter-root"))
	s.scanTree("runtime-state", c.String("runtime-state"))
	for _, l := range c.StringSlice("log") {
		s.scanTree("log", l)
	}
	for _, p := range c.StringSlice("path") {
		s.scanTree("path", p)
	}
	if p := c.String("proc"); p != "" {
		s.scanProc(p)
	}
	rep.Findings, rep.Scanned, rep.Errors = s.findings, s.scanned, s.errs
	if rep.Findings == nil {
		rep.Findings = []finding{}
	}
	if out == "json" {
		err = printJSON(c.App.Writer, rep)
	} else {
		err = printAudit(c.App.Writer, rep)
	}
	if err != nil {
		return &exitError{auditError, err}
	}
	switch {
	case len(rep.Findings) > 0:
		return &exitError{code: auditFindings}
	case len(rep.Errors) > 0:
		return &exitError{code: auditError}
	}
	return nil
}

func auditMarkers(c *cli.Context) ([]string, error) {
	markers := slices.Clone(c.StringSlice("marker"))
	if p := c.String("marker-file"); p != "" {
		f, err := os.Open(p)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if l := strings.TrimRight(sc.Text(), "\r"); l != "" {
				markers = append(markers, l)
			}
		}
		if err := sc.Err(); err != nil {
			return nil, fmt.Errorf("%s: %w", p, err)
		}
	}
	for i, m := range markers {
		if len(m) < 6 {
			return nil, fmt.Errorf("marker %d is %d bytes; use at least 6 so hits mean something: %w", i+1, len(m), errdefs.ErrInvalidArgument)
		}
	}
	return markers, nil
}

// listRakshContainers asks containerd (its gRPC API) for the containers on
// runtimeName and what the node holds of each.
func listRakshContainers(ctx context.Context, address, namespace, runtimeName, stateDir string) ([]containerView, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if _, err := os.Stat(address); err != nil {
		return nil, err
	}
	conn, err := grpc.NewClient("unix://"+address, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	nss := []string{namespace}
	if namespace == "" {
		resp, err := namespacesapi.NewNamespacesClient(conn).List(ctx, &namespacesapi.ListNamespacesRequest{})
		if err != nil {
			return nil, fmt.Errorf("list namespaces: %w", err)
		}
		nss = nss[:0]
		for _, n := range resp.Namespaces {
			nss = append(nss, n.Name)
		}
	}
	var views []containerView
	for _, ns := range nss {
		nctx := metadata.AppendToOutgoingContext(ctx, "containerd-namespace", ns)
		resp, err := containersapi.NewContainersClient(conn).List(nctx, &containersapi.ListContainersRequest{})
		if err != nil {
			return views, fmt.Errorf("list containers in %s: %w", ns, err)
		}
		for _, ctr := range resp.Containers {
			if ctr.Runtime == nil || ctr.Runtime.Name != runtimeName {
				continue
			}
			v := containerView{Namespace: ns, ID: ctr.ID, Runtime: ctr.Runtime.Name, Image: ctr.Image, Snapshotter: ctr.Snapshotter}
			if ctr.Spec != nil {
				var sp specs.Spec
				if err := json.Unmarshal(ctr.Spec.Value, &sp); err != nil {
					v.Notes = append(v.Notes, "spec does not parse: "+err.Error())
				} else {
					describeSpec(&v, &sp)
				}
			}
			v.Bundle = filepath.Join(stateDir, "io.containerd.runtime.v2.task", ns, ctr.ID)
			if _, err := os.Stat(filepath.Join(v.Bundle, "config.json")); err == nil {
				v.BundleFound = true
			}
			v.Snapshots = snapshotChain(nctx, snapshotsapi.NewSnapshotsClient(conn), ctr.Snapshotter, ctr.SnapshotKey)
			v.Blobs, err = imageBlobs(nctx, conn, ctr.Image)
			if err != nil {
				v.Notes = append(v.Notes, "image blobs: "+err.Error())
			}
			views = append(views, v)
		}
	}
	return views, nil
}

// describeSpec fills v from the OCI spec, never copying a value that is
// not the placeholder.
func describeSpec(v *containerView, sp *specs.Spec) {
	if raw, ok := sp.Annotations[envelope.ContainerAnnotation]; ok {
		e, err := envelope.Parse([]byte(raw))
		sv := &sealedView{}
		if err != nil {
			sv.Error = err.Error()
		} else {
			b := e.Binding()
			sv.KeyID, sv.Algorithm, sv.Manifest = e.KeyID(), e.Algorithm(), e.Manifest()
			sv.Binding = fmt.Sprintf("%s/%s/%s", b.Namespace, b.Pod, b.Container)
		}
		v.Sealed = sv
	}
	var m envelope.Manifest
	if v.Sealed != nil {
		m = v.Sealed.Manifest
	}
	if sp.Process != nil {
		switch {
		case len(sp.Process.Args) == 1 && sp.Process.Args[0] == envelope.Placeholder:
			v.Args = envelope.Placeholder
		case len(sp.Process.Args) == 0:
			v.Args = "-"
		default:
			v.Args = fmt.Sprintf("%d arg(s) in clear (%s ...)", len(sp.Process.Args), filepath.Base(sp.Process.Args[0]))
		}
		for _, e := range sp.Process.Env {
			name, val, _ := strings.Cut(e, "=")
			holds := "clear"
			if val == envelope.Placeholder {
				holds = "placeholder"
			}
			v.Env = append(v.Env, envView{Name: name, Holds: holds, Sealed: slices.Contains(m.Env, name)})
		}
		v.Cwd = sp.Process.Cwd
	}
	for k, val := range sp.Annotations {
		a := k
		if k == envelope.ContainerAnnotation {
			a = fmt.Sprintf("%s (%d bytes of JWE)", k, len(val))
		}
		v.Annotations = append(v.Annotations, a)
	}
	sort.Strings(v.Annotations)
	for _, mt := range sp.Mounts {
		v.Mounts = append(v.Mounts, fmt.Sprintf("%s (%s from %s)", mt.Destination, mt.Type, mt.Source))
	}
}

func snapshotChain(ctx context.Context, sc snapshotsapi.SnapshotsClient, snapshotter, key string) []string {
	var chain []string
	for i := 0; key != "" && i < 128; i++ {
		resp, err := sc.Stat(ctx, &snapshotsapi.StatSnapshotRequest{Snapshotter: snapshotter, Key: key})
		if err != nil {
			chain = append(chain, fmt.Sprintf("%s: %v", short(key), err))
			break
		}
		info := resp.Info
		s := fmt.Sprintf("%s %s", strings.ToLower(info.Kind.String()), short(info.Name))
		var labels []string
		for k := range info.Labels {
			if strings.Contains(k, "raksh") || strings.Contains(k, "remote") {
				labels = append(labels, k)
			}
		}
		sort.Strings(labels)
		if len(labels) > 0 {
			s += " [" + strings.Join(labels, ", ") + "]"
		}
		chain = append(chain, s)
		key = info.Parent
	}
	return chain
}

func short(s string) string {
	if i := strings.LastIndex(s, "sha256:"); i >= 0 && len(s) > i+19 {
		return s[:i+19] + "…"
	}
	return s
}

// imageBlobs lists the image's layers (the manifest for this platform) and
// whether containerd's content store holds each.
func imageBlobs(ctx context.Context, conn *grpc.ClientConn, ref string) ([]blobView, error) {
	if ref == "" {
		return nil, nil
	}
	img, err := imagesapi.NewImagesClient(conn).Get(ctx, &imagesapi.GetImageRequest{Name: ref})
	if err != nil {
		return nil, err
	}
	cc := contentapi.NewContentClient(conn)
	read := func(dgst string) ([]byte, error) {
		st, err := cc.Read(ctx, &contentapi.ReadContentRequest{Digest: dgst})
		if err != nil {
			return nil, err
		}
		var b []byte
		for {
			resp, err := st.Recv()
			if errors.Is(err, io.EOF) {
				return b, nil
			}
			if err != nil {
				return nil, err
			}
			b = append(b, resp.Data...)
			if len(b) > 4<<20 {
				return nil, fmt.Errorf("manifest %s over 4 MiB", dgst)
			}
		}
	}
	target := img.Image.Target
	dgst, mt := target.Digest, target.MediaType
	for range 3 {
		if !strings.Contains(mt, "index") && !strings.Contains(mt, "manifest.list") {
			break
		}
		b, err := read(dgst)
		if err != nil {
			return nil, fmt.Errorf("index %s: %w", dgst, err)
		}
		var idx ocispec.Index
		if err := json.Unmarshal(b, &idx); err != nil {
			return nil, err
		}
		found := false
		for _, d := range idx.Manifests {
			if d.Platform == nil || (d.Platform.OS == runtime.GOOS && d.Platform.Architecture == runtime.GOARCH) {
				dgst, mt, found = d.Digest.String(), d.MediaType, true
				break
			}
		}
		if !found {
			return nil, fmt.Errorf("index %s has no %s/%s manifest", dgst, runtime.GOOS, runtime.GOARCH)
		}
	}
	b, err := read(dgst)
	if err != nil {
		return nil, fmt.Errorf("manifest %s: %w", dgst, err)
	}
	var m ocispec.Manifest
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, err
	}
	var out []blobView
	for _, l := range m.Layers {
		_, err := cc.Info(ctx, &contentapi.InfoRequest{Digest: l.Digest.String()})
		out = append(out, blobView{Digest: l.Digest.String(), MediaType: l.MediaType, Size: l.Size, Cached: err == nil})
	}
	return out, nil
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "-"
}

// longID matches the 64-hex ids in paths, shortened in text output.
var longID = regexp.MustCompile(`\b([0-9a-f]{12})[0-9a-f]{52}\b`)

// shortIDs is w with 64-hex ids cut to 12 characters.
type shortIDs struct{ w io.Writer }

func (s shortIDs) Write(p []byte) (int, error) {
	if _, err := s.w.Write(longID.ReplaceAll(p, []byte("${1}…"))); err != nil {
		return 0, err
	}
	return len(p), nil
}

func printAudit(out io.Writer, rep auditReport) error {
	w := shortIDs{out}
	table := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	tw := shortIDs{table}
	if len(rep.Containers) == 0 {
		fmt.Fprintln(tw, "no raksh containers found")
	}
	for _, v := range rep.Containers {
		fmt.Fprintf(tw, "== container %s/%s (%s)\n", v.Namespace, v.ID, v.Runtime)
		fmt.Fprintf(tw, "FIELD\tNODE HOLDS\tSEALED\n")
		var m envelope.Manifest
		if v.Sealed != nil {
			m = v.Sealed.Manifest
		}
		fmt.Fprintf(tw, "image\t%s\t%s\n", v.Image, yesNo(m.Image))
		fmt.Fprintf(tw, "args\t%s\t%s\n", v.Args, yesNo(m.Args))
		fmt.Fprintf(tw, "cwd\t%s\t%s\n", orDash(v.Cwd), yesNo(m.Cwd))
		for _, e := range v.Env {
			fmt.Fprintf(tw, "env %s\t%s\t%s\n", e.Name, e.Holds, yesNo(e.Sealed))
		}
		for _, f := range m.Files {
			fmt.Fprintf(tw, "file %s\t-\tyes\n", f)
		}
		for _, a := range v.Annotations {
			fmt.Fprintf(tw, "annotation\t%s\t\n", a)
		}
		for _, mt := range v.Mounts {
			fmt.Fprintf(tw, "mount\t%s\t\n", mt)
		}
		fmt.Fprintf(tw, "bundle\t%s (on disk: %s)\t\n", v.Bundle, yesNo(v.BundleFound))
		for _, s := range v.Snapshots {
			fmt.Fprintf(tw, "snapshot (%s)\t%s\t\n", v.Snapshotter, s)
		}
		for _, b := range v.Blobs {
			fmt.Fprintf(tw, "blob %s\t%s, %d bytes, in content store: %s\t\n", short(b.Digest), b.MediaType, b.Size, yesNo(b.Cached))
		}
		if v.Sealed != nil {
			if v.Sealed.Error != "" {
				fmt.Fprintf(tw, "envelope\t\tunparsable: %s\n", v.Sealed.Error)
			} else {
				fmt.Fprintf(tw, "envelope\tkid %s, %s\tbound to %s\n", v.Sealed.KeyID, v.Sealed.Algorithm, v.Sealed.Binding)
			}
		} else {
			fmt.Fprintf(tw, "envelope\tnone\t-\n")
		}
		for _, n := range v.Notes {
			fmt.Fprintf(tw, "note\t%s\t\n", n)
		}
		fmt.Fprintln(tw)
	}
	if err := table.Flush(); err != nil {
		return err
	}
	fmt.Fprintf(w, "searched for: %s\n", strings.Join(rep.Searched, ", "))
	for _, s := range rep.Scanned {
		if s.Absent {
			fmt.Fprintf(w, "  %-17s %s (absent)\n", s.Place, s.Path)
		} else {
			fmt.Fprintf(w, "  %-17s %s: %d files, %d bytes", s.Place, s.Path, s.Files, s.Bytes)
			if s.Unreadable > 0 {
				fmt.Fprintf(w, "; %d unreadable (permission denied even to this user: NOT searched)", s.Unreadable)
			}
			fmt.Fprintln(w)
		}
	}
	for _, e := range rep.Errors {
		fmt.Fprintf(w, "ERROR %s\n", e)
	}
	if len(rep.Findings) == 0 {
		fmt.Fprintln(w, "FOUND nothing")
	}
	for _, f := range rep.Findings {
		z := ""
		if f.Gunzipped {
			z = " (in the gunzipped content)"
		}
		fmt.Fprintf(w, "FOUND %s in %s %s at offset %d%s\n", f.What, f.Place, f.Path, f.Offset, z)
	}
	fmt.Fprintln(w, "cannot see:")
	for _, s := range rep.CannotSee {
		fmt.Fprintf(w, "  - %s\n", s)
	}
	return nil
}
