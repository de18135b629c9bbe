// Package kubernetes holds the Kubernetes manifests (kustomize) that install
// Raksh on a cluster; its test checks that they parse strictly into the
// Kubernetes API types and agree with the rest of contrib/.
package kubernetes

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/BurntSushi/toml"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	nodev1 "k8s.io/api/node/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"
)

// documents splits a multi-document YAML file.
func documents(t *testing.T, path string) [][]byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var docs [][]byte
	for _, d := range bytes.Split(b, []byte("\n---\n")) {
		if len(bytes.TrimSpace(d)) > 0 {
			docs = append(docs, d)
		}
	}
	return docs
}

// objects parses every resource kustomization.yaml lists, strictly into
// its API type (an unknown or misspelt field fails).
func objects(t *testing.T) map[string]any {
	t.Helper()
	var k struct {
		APIVersion string            `json:"apiVersion"`
		Kind       string            `json:"kind"`
		Namespace  string            `json:"namespace"`
		Resources  []string          `json:"resources"`
		Images     []map[string]any  `json:"images"`
		Labels     map[string]string `json:"labels,omitempty"`
	}
	b, err := os.ReadFile("kustomization.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.UnmarshalStrict(b, &k); err != nil {
		t.Fatalf("kustomization.yaml: %v", err)
	}
	if k.Kind != "Kustomization" || k.Namespace != "raksh-system" || len(k.Resources) == 0 {
		t.Fatalf("kustomization.yaml: %+v", k)
	}
	objs := map[string]any{}
	for _, r := range k.Resources {
		for i, d := range documents(t, r) {
			var tm metav1.TypeMeta
			if err := yaml.Unmarshal(d, &tm); err != nil {
				t.Fatalf("%s document %d: %v", r, i+1, err)
			}
			var obj any
			switch tm.Kind {
			case "Namespace":
				obj = &corev1.Namespace{}
			case "ServiceAccount":
				obj = &corev1.ServiceAccount{}
			case "RuntimeClass":
				obj = &nodev1.RuntimeClass{}
			case "DaemonSet":
				obj = &appsv1.DaemonSet{}
			case "ClusterRole":
				obj = &rbacv1.ClusterRole{}
			case "ClusterRoleBinding":
				obj = &rbacv1.ClusterRoleBinding{}
			default:
				t.Fatalf("%s document %d: unexpected kind %q", r, i+1, tm.Kind)
			}
			if err := yaml.UnmarshalStrict(d, obj); err != nil {
				t.Fatalf("%s document %d (%s): %v", r, i+1, tm.Kind, err)
			}
			objs[tm.Kind] = obj
		}
	}
	for _, want := range []string{"Namespace", "RuntimeClass", "DaemonSet", "ServiceAccount", "ClusterRole", "ClusterRoleBinding"} {
		if objs[want] == nil {
			t.Errorf("no %s in the manifests", want)
		}
	}
	return objs
}

func TestManifests(t *testing.T) {
	objs := objects(t)

	rc := objs["RuntimeClass"].(*nodev1.RuntimeClass)
	if rc.Name != "raksh" || rc.Handler != "raksh" {
		t.Errorf("RuntimeClass %q handler %q, want raksh/raksh", rc.Name, rc.Handler)
	}
	// The pod overhead covers at least the VM's memory from runtime.toml.
	var rt struct {
		MemoryMiB int64 `toml:"memory_mib"`
	}
	if _, err := toml.DecodeFile(filepath.Join("..", "raksh", "runtime.toml"), &rt); err != nil {
		t.Fatal(err)
	}
	if rc.Overhead == nil {
		t.Fatal("RuntimeClass has no overhead")
	}
	mem := rc.Overhead.PodFixed[corev1.ResourceMemory]
	if want := resource.NewQuantity(rt.MemoryMiB<<20, resource.BinarySI); rt.MemoryMiB == 0 || mem.Cmp(*want) < 0 {
		t.Errorf("RuntimeClass memory overhead %s is below the VM's memory_mib %d", mem.String(), rt.MemoryMiB)
	}
	if cpu := rc.Overhead.PodFixed[corev1.ResourceCPU]; cpu.IsZero() {
		t.Error("RuntimeClass has no CPU overhead")
	}

	ds := objs["DaemonSet"].(*appsv1.DaemonSet)
	spec := ds.Spec.Template.Spec
	if len(spec.Containers) != 1 {
		t.Fatalf("installer DaemonSet has %d containers, want 1", len(spec.Containers))
	}
	c := spec.Containers[0]
	if !strings.Contains(strings.Join(c.Args, " "), "/opt/raksh-payload/install.sh install") {
		t.Errorf("installer does not run install.sh install: %q", c.Args)
	}
	if c.Lifecycle == nil || c.Lifecycle.PreStop == nil || c.Lifecycle.PreStop.Exec == nil ||
		!strings.Contains(strings.Join(c.Lifecycle.PreStop.Exec.Command, " "), "install.sh uninstall") {
		t.Error("installer has no preStop uninstall")
	}
	if !spec.HostPID || c.SecurityContext == nil || c.SecurityContext.Privileged == nil || !*c.SecurityContext.Privileged {
		t.Error("installer needs hostPID and privileged to restart containerd on the node")
	}
	if spec.ServiceAccountName != objs["ServiceAccount"].(*corev1.ServiceAccount).Name {
		t.Errorf("DaemonSet service account %q is not the manifests' one", spec.ServiceAccountName)
	}
	if ds.Spec.Selector == nil || ds.Spec.Selector.MatchLabels["app.kubernetes.io/name"] != ds.Spec.Template.Labels["app.kubernetes.io/name"] {
		t.Error("DaemonSet selector does not match its template")
	}
	// The installer image puts install.sh where the DaemonSet runs it.
	cf, err := os.ReadFile(filepath.Join("installer", "Containerfile"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(cf), "install.sh /opt/raksh-payload/install.sh") {
		t.Error("Containerfile does not install install.sh at /opt/raksh-payload/install.sh")
	}
}

// install.sh is valid POSIX shell.
func TestInstallScriptSyntax(t *testing.T) {
	fi, err := os.Stat(filepath.Join("installer", "install.sh"))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode()&0o111 == 0 {
		t.Error("install.sh is not executable")
	}
	if out, err := exec.Command("sh", "-n", filepath.Join("installer", "install.sh")).CombinedOutput(); err != nil {
		t.Errorf("sh -n install.sh: %v: %s", err, out)
	}
	out, err := exec.Command("sh", filepath.Join("installer", "install.sh"), "bogus").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "usage") {
		t.Errorf("install.sh bogus: %v: %s", err, out)
	}
}
