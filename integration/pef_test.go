//go:build integration

package integration

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/u-root/u-root/pkg/dt"

	"github.com/raksh-project/raksh/envelope"
	"github.com/raksh-project/raksh/integration/harness"
	"github.com/raksh-project/raksh/tee/initdata"
	"github.com/raksh-project/raksh/tee/pef"
)

// TestPEFSim runs Raksh's PEF path end to end on the simulated ultravisor
// through containerd: rakshctl seals the guest initrd for the node's
// runtime config (tee = "pef", [pef] simulated_ultravisor_key, the node's
// init data naming a TLS broker) with a sealed file and an attestation key;
// the shim unwraps the ESM blob as the ultravisor does at UV_ESM and boots
// the released files into /raksh/pef; the agent checks the init data
// against the sealed command line, attests as PEF with the released key to
// a raksh-kbs whose verifier lists that key as simulated and whose policy
// allows insecure claims for it (and pins the key and the init data), gets
// the workload key and runs the sealed container. The sealed file is not on
// the node's disk. Without any broker reachable, an envelope naming a
// workload key sealed into the initrd (--seal-resource) opens, one naming
// another key does not. Refusals: a policy without allow_insecure, a verifier
// trusting the key for hardware, the node's init data changed after
// sealing (one byte: the command line no longer matches) and a sealed
// initrd with one byte of its ESM blob flipped (no VM starts for these
// two).
func TestPEFSim(t *testing.T) {
	harness.RequiresRoot(t)
	ctx := context.Background()
	dir := t.TempDir()
	rakshctl := harness.Bin(t, "rakshctl")
	rakshctlRun := func(args ...string) string {
		t.Helper()
		cmd := exec.Command(rakshctl, args...)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("rakshctl %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
		}
		return string(out)
	}

	// The simulated platform's wrapping key pair.
	uvKey, uvPub := filepath.Join(dir, "uv.key"), filepath.Join(dir, "uv.pub")
	rakshctlRun("keys", "generate", "--alg", envelope.KeyRSA3072, "--private", uvKey, "--public", uvPub)

	// The node's init data: the broker and its CA.
	const brokerHost = "kbs.raksh.test"
	ca := newTestCA(t, "raksh test broker CA")
	brokerTLS := ca.serve(t, brokerHost)
	doc, err := json.Marshal(map[string]any{
		"version": initdata.Version,
		"kbs":     map[string]string{"url": "https://" + brokerHost, "ca": ca.pem},
	})
	if err != nil {
		t.Fatal(err)
	}
	initDataFile := filepath.Join(dir, "init-data.json")
	os.WriteFile(initDataFile, doc, 0o644)
	digest := hex.EncodeToString(initdata.Digest(doc))

	sealedInitrd := filepath.Join(dir, "initrd.pef")
	pefConfig := fmt.Sprintf("tee = \"pef\"\ninit_data = %q\n[pef]\nsealed_initrd = %q\nsimulated_ultravisor_key = %q\n", initDataFile, sealedInitrd, uvKey)
	h := startWithBusybox(t, harness.Options{RuntimeConfig: pefConfig})

	// Seal: the guest initrd (agent, runc, modules; no sim platform key,
	// so the guest can only attest with what the ultravisor releases).
	appSecret := randomSecret(t, "pef-file-")
	secretFile := filepath.Join(dir, "app.secret")
	os.WriteFile(secretFile, []byte(appSecret), 0o600)
	attestPub := filepath.Join(dir, "attest.pub")
	// A workload key sealed into the initrd: envelopes naming it open
	// without a broker.
	localKey, err := envelope.GenerateKey(envelope.KeyP384)
	if err != nil {
		t.Fatal(err)
	}
	localPEM, _ := envelope.MarshalPrivateKey(localKey)
	localKeyFile := filepath.Join(dir, "local.key")
	os.WriteFile(localKeyFile, localPEM, 0o600)
	start := time.Now()
	var sealed struct {
		Cmdline          string `json:"cmdline"`
		AttestationKeyID string `json:"attestation_key_id"`
	}
	out := rakshctlRun("initrd", "build", "--agent", filepath.Join(harness.Output(), "bin", "raksh-agent"),
		"--runc", harness.Bin(t, "runc"), "--modules-dir", filepath.Join(harness.Output(), "deps", "kernel", "modules"),
		"--out", sealedInitrd, "--seal-for", "pef", "--wrapping-key", uvPub, "--runtime-config", h.RuntimeConfigPath,
		"--seal-file", "app.secret="+secretFile, "--seal-resource", "default/local/key="+localKeyFile,
		"--attestation-public-key", attestPub, "-o", "json")
	if err := json.Unmarshal([]byte(out), &sealed); err != nil || !strings.Contains(sealed.Cmdline, "raksh.init_data="+digest) {
		t.Fatalf("rakshctl initrd build --seal-for pef: %v\n%s", err, out)
	}
	t.Logf("sealed the initrd in %s for %q", time.Since(start).Round(100*time.Millisecond), sealed.Cmdline)

	// The broker: its PEF verifier lists the key as sealed for the
	// simulated ultravisor; its policy allows insecure PEF claims of that
	// key with the node's init data.
	k := startKBSConfig(t, brokerTLS, fmt.Sprintf("[pef]\nsimulated_keys = [%q]\n", attestPub))
	hwKBS := startKBSConfig(t, brokerTLS, fmt.Sprintf("[pef]\ntrusted_keys = [%q]\n", attestPub))
	baseConfig := readFile(t, h.RuntimeConfigPath)
	setConfig := func(t *testing.T, cfg string) {
		t.Helper()
		if err := os.WriteFile(h.RuntimeConfigPath, []byte(cfg), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	proxied := func(kp *kbsProcess) string {
		return baseConfig + fmt.Sprintf("[proxy]\nkbs = %q\n", kp.hostPort())
	}
	policy := func(insecure bool) string {
		return fmt.Sprintf(`{"rules":[{"resources":["default/workload/*"],"tee":["pef"],"allow_insecure":%v,"measurements":[%q],"init_data_digests":[%q]}]}`,
			insecure, sealed.AttestationKeyID, digest)
	}
	key, err := envelope.GenerateKey(envelope.KeyP256)
	if err != nil {
		t.Fatal(err)
	}
	pemKey, _ := envelope.MarshalPrivateKey(key)
	for _, kp := range []*kbsProcess{k, hwKBS} {
		kp.setPolicy(t, policy(true))
		if err := kp.Admin.SetResource(ctx, "default/workload/pef", pemKey); err != nil {
			t.Fatal(err)
		}
	}

	secret := randomSecret(t, "pef-env-")
	runWith := func(t *testing.T, id string, r envelope.Recipient) (string, error) {
		t.Helper()
		env, err := envelope.Seal(&envelope.Spec{
			Args: []string{"sh", "-c", `echo "SECRET=$SECRET"`},
			Env:  []string{"SECRET=" + secret},
		}, envelope.Binding{Namespace: "default", Pod: id, Container: id}, r)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(ctx, 4*time.Minute)
		defer cancel()
		return h.CtrContext(ctx, "run", "--rm", "--runtime", rakshRuntime,
			"--annotation", envelope.ContainerAnnotation+"="+string(env),
			"--env", "SECRET="+envelope.Placeholder, busyboxRef, id, envelope.Placeholder)
	}
	run := func(t *testing.T, id string) (string, error) {
		return runWith(t, id, envelope.Recipient{KeyID: "kbs:///default/workload/pef", Key: key.Public()})
	}
	refused := func(t *testing.T, id, want string) {
		t.Helper()
		start := time.Now()
		out, err := run(t, id)
		assertRefused(t, start, out, err, want, secret)
	}

	t.Run("sealed container on the simulated ultravisor", func(t *testing.T) {
		setConfig(t, proxied(k))
		start := time.Now()
		out, err := run(t, "raksh-pef")
		if err != nil {
			t.Fatalf("ctr run: %v\n%s", err, out)
		}
		if !strings.Contains(out, "SECRET="+secret) {
			t.Fatalf("the sealed container did not get its secret:\n%s", out)
		}
		t.Logf("sealed container ran on PEF (simulated ultravisor) in %s", time.Since(start).Round(100*time.Millisecond))
		log := readFile(t, k.Log)
		if !strings.Contains(log, "kbs attestation succeeded") || !strings.Contains(log, "tee=pef") || !strings.Contains(log, "insecure=true") {
			t.Fatalf("the broker did not see an insecure PEF attestation:\n%s", log)
		}
		// The released file went to the guest only: not on the node's
		// disk (containerd's root and state, the shim's VM directories
		// with their console logs, the broker's files).
		for _, d := range []string{h.Dir, k.Dir} {
			if hits := filesContaining(d, appSecret); len(hits) > 0 {
				t.Fatalf("the sealed file is on the node's disk: %v", hits)
			}
		}
	})
	t.Run("workload key sealed into the initrd, no broker", func(t *testing.T) {
		// No [proxy] kbs: the guest cannot reach any broker; the key
		// comes from the files the (simulated) ultravisor released.
		setConfig(t, baseConfig)
		start := time.Now()
		out, err := runWith(t, "raksh-pef-local", envelope.Recipient{KeyID: "kbs:///default/local/key", Key: localKey.Public()})
		if err != nil {
			t.Fatalf("ctr run: %v\n%s", err, out)
		}
		if !strings.Contains(out, "SECRET="+secret) {
			t.Fatalf("the sealed container did not get its secret:\n%s", out)
		}
		t.Logf("sealed container ran with its key from the sealed initrd in %s", time.Since(start).Round(100*time.Millisecond))
		// A key that was not sealed needs the broker, and there is none.
		refused(t, "raksh-pef-local-nobroker", "failed to get key kbs:///default/workload/pef")
	})
	t.Run("policy without allow_insecure", func(t *testing.T) {
		k.setPolicy(t, policy(false))
		defer k.setPolicy(t, policy(true))
		setConfig(t, proxied(k))
		refused(t, "raksh-pef-secure-only", "insecure (simulated) TEE claims not allowed")
	})
	t.Run("verifier trusting the key for hardware", func(t *testing.T) {
		setConfig(t, proxied(hwKBS))
		refused(t, "raksh-pef-hw-key", "simulated (insecure) ultravisor")
	})
	t.Run("node init data changed after sealing", func(t *testing.T) {
		// The same document with one byte changed: the command line the
		// shim renders binds its digest, which is not the sealed one.
		other := filepath.Join(dir, "init-data-other.json")
		os.WriteFile(other, bytes.Replace(doc, []byte(`"version"`), []byte(`"Version"`), 1), 0o644)
		setConfig(t, strings.Replace(proxied(k), initDataFile, other, 1))
		refused(t, "raksh-pef-other-initdata", "bootargs digest mismatch")
		if n := len(h.QEMUProcesses()); n != 0 {
			t.Fatalf("%d QEMU processes after a refused launch", n)
		}
	})
	t.Run("tampered sealed initrd", func(t *testing.T) {
		b, err := os.ReadFile(sealedInitrd)
		if err != nil {
			t.Fatal(err)
		}
		// A byte of the sealed digests (/digest/digests-fdt ciphertext,
		// which AES-GCM authenticates).
		blob, _, err := pef.FindESMBlob(b)
		if err != nil {
			t.Fatal(err)
		}
		f, err := dt.ReadFDT(bytes.NewReader(blob))
		if err != nil {
			t.Fatal(err)
		}
		d, _ := f.RootNode.LookupChildByName("digest")
		n, _ := d.LookupChildByName("digests-fdt")
		ct, ok := n.LookProperty("ciphertext")
		if !ok {
			t.Fatal("no sealed digests in the ESM blob")
		}
		b[bytes.Index(b, ct.Value)+len(ct.Value)/2] ^= 0x01
		tampered := filepath.Join(dir, "initrd-tampered.pef")
		if err := os.WriteFile(tampered, b, 0o644); err != nil {
			t.Fatal(err)
		}
		setConfig(t, strings.Replace(proxied(k), sealedInitrd, tampered, 1))
		refused(t, "raksh-pef-tampered", "the simulated ultravisor refused to boot [pef] sealed_initrd "+tampered)
		refused(t, "raksh-pef-tampered-again", "digests-fdt: pef: ESM integrity check failed")
		if n := len(h.QEMUProcesses()); n != 0 {
			t.Fatalf("%d QEMU processes after a refused launch", n)
		}
	})
}
