// Package kube seals the containers of Kubernetes workload manifests (Pod,
// Deployment, ReplicaSet, StatefulSet, DaemonSet, Job, CronJob): each container's and
// init container's args, literal env values, working directory, chosen
// secret files and (optionally) image move into an envelope carried in a pod
// annotation (envelope.PodAnnotationPrefix + container name), the visible
// fields become placeholders, and runtimeClassName is set. Multi-document
// YAML in, same documents in the same order out; documents of other kinds
// pass through byte for byte, unless they hold containers (a List, a
// ReplicationController, a custom workload), which is an error rather than
// a silently unsealed workload.
package kube

import (
	"bytes"
	"crypto"
	"fmt"
	"strings"
	"unicode/utf8"

	"github.com/containerd/errdefs"
	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"github.com/raksh-project/raksh/envelope"
)

// Limits.
const (
	// MaxInput bounds the YAML read.
	MaxInput = 8 << 20
	// MaxAnnotations is Kubernetes' limit on the total size of an object's
	// annotations.
	MaxAnnotations = 256 << 10
	// DefaultRuntimeClass is the runtimeClassName set on sealed pods.
	DefaultRuntimeClass = "raksh"
)

// SealOptions say how to seal.
type SealOptions struct {
	// Recipient is the workload public key and its KBS key id.
	Recipient envelope.Recipient
	// Namespace is used for objects without metadata.namespace (default
	// "default").
	Namespace string
	// RuntimeClass is set as runtimeClassName (default "raksh").
	RuntimeClass string
	// Files are secret files to seal, by container name.
	Files map[string][]envelope.File
	// SealImage moves the image reference into the envelope, leaving
	// PlaceholderImage visible.
	SealImage        bool
	PlaceholderImage string
	// Exec, when set, is sealed as every container's exec/log policy.
	Exec *envelope.ExecPolicy
	// Mounts are mount policies to seal, by container name.
	Mounts map[string]*envelope.MountPolicy
}

// Document is one YAML document of a stream.
type Document struct {
	// Raw is the document text.
	Raw []byte
}

// SplitDocuments splits a YAML stream on "---" separator lines. Empty
// documents are kept so the output has the same shape.
func SplitDocuments(in []byte) [][]byte {
	var docs [][]byte
	var cur []byte
	lines := bytes.SplitAfter(in, []byte("\n"))
	for _, l := range lines {
		t := bytes.TrimRight(l, " \t\r\n")
		if bytes.Equal(t, []byte("---")) || bytes.HasPrefix(t, []byte("--- ")) {
			docs = append(docs, cur)
			cur = nil
			continue
		}
		cur = append(cur, l...)
	}
	docs = append(docs, cur)
	// A leading separator yields an empty first document: drop it.
	if len(docs) > 1 && len(bytes.TrimSpace(docs[0])) == 0 {
		docs = docs[1:]
	}
	return docs
}

// JoinDocuments is the inverse of SplitDocuments.
func JoinDocuments(docs [][]byte) []byte {
	var out bytes.Buffer
	// SplitDocuments drops an empty document before a leading separator;
	// write one so an empty first document survives the round trip.
	if len(docs) > 1 && len(bytes.TrimSpace(docs[0])) == 0 {
		out.WriteString("---\n")
	}
	for i, d := range docs {
		if i > 0 {
			out.WriteString("---\n")
		}
		out.Write(d)
		if len(d) > 0 && d[len(d)-1] != '\n' {
			out.WriteByte('\n')
		}
	}
	return out.Bytes()
}

type typeMeta struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
}

// workload is a decoded object with access to its pod template.
type workload struct {
	obj       any
	kind      string
	name      string
	namespace string
	meta      *metav1.ObjectMeta // the pod (template) metadata
	spec      *corev1.PodSpec
	podName   string // exact pod name or pattern
}

