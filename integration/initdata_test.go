//go:build integration

package integration

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	cri "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/raksh-project/raksh/envelope"
	"github.com/raksh-project/raksh/integration/harness"
	rakshruntime "github.com/raksh-project/raksh/runtime"
	"github.com/raksh-project/raksh/tee/initdata"
)

// testCA is a CA issuing broker certificates for a test.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pem  string
}

func newTestCA(t *testing.T, name string) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return &testCA{cert: cert, key: key, pem: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))}
}

// serve issues a certificate for host and returns what startKBSWith needs
// to serve it.
func (ca *testCA) serve(t *testing.T, host string) *kbsTLS {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{SerialNumber: big.NewInt(2),
		Subject: pkix.Name{CommonName: host}, DNSNames: []string{host}, IPAddresses: nil,
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}},
		ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	kder, _ := x509.MarshalPKCS8PrivateKey(key)
	tc := &kbsTLS{CertFile: filepath.Join(dir, "tls.crt"), KeyFile: filepath.Join(dir, "tls.key")}
	os.WriteFile(tc.CertFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644)
	os.WriteFile(tc.KeyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), 0o600)
	pool := x509.NewCertPool()
	pool.AddCert(ca.cert)
	// The admin client reaches the broker by its loopback address.
	tc.Client = &tls.Config{RootCAs: pool, ServerName: host}
	return tc
}

