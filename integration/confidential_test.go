//go:build integration

package integration

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/raksh-project/raksh/envelope"
	"github.com/raksh-project/raksh/integration/harness"
	"github.com/raksh-project/raksh/kbs/client"
	rakshruntime "github.com/raksh-project/raksh/runtime"
)

// kbsProcess is a raksh-kbs started for a test.
type kbsProcess struct {
	URL, Dir, Log string
	Admin         *client.Admin
}

// startKBS starts raksh-kbs on a random loopback port, trusting the sim
// platform key build-guest.sh baked into the initrd, with an admin key
// generated here. It stops at test end.
func startKBS(t *testing.T) *kbsProcess {
	t.Helper()
	return startKBSWith(t, nil)
}

// kbsTLS makes startKBSWith serve HTTPS with a certificate and key (PEM
// files); Client is the TLS configuration the test's admin client uses.
type kbsTLS struct {
	CertFile, KeyFile string
	Client            *tls.Config
}

// startKBSWith is startKBS, serving HTTPS when tc is not nil.
func startKBSWith(t *testing.T, tc *kbsTLS) *kbsProcess {
	t.Helper()
	return startKBSConfig(t, tc, "")
}

// startKBSConfig is startKBSWith with a raksh-kbs configuration file
// holding config (e.g. a [pef] verifier section), when not empty.
func startKBSConfig(t *testing.T, tc *kbsTLS, config string) *kbsProcess {
	t.Helper()
	simPub := filepath.Join(harness.Output(), "keys", "sim-platform.pub")
	if _, err := os.Stat(simPub); err != nil {
		t.Fatalf("sim platform key not generated (run hack/build-guest.sh): %v", err)
	}
	dir := t.TempDir()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, _ := x509.MarshalPKIXPublicKey(pub)
	adminPub := filepath.Join(dir, "admin.pub")
	os.WriteFile(adminPub, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), 0o644)
	k := &kbsProcess{Dir: dir, Log: filepath.Join(dir, "kbs.log")}
	logf, err := os.Create(k.Log)
	if err != nil {
		t.Fatal(err)
	}
	args := []string{"--address", "127.0.0.1:0",
		"--resource-dir", filepath.Join(dir, "resources"), "--policy", filepath.Join(dir, "policy.json"),
		"--admin-public-key", adminPub, "--sim-platform-keys", simPub}
	if config != "" {
		p := filepath.Join(dir, "kbs.toml")
		if err := os.WriteFile(p, []byte(config), 0o644); err != nil {
			t.Fatal(err)
		}
		args = append(args, "--config", p)
	}
	scheme := "http://"
	var adminTLS *tls.Config
	if tc != nil {
		args = append(args, "--tls-cert", tc.CertFile, "--tls-key", tc.KeyFile)
		scheme, adminTLS = "https://", tc.Client
	}
	cmd := exec.Command(harness.Bin(t, "raksh-kbs"), args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
		logf.Close()
	})
	addrRe := regexp.MustCompile(`address="?(127\.0\.0\.1:[0-9]+)`)
	deadline := time.Now().Add(30 * time.Second)
	for k.URL == "" {
		b, _ := os.ReadFile(k.Log)
		if m := addrRe.FindSubmatch(b); m != nil {
			k.URL = scheme + string(m[1])
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("raksh-kbs did not come up:\n%s", b)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if k.Admin, err = client.NewAdmin(k.URL, priv, adminTLS); err != nil {
		t.Fatal(err)
	}
	return k
}

func (k *kbsProcess) setPolicy(t *testing.T, doc string) {
	t.Helper()
	if err := k.Admin.SetPolicy(context.Background(), []byte(doc)); err != nil {
		t.Fatalf("set policy: %v", err)
	}
}

func (k *kbsProcess) hostPort() string {
	return strings.TrimPrefix(strings.TrimPrefix(k.URL, "http://"), "https://")
}

// randomSecret returns a value that cannot occur anywhere by chance.
func randomSecret(t *testing.T, prefix string) string {
	b := make([]byte, 16)
	rand.Read(b)
	return prefix + hex.EncodeToString(b)
}

// filesContaining returns the regular files under dir holding needle.
func filesContaining(dir, needle string) []string {
	var hits []string
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return nil
		}
		if b, err := os.ReadFile(p); err == nil && bytes.Contains(b, []byte(needle)) {
			hits = append(hits, p)
		}
		return nil
	})
	return hits
}

