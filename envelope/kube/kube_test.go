package kube

import (
	"bytes"
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"

	"github.com/raksh-project/raksh/envelope"
)

const kid = "kbs:///default/workload/key1"

var secrets = []string{"init-secret", "s3cr3t-arg", "hunter2", "deploy-secret", "sts-secret", "ds-secret", "job-secret", "cron-secret", "/srv", "FILECONTENT"}

func opts(t testing.TB) (SealOptions, any) {
	key, err := envelope.GenerateKey(envelope.KeyP256)
	if err != nil {
		t.Fatal(err)
	}
	return SealOptions{
		Recipient: envelope.Recipient{KeyID: kid, Key: key.Public()},
		Files:     map[string][]envelope.File{"app": {{Path: "/etc/app/key", Mode: 0o400, Content: []byte("FILECONTENT")}}},
	}, key
}

func TestSealAllKinds(t *testing.T) {
	in, err := os.ReadFile("testdata/workloads.yaml")
	if err != nil {
		t.Fatal(err)
	}
	o, key := opts(t)
	out, err := Seal(in, o)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range secrets {
		if bytes.Contains(out, []byte(s)) {
			t.Errorf("sealed output contains %q", s)
		}
	}
	docs := SplitDocuments(out)
	if len(docs) != 7 {
		t.Fatalf("%d documents out, want 7", len(docs))
	}
	if !bytes.Equal(docs[0], SplitDocuments(in)[0]) {
		t.Fatalf("ConfigMap changed:\n%s", docs[0])
	}
	wantPods := []struct{ kind, ns, pod string }{
		{"Pod", "prod", "web-0"}, {"Deployment", "default", "api-*-*"}, {"StatefulSet", "data", "db-*"},
		{"DaemonSet", "default", "agent-*"}, {"Job", "default", "migrate-*-*"}, {"CronJob", "default", "backup-*-*"},
	}
	for i, want := range wantPods {
		w, err := decode(docs[i+1])
		if err != nil || w == nil || w.kind != want.kind {
			t.Fatalf("doc %d: %v %+v", i+1, err, w)
		}
		if w.spec.RuntimeClassName == nil || *w.spec.RuntimeClassName != "raksh" {
			t.Errorf("%s: runtimeClassName not set", want.kind)
		}
		for _, c := range w.containers() {
			data := w.meta.Annotations[envelope.PodAnnotationPrefix+c.Name]
			env, err := envelope.Parse([]byte(data))
			if err != nil {
				t.Fatalf("%s/%s: %v", want.kind, c.Name, err)
			}
			b := envelope.Binding{Namespace: want.ns, Pod: want.pod, Container: c.Name}
			if env.Binding() != b {
				t.Errorf("%s/%s binding %v, want %v", want.kind, c.Name, env.Binding(), b)
			}
			if len(c.Command) > 0 && (len(c.Command) != 1 || c.Command[0] != envelope.Placeholder || len(c.Args) != 0) {
				t.Errorf("%s/%s visible command %v args %v", want.kind, c.Name, c.Command, c.Args)
			}
			for _, e := range c.Env {
				if e.ValueFrom == nil && e.Value != envelope.Placeholder {
					t.Errorf("%s/%s env %s visible", want.kind, c.Name, e.Name)
				}
			}
		}
	}
	// The Pod's app container: manifest and full content.
	w, _ := decode(docs[1])
	env, _ := envelope.Parse([]byte(w.meta.Annotations[envelope.PodAnnotationPrefix+"app"]))
	m := env.Manifest()
	if !m.Args || !m.Cwd || len(m.Env) != 1 || m.Env[0] != "DB_PASSWORD" || len(m.Files) != 1 {
		t.Fatalf("manifest %+v", m)
	}
	s, err := env.Open(envelope.Binding{Namespace: "prod", Pod: "web-0", Container: "app"}, key)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(s.Args, " ") != "/app --token s3cr3t-arg" || s.Cwd != "/srv" || string(s.Files[0].Content) != "FILECONTENT" {
		t.Fatalf("sealed spec %+v", s)
	}
	// valueFrom stays a visible reference.
	var pod corev1.Pod
	if err := yaml.Unmarshal(docs[1], &pod); err != nil {
		t.Fatal(err)
	}
	if pod.Spec.Containers[0].Env[1].ValueFrom == nil {
		t.Fatal("valueFrom lost")
	}

	// Owner unseal restores the fields.
	back, files, err := Unseal(out, key)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range secrets[:8] {
		if !bytes.Contains(back, []byte(s)) {
			t.Errorf("unsealed output lacks %q", s)
		}
	}
	if bytes.Contains(back, []byte(envelope.PodAnnotationPrefix)) {
		t.Error("envelope annotations left after unseal")
	}
	if len(files["Pod/web-0/app"]) != 1 {
		t.Errorf("files %v", files)
	}
	other, _ := envelope.GenerateKey(envelope.KeyP256)
	if _, _, err := Unseal(out, other); !errors.Is(err, envelope.ErrDecrypt) {
		t.Errorf("unseal with another key: %v", err)
	}
}