// TestInitDataSim binds a pod's init data into the simulated TEE through
// real VMs: the document (broker URL and CA, a policy denying exec) comes
// from the pod annotation, its digest goes into the sim evidence, the agent
// checks it and speaks TLS to the broker it names, and the broker pins the
// digest. Then the refusals: a document the broker's policy does not pin
// (one byte changed), a document whose digest is not the one bound at
// launch (the agent refuses it), and a node that puts its own broker behind
// the shim's proxy (the agent refuses its certificate).
func TestInitDataSim(t *testing.T) {
	harness.RequiresRoot(t)
	ctx := context.Background()
	const brokerHost = "kbs.raksh.test"
	ca := newTestCA(t, "raksh test broker CA")
	k := startKBSWith(t, ca.serve(t, brokerHost))
	mitm := startKBSWith(t, newTestCA(t, "the node's own CA").serve(t, brokerHost))
	h := startWithBusybox(t, harness.Options{
		RuntimeConfig: fmt.Sprintf("tee = \"sim\"\n[proxy]\nkbs = %q\n", k.hostPort()),
	})
	baseConfig := readFile(t, h.RuntimeConfigPath)
	setConfig := func(t *testing.T, cfg string) {
		t.Helper()
		if err := os.WriteFile(h.RuntimeConfigPath, []byte(cfg), 0o644); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.WriteFile(h.RuntimeConfigPath, []byte(baseConfig), 0o644) })
	}

	docJSON, err := json.Marshal(map[string]any{
		"version": initdata.Version,
		"kbs":     map[string]string{"url": "https://" + brokerHost, "ca": ca.pem},
		"policy":  map[string]bool{"deny_exec": true},
	})
	if err != nil {
		t.Fatal(err)
	}
	doc := string(docJSON)
	digest := hex.EncodeToString(initdata.Digest(docJSON))
	// One byte changed, same meaning: Go's JSON matches keys regardless of
	// case, so the agent would accept it; only the digest differs.
	other := strings.Replace(doc, `"version"`, `"Version"`, 1)

	cfg, err := rakshruntime.LoadConfig(h.RuntimeConfigPath)
	if err != nil {
		t.Fatal(err)
	}
	m, err := rakshruntime.LaunchMeasurement(cfg)
	if err != nil {
		t.Fatal(err)
	}
	k.setPolicy(t, fmt.Sprintf(`{"rules":[{"resources":["default/workload/*"],"tee":["sim"],"measurements":[%q],"init_data_digests":[%q]}]}`,
		hex.EncodeToString(m), digest))
	key, err := envelope.GenerateKey(envelope.KeyP256)
	if err != nil {
		t.Fatal(err)
	}
	pemKey, _ := envelope.MarshalPrivateKey(key)
	if err := k.Admin.SetResource(ctx, "default/workload/initdata", pemKey); err != nil {
		t.Fatal(err)
	}
	// The node's broker admits anything and serves its own key by the
	// same name.
	mitm.setPolicy(t, `{"rules":[{"resources":["default/workload/*"],"tee":["sim"]}]}`)
	nodeKey, _ := envelope.GenerateKey(envelope.KeyP256)
	nodePEM, _ := envelope.MarshalPrivateKey(nodeKey)
	if err := mitm.Admin.SetResource(ctx, "default/workload/initdata", nodePEM); err != nil {
		t.Fatal(err)
	}

	secret := randomSecret(t, "initdata-")
	run := func(t *testing.T, id, doc, script string) (string, error) {
		t.Helper()
		env, err := envelope.Seal(&envelope.Spec{
			Args: []string{"sh", "-c", script},
			Env:  []string{"SECRET=" + secret},
			Exec: &envelope.ExecPolicy{AllowExec: true, AllowLogs: true},
		}, envelope.Binding{Namespace: "default", Pod: id, Container: id},
			envelope.Recipient{KeyID: "kbs:///default/workload/initdata", Key: key.Public()})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
		defer cancel()
		return h.CtrContext(ctx, "run", "--rm", "--runtime", rakshRuntime,
			"--annotation", initdata.Annotation+"="+doc,
			"--annotation", envelope.ContainerAnnotation+"="+string(env),
			"--env", "SECRET="+envelope.Placeholder, busyboxRef, id, envelope.Placeholder)
	}
	refused := func(t *testing.T, id, doc, want string) {
		t.Helper()
		start := time.Now()
		out, err := run(t, id, doc, `echo "SECRET=$SECRET"`)
		assertRefused(t, start, out, err, want, secret)
	}

	t.Run("pinned digest", func(t *testing.T) {
		const id = "raksh-initdata"
		start := time.Now()
		type result struct {
			out string
			err error
		}
		done := make(chan result, 1)
		go func() {
			out, err := run(t, id, doc, `echo "SECRET=$SECRET"; sleep 6`)
			done <- result{out, err}
		}()
		// The envelope allows exec; the pod's init data denies it.
		var execErr error
		for deadline := time.Now().Add(2 * time.Minute); time.Now().Before(deadline); time.Sleep(300 * time.Millisecond) {
			out, _ := h.Ctr("task", "ls")
			if !strings.Contains(out, id) || !strings.Contains(out, "RUNNING") {
				continue
			}
			_, execErr = h.Ctr("task", "exec", "--exec-id", "peek", id, "cat", "/proc/1/environ")
			break
		}
		if execErr == nil || !strings.Contains(execErr.Error(), "init data denies exec") {
			t.Errorf("exec into a container of a pod whose init data denies exec: %v", execErr)
		}
		r := <-done
		if r.err != nil {
			t.Fatalf("ctr run: %v\n%s", r.err, r.out)
		}
		if !strings.Contains(r.out, "SECRET="+secret) {
			t.Fatalf("the broker did not release the key for the pinned init data:\n%s", r.out)
		}
		t.Logf("sealed container with init data ran in %s", time.Since(start).Round(100*time.Millisecond))
	})
	t.Run("broker refuses another digest", func(t *testing.T) {
		refused(t, "raksh-initdata-other", other, "PolicyDeny")
	})
	t.Run("agent refuses a document not bound at launch", func(t *testing.T) {
		// The (insecure) sim reports the digest the node says: a node
		// binding one document and handing the agent another.
		setConfig(t, baseConfig+fmt.Sprintf("[sim]\ninit_data_digest = %q\n", digest))
		refused(t, "raksh-initdata-flipped", other, "does not match the "+digest+" bound at launch")
	})
	t.Run("agent refuses the node's broker", func(t *testing.T) {
		setConfig(t, strings.Replace(baseConfig, k.hostPort(), mitm.hostPort(), 1))
		refused(t, "raksh-initdata-mitm", doc, "certificate signed by unknown authority")
	})
}