// TestConfidentialSim runs a sealed container on the simulated TEE through
// containerd: the agent attests to a real raksh-kbs through the shim's
// proxy, gets the workload key, opens the envelope and runs the sealed
// process with the sealed env and file. The secrets reach the container and
// nothing on the host: not containerd's root or state (bundle config.json
// included), not its log (which carries the shim's), not the guest console
// log, not the broker's files or log. Then the refusals: an envelope bound to
// another container, one sealed to another key, a broker whose policy does
// not admit the simulated TEE.
func TestConfidentialSim(t *testing.T) {
	harness.RequiresRoot(t)
	ctx := context.Background()
	k := startKBS(t)
	h := startWithBusybox(t, harness.Options{
		RuntimeConfig: fmt.Sprintf("tee = \"sim\"\n[proxy]\nkbs = %q\n", k.hostPort()),
	})

	// The broker admits the sim TEE only with this guest's measurement.
	cfg, err := rakshruntime.LoadConfig(h.RuntimeConfigPath)
	if err != nil {
		t.Fatal(err)
	}
	m, err := rakshruntime.LaunchMeasurement(cfg)
	if err != nil {
		t.Fatal(err)
	}
	simPolicy := fmt.Sprintf(`{"rules":[{"resources":["default/workload/*"],"tee":["sim"],"measurements":[%q]}]}`, hex.EncodeToString(m))
	k.setPolicy(t, simPolicy)

	const kid = "kbs:///default/workload/sealed"
	key, err := envelope.GenerateKey(envelope.KeyP256)
	if err != nil {
		t.Fatal(err)
	}
	pemKey, _ := envelope.MarshalPrivateKey(key)
	if err := k.Admin.SetResource(ctx, "default/workload/sealed", pemKey); err != nil {
		t.Fatal(err)
	}

	envSecret, fileSecret := randomSecret(t, "env-"), randomSecret(t, "file-")
	seal := func(b envelope.Binding, r envelope.Recipient, args ...string) string {
		t.Helper()
		data, err := envelope.Seal(&envelope.Spec{
			Args:  args,
			Env:   []string{"SECRET=" + envSecret},
			Files: []envelope.File{{Path: "/run/secrets/token", Mode: 0o400, Content: []byte(fileSecret)}},
		}, b, r)
		if err != nil {
			t.Fatal(err)
		}
		return string(data)
	}
	// A container run with ctr has no CRI annotations: its envelope is bound
	// to {containerd namespace, container id, container id}.
	bind := func(id string) envelope.Binding {
		return envelope.Binding{Namespace: "default", Pod: id, Container: id}
	}
	recipient := envelope.Recipient{KeyID: kid, Key: key.Public()}
	run := func(id, env string, rm bool) (string, error) {
		ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
		defer cancel()
		args := []string{"run", "--runtime", rakshRuntime, "--annotation", envelope.ContainerAnnotation + "=" + env,
			"--env", "SECRET=" + envelope.Placeholder}
		if rm {
			args = append(args, "--rm")
		}
		return h.CtrContext(ctx, append(args, busyboxRef, id, envelope.Placeholder)...)
	}

	t.Run("sealed", func(t *testing.T) {
		const id = "raksh-sealed"
		env := seal(bind(id), recipient, "sh", "-c", `echo "SECRET=$SECRET"; echo "FILE=$(cat /run/secrets/token)"; stat -c %a /run/secrets/token; sleep 20`)
		type result struct {
			out string
			err error
		}
		done := make(chan result, 1)
		go func() {
			out, err := run(id, env, false)
			done <- result{out, err}
		}()
		// While the container runs, its bundle (config.json), the VM's state
		// and console log exist: none holds a secret.
		running := false
		for deadline := time.Now().Add(4 * time.Minute); !running && time.Now().Before(deadline); {
			select {
			case r := <-done:
				t.Fatalf("ctr run ended before the container was seen running: %v\n%s", r.err, r.out)
			case <-time.After(200 * time.Millisecond):
			}
			out, _ := h.Ctr("task", "ls")
			for _, l := range strings.Split(out, "\n") {
				if f := strings.Fields(l); len(f) >= 3 && f[0] == id && f[2] == "RUNNING" {
					running = true
				}
			}
		}
		if !running {
			t.Fatal("sealed container never ran")
		}
		bundles, _ := filepath.Glob(filepath.Join(h.Dir, "state", "*", "default", id, "config.json"))
		if len(bundles) != 1 {
			t.Fatalf("bundle config.json of %s not found under %s", id, h.Dir)
		}
		spec := readFile(t, bundles[0])
		if !strings.Contains(spec, `"SECRET=`+envelope.Placeholder+`"`) || !strings.Contains(spec, envelope.ContainerAnnotation) {
			t.Errorf("bundle config.json does not carry the placeholder and the envelope")
		}
		consoles, _ := filepath.Glob(filepath.Join(h.StateDir, "*", "*", "console.log"))
		if len(consoles) == 0 {
			t.Errorf("no guest console log under %s to check", h.StateDir)
		}
		for _, s := range []string{envSecret, fileSecret} {
			if hits := filesContaining(h.Dir, s); len(hits) > 0 {
				t.Errorf("a secret reached the host while the container ran: %v", hits)
			}
		}
		for _, c := range consoles {
			for _, l := range strings.Split(readFile(t, c), "\n") {
				if strings.Contains(l, "sealed container opened") {
					t.Logf("guest: %s", strings.TrimSpace(l))
				}
			}
		}

		// The node cannot exec into it to read the sealed env: the envelope
		// allows no exec.
		if out, err := h.Ctr("task", "exec", "--exec-id", "peek", id, "cat", "/proc/1/environ"); err == nil || !strings.Contains(err.Error(), "does not allow exec") {
			t.Errorf("exec into the sealed container: %v\n%s", err, out)
		}

		r := <-done
		if r.err != nil {
			t.Fatalf("ctr run: %v\n%s", r.err, r.out)
		}
		for _, want := range []string{"SECRET=" + envSecret, "FILE=" + fileSecret, "400"} {
			if !strings.Contains(r.out, want) {
				t.Errorf("the container did not print %q (the guest did not unseal)", strings.SplitN(want, "=", 2)[0])
			}
		}
		if _, err := h.Ctr("container", "rm", id); err != nil {
			t.Error(err)
		}
		// After the run: containerd's root, state and log (the shim logs
		// into it), the broker's store and log.
		for _, s := range []string{envSecret, fileSecret} {
			for _, dir := range []string{h.Dir, k.Dir} {
				if hits := filesContaining(dir, s); len(hits) > 0 {
					t.Errorf("a secret reached the host: %v", hits)
				}
			}
		}
	})

	t.Run("logs not allowed", func(t *testing.T) {
		// An envelope sealing a policy without allow_logs: the container
		// runs, its output never leaves the guest.
		const id = "raksh-quiet"
		data, err := envelope.Seal(&envelope.Spec{
			Args:  []string{"sh", "-c", `echo "SECRET=$SECRET"; cat /run/secrets/token; echo done >&2`},
			Env:   []string{"SECRET=" + envSecret},
			Files: []envelope.File{{Path: "/run/secrets/token", Content: []byte(fileSecret)}},
			Exec:  &envelope.ExecPolicy{},
		}, bind(id), recipient)
		if err != nil {
			t.Fatal(err)
		}
		out, err := run(id, string(data), true)
		if err != nil {
			t.Fatalf("ctr run: %v", err)
		}
		if strings.TrimSpace(out) != "" {
			t.Fatalf("output of a container whose envelope allows no logs reached the node: %d bytes", len(out))
		}
	})

	refused := func(t *testing.T, id, env, want string) {
		t.Helper()
		out, err := run(id, env, true)
		if err == nil {
			t.Fatalf("sealed container ran: %s", out)
		}
		if !strings.Contains(err.Error(), want) {
			t.Fatalf("error %v, want one saying %q", err, want)
		}
		if _, msg, ok := strings.Cut(err.Error(), "ctr: "); ok {
			t.Logf("refused: %s", msg)
		}
		if strings.Contains(err.Error()+out, envSecret) || strings.Contains(err.Error()+out, fileSecret) {
			t.Fatal("a secret leaked into the error")
		}
	}
	t.Run("bound to another container", func(t *testing.T) {
		refused(t, "raksh-moved", seal(bind("raksh-sealed"), recipient, "sh", "-c", "echo $SECRET"), "envelope bound to another container")
	})
	t.Run("wrong key", func(t *testing.T) {
		other, _ := envelope.GenerateKey(envelope.KeyP256)
		refused(t, "raksh-wrongkey", seal(bind("raksh-wrongkey"), envelope.Recipient{KeyID: kid, Key: other.Public()}, "sh", "-c", "echo $SECRET"),
			"envelope decryption failed")
	})
	t.Run("policy refuses sim", func(t *testing.T) {
		k.setPolicy(t, `{"rules":[{"resources":["default/workload/*"],"tee":["snp"]}]}`)
		defer k.setPolicy(t, simPolicy)
		refused(t, "raksh-nosim", seal(bind("raksh-nosim"), recipient, "sh", "-c", "echo $SECRET"), "SimTeeNotAllowed")
	})
	t.Run("other measurement", func(t *testing.T) {
		k.setPolicy(t, `{"rules":[{"resources":["default/workload/*"],"tee":["sim"],"measurements":["`+strings.Repeat("ab", 48)+`"]}]}`)
		defer k.setPolicy(t, simPolicy)
		refused(t, "raksh-otherm", seal(bind("raksh-otherm"), recipient, "sh", "-c", "echo $SECRET"), "PolicyDeny")
	})
}

// TestConfidentialNoTEE refuses a sealed container on a runtime launched
// without a TEE, before any key is asked for.
func TestConfidentialNoTEE(t *testing.T) {
	h := startWithBusybox(t, harness.Options{RuntimeConfig: "[proxy]\nkbs = \"127.0.0.1:9\"\n"})
	key, _ := envelope.GenerateKey(envelope.KeyP256)
	data, err := envelope.Seal(&envelope.Spec{Args: []string{"true"}}, envelope.Binding{Namespace: "default", Pod: "notee", Container: "notee"},
		envelope.Recipient{KeyID: "kbs:///default/workload/k", Key: key.Public()})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	out, err := h.CtrContext(ctx, "run", "--rm", "--runtime", rakshRuntime, "--annotation", envelope.ContainerAnnotation+"="+string(data),
		busyboxRef, "notee", envelope.Placeholder)
	if err == nil || !strings.Contains(err.Error(), "launched without one") {
		t.Fatalf("sealed container without a TEE: %v\n%s", err, out)
	}
}
