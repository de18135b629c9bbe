package kube

import (
	"crypto"
	"fmt"

	corev1 "k8s.io/api/core/v1"

	"github.com/raksh-project/raksh/envelope"
)

// View is what inspect reports for one container: what the node sees next to
// what stays sealed. It never holds a secret value.
type View struct {
	Document  int         `json:"document"`
	Kind      string      `json:"kind"`
	Name      string      `json:"name"`
	Container string      `json:"container"`
	Init      bool        `json:"init,omitempty"`
	NodeSees  NodeView    `json:"node_sees"`
	Sealed    *SealedView `json:"sealed,omitempty"`
	Warnings  []string    `json:"warnings,omitempty"`
}

// NodeView lists the container's visible fields. Literal env values are
// reported as visible, never printed.
type NodeView struct {
	RuntimeClass string    `json:"runtime_class,omitempty"`
	Image        string    `json:"image"`
	Command      []string  `json:"command,omitempty"`
	Args         []string  `json:"args,omitempty"`
	WorkingDir   string    `json:"working_dir,omitempty"`
	Env          []EnvView `json:"env,omitempty"`
	EnvFrom      []string  `json:"env_from,omitempty"`
	Mounts       []string  `json:"mounts,omitempty"`
}

// EnvView is one visible env variable.
type EnvView struct {
	Name string `json:"name"`
	// Source is "placeholder", "literal" (value visible to the node) or the
	// reference kind (secretKeyRef, configMapKeyRef, fieldRef, ...).
	Source string `json:"source"`
}

// SealedView describes a container's envelope.
type SealedView struct {
	KeyID     string            `json:"kid"`
	Algorithm string            `json:"alg"`
	Binding   envelope.Binding  `json:"binding"`
	Manifest  envelope.Manifest `json:"manifest"`
	// Opened is set when a key was given: true when the envelope opened.
	Opened *bool `json:"opened,omitempty"`
	// Error is why the envelope did not parse or open.
	Error string `json:"error,omitempty"`
}

// Inspect reports every container of the workloads in a YAML stream. With
// key non-nil, each envelope is also opened (values are not reported).
func Inspect(in []byte, key crypto.PrivateKey) ([]View, error) {
	if len(in) > MaxInput {
		return nil, fmt.Errorf("input of %d bytes, limit %d", len(in), MaxInput)
	}
	var out []View
	for i, doc := range SplitDocuments(in) {
		w, err := decode(doc)
		if err != nil {
			return nil, fmt.Errorf("document %d: %w", i+1, err)
		}
		if w == nil {
			continue
		}
		nInit := len(w.spec.InitContainers)
		for j, c := range w.containers() {
			v := View{Document: i + 1, Kind: w.kind, Name: w.name, Container: c.Name, Init: j < nInit, NodeSees: nodeView(w, c)}
			if data, ok := w.meta.Annotations[envelope.PodAnnotationPrefix+c.Name]; ok {
				v.Sealed = sealedView(data, key)
			} else {
				v.Warnings = append(v.Warnings, "not sealed: everything is visible to the node")
			}
			for _, e := range v.NodeSees.Env {
				if e.Source == "literal" {
					v.Warnings = append(v.Warnings, fmt.Sprintf("env %s has a literal value visible to the node", e.Name))
				}
				if e.Source == "secretKeyRef" || e.Source == "configMapKeyRef" {
					v.Warnings = append(v.Warnings, fmt.Sprintf("env %s is resolved by the kubelet: its value passes through the node", e.Name))
				}
			}
			if w.spec.RuntimeClassName == nil || *w.spec.RuntimeClassName != DefaultRuntimeClass {
				v.Warnings = append(v.Warnings, "runtimeClassName is not raksh: the pod will not run in a TEE")
			}
			out = append(out, v)
		}
	}
	return out, nil
}

func nodeView(w *workload, c *corev1.Container) NodeView {
	nv := NodeView{Image: c.Image, Command: c.Command, Args: c.Args, WorkingDir: c.WorkingDir}
	if w.spec.RuntimeClassName != nil {
		nv.RuntimeClass = *w.spec.RuntimeClassName
	}
	for _, e := range c.Env {
		src := "literal"
		switch {
		case e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil:
			src = "secretKeyRef"
		case e.ValueFrom != nil && e.ValueFrom.ConfigMapKeyRef != nil:
			src = "configMapKeyRef"
		case e.ValueFrom != nil && e.ValueFrom.FieldRef != nil:
			src = "fieldRef"
		case e.ValueFrom != nil:
			src = "reference"
		case e.Value == envelope.Placeholder:
			src = "placeholder"
		}
		nv.Env = append(nv.Env, EnvView{Name: e.Name, Source: src})
	}
	for _, ef := range c.EnvFrom {
		switch {
		case ef.SecretRef != nil:
			nv.EnvFrom = append(nv.EnvFrom, "secret/"+ef.SecretRef.Name)
		case ef.ConfigMapRef != nil:
			nv.EnvFrom = append(nv.EnvFrom, "configmap/"+ef.ConfigMapRef.Name)
		}
	}
	for _, m := range c.VolumeMounts {
		nv.Mounts = append(nv.Mounts, m.MountPath)
	}
	return nv
}

func sealedView(data string, key crypto.PrivateKey) *SealedView {
	env, err := envelope.Parse([]byte(data))
	if err != nil {
		return &SealedView{Error: err.Error()}
	}
	sv := &SealedView{KeyID: env.KeyID(), Algorithm: env.Algorithm(), Binding: env.Binding(), Manifest: env.Manifest()}
	if key != nil {
		_, err := env.Open(env.Binding(), key)
		ok := err == nil
		sv.Opened = &ok
		if err != nil {
			sv.Error = err.Error()
		}
	}
	return sv
}