// TestCRIInitData runs a pod through the CRI whose pod annotation carries
// init data (the runtime handler's pod_annotations pass it to the sandbox):
// the shim binds it into the sim TEE, the agent verifies it and enforces its
// policy, so ExecSync into the pod's container is refused. A pod with an
// invalid document is refused before any VM boots.
func TestCRIInitData(t *testing.T) {
	harness.RequiresRoot(t)
	h, rs := startCRI(t, harness.Options{RuntimeConfig: "tee = \"sim\"\n"})
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	podConfig := func(name, doc string) *cri.PodSandboxConfig {
		return &cri.PodSandboxConfig{
			Metadata:    &cri.PodSandboxMetadata{Name: name, Uid: "uid-" + name, Namespace: "raksh-test"},
			Hostname:    name,
			Annotations: map[string]string{initdata.Annotation: doc},
			Linux: &cri.LinuxPodSandboxConfig{SecurityContext: &cri.LinuxSandboxSecurityContext{
				NamespaceOptions: &cri.NamespaceOption{Network: cri.NamespaceMode_NODE},
			}},
		}
	}

	if _, err := rs.RunPodSandbox(ctx, &cri.RunPodSandboxRequest{Config: podConfig("bad-initdata", `{"version":"raksh.initdata/v1","polcy":{}}`), RuntimeHandler: "raksh"}); err == nil || !strings.Contains(err.Error(), "unknown field") {
		t.Fatalf("pod with an invalid init-data document: %v", err)
	}
	if n := len(h.QEMUProcesses()); n != 0 {
		t.Fatalf("%d QEMU processes after a refused pod", n)
	}

	start := time.Now()
	pod := podConfig("initdata", `{"version":"raksh.initdata/v1","policy":{"deny_exec":true}}`)
	sb, err := rs.RunPodSandbox(ctx, &cri.RunPodSandboxRequest{Config: pod, RuntimeHandler: "raksh"})
	if err != nil {
		t.Fatalf("RunPodSandbox: %v", err)
	}
	defer func() {
		rs.StopPodSandbox(ctx, &cri.StopPodSandboxRequest{PodSandboxId: sb.PodSandboxId})
		rs.RemovePodSandbox(ctx, &cri.RemovePodSandboxRequest{PodSandboxId: sb.PodSandboxId})
		waitNoQEMU(t, h)
	}()
	c, err := rs.CreateContainer(ctx, &cri.CreateContainerRequest{
		PodSandboxId: sb.PodSandboxId, SandboxConfig: pod,
		Config: &cri.ContainerConfig{
			Metadata: &cri.ContainerMetadata{Name: "app"},
			Image:    &cri.ImageSpec{Image: criBusybox},
			Command:  []string{"/bin/sh", "-c", "exec sleep 600"},
			Linux:    &cri.LinuxContainerConfig{},
		},
	})
	if err != nil {
		t.Fatalf("CreateContainer: %v", err)
	}
	if _, err := rs.StartContainer(ctx, &cri.StartContainerRequest{ContainerId: c.ContainerId}); err != nil {
		t.Fatalf("StartContainer: %v", err)
	}
	_, err = rs.ExecSync(ctx, &cri.ExecSyncRequest{ContainerId: c.ContainerId, Cmd: []string{"true"}, Timeout: 60})
	if err == nil || !strings.Contains(err.Error(), "init data denies exec") {
		t.Fatalf("ExecSync into a pod whose init data denies exec: %v", err)
	}
	t.Logf("pod with init data up and exec refused in %s: %v", time.Since(start).Round(100*time.Millisecond), err)
}

// assertRefused fails t unless the container run that began at start
// failed with an error containing want, and neither the error nor the
// output holds secret; it logs how long the refusal took.
func assertRefused(t *testing.T, start time.Time, out string, err error, want, secret string) {
	t.Helper()
	if err == nil {
		t.Fatalf("the container ran: %s", out)
	}
	if !strings.Contains(err.Error(), want) {
		t.Fatalf("error %v, want one saying %q", err, want)
	}
	if strings.Contains(err.Error()+out, secret) {
		t.Fatal("the secret leaked")
	}
	_, msg, _ := strings.Cut(err.Error(), "ctr: ")
	t.Logf("refused in %s: %s", time.Since(start).Round(100*time.Millisecond), msg)
}