func TestSealRejects(t *testing.T) {
	o, _ := opts(t)
	o.Files = nil
	pod := func(body string) []byte {
		return []byte("apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  containers:\n" + body)
	}
	for name, tc := range map[string]struct {
		in   []byte
		opts func(*SealOptions)
		want error
	}{
		"args without command": {pod("  - {name: c, image: i, args: [x]}\n"), nil, errdefs.ErrInvalidArgument},
		"duplicate env":        {pod("  - {name: c, image: i, env: [{name: A, value: '1'}, {name: A, value: '2'}]}\n"), nil, envelope.ErrInvalidSpec},
		"unknown field":        {pod("  - {name: c, image: i, comand: [x]}\n"), nil, errdefs.ErrInvalidArgument},
		"not yaml":             {[]byte("kind: [unclosed"), nil, errdefs.ErrInvalidArgument},
		"no name":              {[]byte("apiVersion: v1\nkind: Pod\nspec: {containers: [{name: c, image: i}]}\n"), nil, errdefs.ErrInvalidArgument},
		"already sealed":       {[]byte("apiVersion: v1\nkind: Pod\nmetadata: {name: p, annotations: {io.raksh.envelope/c: x}}\nspec: {containers: [{name: c, image: i}]}\n"), nil, errdefs.ErrAlreadyExists},
		"files for unknown container": {pod("  - {name: c, image: i}\n"), func(o *SealOptions) {
			o.Files = map[string][]envelope.File{"nope": {{Path: "/x"}}}
		}, errdefs.ErrInvalidArgument},
		"image without placeholder": {pod("  - {name: c, image: i}\n"), func(o *SealOptions) { o.SealImage = true }, errdefs.ErrInvalidArgument},
		"too large":                 {bytes.Repeat([]byte("#"), MaxInput+1), nil, errdefs.ErrInvalidArgument},
		"List of pods":              {[]byte("apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Pod\n  metadata: {name: p}\n  spec: {containers: [{name: c, image: i}]}\n"), nil, ErrUnsupportedKind},
		"ReplicationController":     {[]byte("apiVersion: v1\nkind: ReplicationController\nmetadata: {name: rc}\nspec: {template: {spec: {containers: [{name: c, image: i}]}}}\n"), nil, ErrUnsupportedKind},
		"custom workload":           {[]byte("apiVersion: argoproj.io/v1alpha1\nkind: Rollout\nmetadata: {name: r}\nspec: {template: {spec: {initContainers: [{name: c}]}}}\n"), nil, ErrUnsupportedKind},
		"annotations over limit": {pod("  - {name: c, image: i}\n"), func(o *SealOptions) {
			o.Files = map[string][]envelope.File{"c": {{Path: "/big", Content: make([]byte, 300<<10)}}}
		}, envelope.ErrTooLarge},
	} {
		t.Run(name, func(t *testing.T) {
			oo := o
			if tc.opts != nil {
				tc.opts(&oo)
			}
			if _, err := Seal(tc.in, oo); !errors.Is(err, tc.want) {
				t.Fatalf("Seal = %v, want %v", err, tc.want)
			}
		})
	}
}