// decode returns the workload of a document, or nil for other kinds.
func decode(doc []byte) (*workload, error) {
	if len(bytes.TrimSpace(doc)) == 0 {
		return nil, nil
	}
	// Manifests are UTF-8. The YAML decoder also takes UTF-16 after a
	// byte-order mark, where a document can decode alone and fail once
	// JoinDocuments ends it with a newline (found by FuzzSeal).
	if !utf8.Valid(doc) {
		return nil, fmt.Errorf("document is not UTF-8: %w", errdefs.ErrInvalidArgument)
	}
	var tm typeMeta
	if err := yaml.Unmarshal(doc, &tm); err != nil {
		return nil, fmt.Errorf("document is not YAML: %w", errdefs.ErrInvalidArgument)
	}
	w := &workload{kind: tm.Kind}
	var om *metav1.ObjectMeta
	switch tm.Kind {
	case "Pod":
		var o corev1.Pod
		if err := yaml.UnmarshalStrict(doc, &o); err != nil {
			return nil, decodeErr(tm.Kind, err)
		}
		w.obj, om, w.meta, w.spec = &o, &o.ObjectMeta, &o.ObjectMeta, &o.Spec
		switch {
		case o.Name != "":
			w.podName = o.Name
		case o.GenerateName != "":
			w.podName = o.GenerateName + "*"
		}
	case "Deployment":
		var o appsv1.Deployment
		if err := yaml.UnmarshalStrict(doc, &o); err != nil {
			return nil, decodeErr(tm.Kind, err)
		}
		w.obj, om, w.meta, w.spec = &o, &o.ObjectMeta, &o.Spec.Template.ObjectMeta, &o.Spec.Template.Spec
		w.podName = o.Name + "-*-*"
	case "StatefulSet":
		var o appsv1.StatefulSet
		if err := yaml.UnmarshalStrict(doc, &o); err != nil {
			return nil, decodeErr(tm.Kind, err)
		}
		w.obj, om, w.meta, w.spec = &o, &o.ObjectMeta, &o.Spec.Template.ObjectMeta, &o.Spec.Template.Spec
		w.podName = o.Name + "-*"
	case "DaemonSet":
		var o appsv1.DaemonSet
		if err := yaml.UnmarshalStrict(doc, &o); err != nil {
			return nil, decodeErr(tm.Kind, err)
		}
		w.obj, om, w.meta, w.spec = &o, &o.ObjectMeta, &o.Spec.Template.ObjectMeta, &o.Spec.Template.Spec
		w.podName = o.Name + "-*"
	case "Job":
		var o batchv1.Job
		if err := yaml.UnmarshalStrict(doc, &o); err != nil {
			return nil, decodeErr(tm.Kind, err)
		}
		w.obj, om, w.meta, w.spec = &o, &o.ObjectMeta, &o.Spec.Template.ObjectMeta, &o.Spec.Template.Spec
		w.podName = o.Name + jobSuffix(&o.Spec)
	case "CronJob":
		var o batchv1.CronJob
		if err := yaml.UnmarshalStrict(doc, &o); err != nil {
			return nil, decodeErr(tm.Kind, err)
		}
		js := &o.Spec.JobTemplate.Spec
		w.obj, om, w.meta, w.spec = &o, &o.ObjectMeta, &js.Template.ObjectMeta, &js.Template.Spec
		// <cronjob>-<scheduled time>-<random>, plus the index of Indexed jobs.
		w.podName = o.Name + "-*" + jobSuffix(js)
	case "ReplicaSet":
		var o appsv1.ReplicaSet
		if err := yaml.UnmarshalStrict(doc, &o); err != nil {
			return nil, decodeErr(tm.Kind, err)
		}
		w.obj, om, w.meta, w.spec = &o, &o.ObjectMeta, &o.Spec.Template.ObjectMeta, &o.Spec.Template.Spec
		w.podName = o.Name + "-*"
	default:
		// Refuse what would pass through unsealed while carrying
		// containers (List, ReplicationController, custom workloads).
		var m any
		if err := yaml.Unmarshal(doc, &m); err == nil && hasContainers(m) {
			return nil, fmt.Errorf("kind %q holds containers but cannot be sealed (split Lists into documents; use a supported kind): %w", tm.Kind, ErrUnsupportedKind)
		}
		return nil, nil
	}
	w.name, w.namespace = om.Name, om.Namespace
	if w.podName == "" || strings.HasPrefix(w.podName, "-") {
		return nil, fmt.Errorf("%s has no name: %w", tm.Kind, errdefs.ErrInvalidArgument)
	}
	return w, nil
}

// ErrUnsupportedKind is returned for a document that carries containers
// but is not a kind Seal knows.
var ErrUnsupportedKind = fmt.Errorf("unsupported workload kind: %w", errdefs.ErrNotImplemented)

// hasContainers reports whether a decoded document has a "containers" or
// "initContainers" list anywhere.
func hasContainers(v any) bool {
	switch v := v.(type) {
	case map[string]any:
		for k, c := range v {
			if _, isList := c.([]any); isList && (k == "containers" || k == "initContainers") {
				return true
			}
			if hasContainers(c) {
				return true
			}
		}
	case []any:
		for _, c := range v {
			if hasContainers(c) {
				return true
			}
		}
	}
	return false
}

