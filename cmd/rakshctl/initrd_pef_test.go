package main

import (
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha512"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/raksh-project/raksh/runtime/launch"
	"github.com/raksh-project/raksh/tee/pef"
)

// TestInitrdSealForPEF seals an initrd with `initrd build --seal-for pef`
// and opens it with the simulated ultravisor the way the shim does for the
// same runtime config: the sealed file and the attestation key come out,
// the key matches the public half written for the verifier, and the JSON
// names the command line. Another runtime config's command line opens
// nothing. Bad flag combinations are refused with their reason.
func TestInitrdSealForPEF(t *testing.T) {
	dir := t.TempDir()
	agent, runc := filepath.Join(dir, "agent"), filepath.Join(dir, "runc")
	os.WriteFile(agent, []byte("#!/bin/true\n"), 0o755)
	os.WriteFile(runc, []byte("#!/bin/true\n"), 0o755)
	kernel := filepath.Join(dir, "vmlinuz")
	os.WriteFile(kernel, []byte("a kernel"), 0o644)
	initData := filepath.Join(dir, "init-data.json")
	os.WriteFile(initData, []byte(`{"version":"raksh.initdata/v1","policy":{"deny_exec":true}}`), 0o644)
	uvKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	der, _ := x509.MarshalPKIXPublicKey(&uvKey.PublicKey)
	uvPub := filepath.Join(dir, "uv.pub")
	os.WriteFile(uvPub, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), 0o644)
	out := filepath.Join(dir, "initrd.pef")
	rtc := filepath.Join(dir, "runtime.toml")
	os.WriteFile(rtc, []byte(fmt.Sprintf("kernel = %q\ntransport = \"serial\"\ntee = \"pef\"\ninit_data = %q\n[pef]\nsealed_initrd = %q\nsimulated_ultravisor_key = \"/unused\"\n", kernel, initData, out)), 0o644)
	secret := filepath.Join(dir, "app.secret")
	os.WriteFile(secret, []byte("s3cret"), 0o600)
	attestPub := filepath.Join(dir, "attest.pub")
	wkey, wpub := filepath.Join(dir, "w.key"), filepath.Join(dir, "w.pub")
	run(t, "", "keys", "generate", "--private", wkey, "--public", wpub)

	args := []string{"initrd", "build", "--agent", agent, "--runc", runc, "--out", out,
		"--seal-for", "pef", "--wrapping-key", uvPub, "--runtime-config", rtc,
		"--seal-file", "app.secret=" + secret, "--seal-resource", "default/local/key=" + wkey, "--attestation-public-key", attestPub}
	stdout, progress, err := runErr(t, append(args, "-o", "json")...)
	if err != nil {
		t.Fatal(err)
	}
	var res struct {
		Out, Cmdline, Kernel, SealedFor string
		SealedFiles                     []string `json:"sealed_files"`
		SealedResources                 []string `json:"sealed_resources"`
		AttestationKeyID                string   `json:"attestation_key_id"`
	}
	if err := json.Unmarshal([]byte(stdout), &res); err != nil {
		t.Fatalf("%v: %s", err, stdout)
	}
	cfg, err := launch.LoadConfig(rtc)
	if err != nil {
		t.Fatal(err)
	}
	_, cmdline, err := launch.PEFSealTarget(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if res.Out != out || res.Cmdline != cmdline || res.Kernel != kernel || len(res.SealedFiles) != 3 || strings.Join(res.SealedResources, ",") != "default/local/key" {
		t.Fatalf("json: %s", stdout)
	}
	if !strings.Contains(progress, "initrd: sealing for pef") || strings.Contains(progress+stdout, "s3cret") {
		t.Fatalf("progress: %q", progress)
	}

	sealed, _ := os.ReadFile(out)
	uv := pef.NewSimUltravisor(uvKey)
	files, err := uv.EnterSecureMode(pef.BootParams{Kernel: []byte("a kernel"), Initrd: sealed, Cmdline: cmdline})
	if err != nil {
		t.Fatal(err)
	}
	wantKey, _ := os.ReadFile(wkey)
	if string(files["app.secret"]) != "s3cret" || string(files[pef.ResourceFileName("default/local/key")]) != string(wantKey) {
		t.Fatalf("released files: %v", len(files))
	}
	ak, err := pef.ParseAttestationKey(files[pef.AttestationKeyFile])
	if err != nil {
		t.Fatal(err)
	}
	pb, _ := os.ReadFile(attestPub)
	blk, _ := pem.Decode(pb)
	pk, err := x509.ParsePKIXPublicKey(blk.Bytes)
	if err != nil || !pk.(*ecdsa.PublicKey).Equal(&ak.PublicKey) {
		t.Fatalf("the attestation public key does not match the sealed key: %v", err)
	}
	if id := sha512.Sum384(blk.Bytes); res.AttestationKeyID != hex.EncodeToString(id[:]) {
		t.Fatalf("attestation key id %s", res.AttestationKeyID)
	}
	if _, err := uv.EnterSecureMode(pef.BootParams{Kernel: []byte("a kernel"), Initrd: sealed, Cmdline: strings.Replace(cmdline, "raksh.init_data=", "raksh.init_data=0", 1)}); !errors.Is(err, pef.ErrIntegrity) {
		t.Fatalf("another command line: %v", err)
	}
	// Text output: the success line, then what was sealed.
	stdout, _, err = runErr(t, args...)
	if err != nil || !strings.HasPrefix(stdout, "wrote "+out) || !strings.Contains(stdout, "sealed for pef") {
		t.Fatalf("text: %v %q", err, stdout)
	}

	for name, tc := range map[string]struct {
		args []string
		want string
	}{
		"seal-file without seal-for": {[]string{"--seal-file", "a=" + secret}, "--seal-file needs --seal-for pef"},
		"another tee":                {[]string{"--seal-for", "tdx"}, "only pef"},
		"no wrapping key":            {[]string{"--seal-for", "pef", "--seal-file", "a=" + secret}, "needs --wrapping-key"},
		"private key as wrapping key": {[]string{"--seal-for", "pef", "--wrapping-key", secret, "--runtime-config", rtc,
			"--seal-file", "a=" + secret}, "not PEM"},
		"resource not a key":     {[]string{"--seal-for", "pef", "--wrapping-key", uvPub, "--runtime-config", rtc, "--seal-resource", "default/local/key=" + secret}, "not a workload private key"},
		"bad resource path":      {[]string{"--seal-for", "pef", "--wrapping-key", uvPub, "--runtime-config", rtc, "--seal-resource", "default/key=" + wkey}, "repo>/<type>/<tag>"},
		"nothing to seal":        {[]string{"--seal-for", "pef", "--wrapping-key", uvPub, "--runtime-config", rtc}, "seals nothing"},
		"attestation key name":   {[]string{"--seal-for", "pef", "--wrapping-key", uvPub, "--runtime-config", rtc, "--seal-file", "raksh-attest.key=" + secret}, "attestation key's"},
		"runtime config not pef": {[]string{"--seal-for", "pef", "--wrapping-key", uvPub, "--runtime-config", writeTOML(t, "tee = \"sim\"\n"), "--seal-file", "a=" + secret}, `tee = "sim"`},
	} {
		t.Run(name, func(t *testing.T) {
			_, _, err := runErr(t, append([]string{"initrd", "build", "--agent", agent, "--runc", runc, "--out", filepath.Join(t.TempDir(), "x")}, tc.args...)...)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one saying %q", err, tc.want)
			}
		})
	}
}

func writeTOML(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "runtime.toml")
	os.WriteFile(p, []byte(body), 0o644)
	return p
}