func TestReplicaSet(t *testing.T) {
	o, key := opts(t)
	o.Files = nil
	in := []byte("apiVersion: apps/v1\nkind: ReplicaSet\nmetadata: {name: rs, namespace: n}\nspec: {selector: {}, template: {spec: {containers: [{name: c, image: i, env: [{name: K, value: rs-secret}]}]}}}\n")
	out, err := Seal(in, o)
	if err != nil || bytes.Contains(out, []byte("rs-secret")) {
		t.Fatalf("Seal: %v\n%s", err, out)
	}
	views, err := Inspect(out, key)
	if err != nil || len(views) != 1 || views[0].Sealed.Binding.Pod != "rs-*" || !*views[0].Sealed.Opened {
		t.Fatalf("views %+v %v", views, err)
	}
}

func TestSealImage(t *testing.T) {
	o, key := opts(t)
	o.Files = nil
	o.SealImage, o.PlaceholderImage = true, "registry.example/raksh/placeholder:1"
	o.Exec = &envelope.ExecPolicy{AllowLogs: true}
	in := []byte("apiVersion: v1\nkind: Pod\nmetadata: {name: p, generateName: ignored-}\nspec: {containers: [{name: c, image: 'secret.example/app@sha256:abcd'}]}\n")
	out, err := Seal(in, o)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(out, []byte("secret.example")) || !bytes.Contains(out, []byte(o.PlaceholderImage)) {
		t.Fatalf("image not sealed:\n%s", out)
	}
	back, _, err := Unseal(out, key)
	if err != nil || !bytes.Contains(back, []byte("secret.example/app@sha256:abcd")) {
		t.Fatalf("unseal: %v\n%s", err, back)
	}
}

func TestSplitJoin(t *testing.T) {
	for _, in := range []string{"a: 1\n", "---\na: 1\n---\nb: 2\n", "a: 1\n--- # c\nb: 2\n", "a: 1\n---\n---\nb: 2\n"} {
		docs := SplitDocuments([]byte(in))
		again := SplitDocuments(JoinDocuments(docs))
		if len(docs) != len(again) {
			t.Errorf("%q: %d docs, %d after join", in, len(docs), len(again))
		}
	}
	if n := len(SplitDocuments([]byte("a: 1\n---\nb: 2\n---\nc: 3\n"))); n != 3 {
		t.Fatalf("%d docs", n)
	}
}

func TestInspect(t *testing.T) {
	in, _ := os.ReadFile("testdata/workloads.yaml")
	o, key := opts(t)
	out, err := Seal(in, o)
	if err != nil {
		t.Fatal(err)
	}
	views, err := Inspect(out, key)
	if err != nil {
		t.Fatal(err)
	}
	if len(views) != 7 {
		t.Fatalf("%d views, want 7 containers", len(views))
	}
	app := views[1]
	if app.Container != "app" || app.Sealed == nil || app.Sealed.Opened == nil || !*app.Sealed.Opened {
		t.Fatalf("app view %+v", app)
	}
	if !views[0].Init || views[0].Container != "init" {
		t.Fatalf("init view %+v", views[0])
	}
	srcs := map[string]string{}
	for _, e := range app.NodeSees.Env {
		srcs[e.Name] = e.Source
	}
	if srcs["DB_PASSWORD"] != "placeholder" || srcs["FROM_SECRET"] != "secretKeyRef" {
		t.Fatalf("env sources %v", srcs)
	}
	if len(app.Warnings) != 1 || !strings.Contains(app.Warnings[0], "FROM_SECRET") {
		t.Fatalf("warnings %v", app.Warnings)
	}
	// The unsealed input: everything flagged.
	views, _ = Inspect(in, nil)
	if views[1].Sealed != nil || len(views[1].Warnings) < 3 {
		t.Fatalf("unsealed view %+v", views[1])
	}
	// Another key: reported as not opened, with the reason.
	other, _ := envelope.GenerateKey(envelope.KeyP256)
	views, _ = Inspect(out, other)
	if views[1].Sealed.Opened == nil || *views[1].Sealed.Opened || !strings.Contains(views[1].Sealed.Error, "decryption failed") {
		t.Fatalf("wrong key view %+v", views[1].Sealed)
	}
}