func jobSuffix(js *batchv1.JobSpec) string {
	if js.CompletionMode != nil && *js.CompletionMode == batchv1.IndexedCompletion {
		return "-*-*"
	}
	return "-*"
}

func decodeErr(kind string, err error) error {
	return fmt.Errorf("%s does not decode (%v): %w", kind, err, errdefs.ErrInvalidArgument)
}

// encode marshals the object back to YAML without the empty
// creationTimestamp and status fields the typed round trip adds.
func encode(obj any) ([]byte, error) {
	j, err := yaml.Marshal(obj)
	if err != nil {
		return nil, err
	}
	var m map[string]any
	if err := yaml.Unmarshal(j, &m); err != nil {
		return nil, err
	}
	prune(m)
	return yaml.Marshal(m)
}

func prune(v any) {
	switch v := v.(type) {
	case map[string]any:
		for k, c := range v {
			if k == "creationTimestamp" && c == nil {
				delete(v, k)
				continue
			}
			prune(c)
			if k == "status" || k == "resources" || k == "strategy" || k == "updateStrategy" {
				if cm, ok := c.(map[string]any); ok && len(cm) == 0 {
					delete(v, k)
				}
			}
		}
	case []any:
		for _, c := range v {
			prune(c)
		}
	}
}

// containers returns pointers to the init containers and containers.
func (w *workload) containers() []*corev1.Container {
	var out []*corev1.Container
	for i := range w.spec.InitContainers {
		out = append(out, &w.spec.InitContainers[i])
	}
	for i := range w.spec.Containers {
		out = append(out, &w.spec.Containers[i])
	}
	return out
}

func (w *workload) binding(defaultNS, container string) envelope.Binding {
	ns := w.namespace
	if ns == "" {
		ns = defaultNS
	}
	if ns == "" {
		ns = "default"
	}
	return envelope.Binding{Namespace: ns, Pod: w.podName, Container: container}
}

func (w *workload) String() string { return w.kind + "/" + w.name }

// Seal seals every workload of a YAML stream.
func Seal(in []byte, opts SealOptions) ([]byte, error) {
	if len(in) > MaxInput {
		return nil, fmt.Errorf("input of %d bytes, limit %d: %w", len(in), MaxInput, errdefs.ErrInvalidArgument)
	}
	if opts.SealImage && opts.PlaceholderImage == "" {
		return nil, fmt.Errorf("sealing the image needs a placeholder image: %w", errdefs.ErrInvalidArgument)
	}
	rc := opts.RuntimeClass
	if rc == "" {
		rc = DefaultRuntimeClass
	}
	docs := SplitDocuments(in)
	used := map[string]bool{}
	for i, doc := range docs {
		w, err := decode(doc)
		if err != nil {
			return nil, fmt.Errorf("document %d: %w", i+1, err)
		}
		if w == nil {
			continue
		}
		if err := sealWorkload(w, opts, used); err != nil {
			return nil, fmt.Errorf("document %d (%s): %w", i+1, w, err)
		}
		w.spec.RuntimeClassName = &rc
		out, err := encode(w.obj)
		if err != nil {
			return nil, fmt.Errorf("document %d (%s): %w", i+1, w, err)
		}
		docs[i] = out
	}
	for c := range opts.Files {
		if !used[c] {
			return nil, fmt.Errorf("secret files given for container %q, which no workload has: %w", c, errdefs.ErrInvalidArgument)
		}
	}
	for c := range opts.Mounts {
		if !used["mounts/"+c] {
			return nil, fmt.Errorf("mount policy given for container %q, which no workload has: %w", c, errdefs.ErrInvalidArgument)
		}
	}
	return JoinDocuments(docs), nil
}

func sealWorkload(w *workload, opts SealOptions, used map[string]bool) error {
	if w.meta.Annotations == nil {
		w.meta.Annotations = map[string]string{}
	}
	for _, c := range w.containers() {
		key := envelope.PodAnnotationPrefix + c.Name
		if _, ok := w.meta.Annotations[key]; ok {
			return fmt.Errorf("container %q is already sealed: %w", c.Name, errdefs.ErrAlreadyExists)
		}
		var s envelope.Spec
		switch {
		case len(c.Command) > 0:
			s.Args = append(append([]string(nil), c.Command...), c.Args...)
			c.Command, c.Args = []string{envelope.Placeholder}, nil
		case len(c.Args) > 0:
			return fmt.Errorf("container %q sets args without command: set command too, the image entrypoint is unknown when sealing: %w", c.Name, errdefs.ErrInvalidArgument)
		}
		for j := range c.Env {
			e := &c.Env[j]
			if e.ValueFrom != nil {
				continue // a reference the kubelet resolves on the node: stays visible
			}
			s.Env = append(s.Env, e.Name+"="+e.Value)
			e.Value = envelope.Placeholder
		}
		if c.WorkingDir != "" {
			s.Cwd, c.WorkingDir = c.WorkingDir, ""
		}
		if files, ok := opts.Files[c.Name]; ok {
			s.Files = files
			used[c.Name] = true
		}
		if opts.SealImage {
			ref := &envelope.ImageRef{Reference: c.Image}
			if _, d, ok := strings.Cut(c.Image, "@"); ok {
				ref.Digest = d
			}
			s.Image, c.Image = ref, opts.PlaceholderImage
		}
		s.Exec = opts.Exec
		if p, ok := opts.Mounts[c.Name]; ok {
			s.Mounts = p
			used["mounts/"+c.Name] = true
		}
		data, err := envelope.Seal(&s, w.binding(opts.Namespace, c.Name), opts.Recipient)
		if err != nil {
			return fmt.Errorf("container %q: %w", c.Name, err)
		}
		w.meta.Annotations[key] = string(data)
	}
	total := 0
	for k, v := range w.meta.Annotations {
		total += len(k) + len(v)
	}
	if total > MaxAnnotations {
		return fmt.Errorf("annotations total %d bytes, Kubernetes allows %d: %w", total, MaxAnnotations, envelope.ErrTooLarge)
	}
	return nil
}

// Unseal opens every envelope of a sealed YAML stream with the owner's key
// and restores the visible fields: command (the full sealed args), env
// values, working directory and image. Secret files cannot be put back into
// a manifest and are dropped; Files returns them.
func Unseal(in []byte, key crypto.PrivateKey) ([]byte, map[string][]envelope.File, error) {
	if len(in) > MaxInput {
		return nil, nil, fmt.Errorf("input of %d bytes, limit %d: %w", len(in), MaxInput, errdefs.ErrInvalidArgument)
	}
	docs := SplitDocuments(in)
	files := map[string][]envelope.File{}
	for i, doc := range docs {
		w, err := decode(doc)
		if err != nil {
			return nil, nil, fmt.Errorf("document %d: %w", i+1, err)
		}
		if w == nil {
			continue
		}
		changed := false
		for _, c := range w.containers() {
			key2 := envelope.PodAnnotationPrefix + c.Name
			data, ok := w.meta.Annotations[key2]
			if !ok {
				continue
			}
			env, err := envelope.Parse([]byte(data))
			if err != nil {
				return nil, nil, fmt.Errorf("document %d (%s) container %q: %w", i+1, w, c.Name, err)
			}
			if env.Binding().Container != c.Name {
				return nil, nil, fmt.Errorf("document %d (%s) container %q: %w", i+1, w, c.Name, envelope.ErrWrongBinding)
			}
			s, err := env.Open(env.Binding(), key)
			if err != nil {
				return nil, nil, fmt.Errorf("document %d (%s) container %q: %w", i+1, w, c.Name, err)
			}
			restore(c, s)
			if len(s.Files) > 0 {
				files[w.String()+"/"+c.Name] = s.Files
			}
			delete(w.meta.Annotations, key2)
			changed = true
		}
		if !changed {
			continue
		}
		if len(w.meta.Annotations) == 0 {
			w.meta.Annotations = nil
		}
		out, err := encode(w.obj)
		if err != nil {
			return nil, nil, err
		}
		docs[i] = out
	}
	return JoinDocuments(docs), files, nil
}

func restore(c *corev1.Container, s *envelope.Spec) {
	if len(s.Args) > 0 {
		c.Command, c.Args = s.Args, nil
	}
	vals := map[string]string{}
	for _, e := range s.Env {
		n, v, _ := strings.Cut(e, "=")
		vals[n] = v
	}
	for j := range c.Env {
		if v, ok := vals[c.Env[j].Name]; ok && c.Env[j].ValueFrom == nil {
			c.Env[j].Value = v
			delete(vals, c.Env[j].Name)
		}
	}
	for _, e := range s.Env {
		n, _, _ := strings.Cut(e, "=")
		if v, ok := vals[n]; ok {
			c.Env = append(c.Env, corev1.EnvVar{Name: n, Value: v})
		}
	}
	if s.Cwd != "" {
		c.WorkingDir = s.Cwd
	}
	if s.Image != nil {
		c.Image = s.Image.Reference
	}
}
