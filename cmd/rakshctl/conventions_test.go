package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/urfave/cli/v2"
)

// runErr is run that also returns what went to stderr.
func runErr(t *testing.T, args ...string) (string, string, error) {
	t.Helper()
	app := newApp()
	var out, errOut bytes.Buffer
	app.Writer, app.ErrWriter, app.Reader = &out, &errOut, strings.NewReader("")
	app.ExitErrHandler = func(*cli.Context, error) {}
	err := app.RunContext(context.Background(), append([]string{"rakshctl"}, args...))
	return out.String(), errOut.String(), err
}

// TestConventions: --version; -o is a format everywhere and files go to
// --out; commands that print data have -o json; silent commands say what
// they did; initrd build reports progress.
func TestConventions(t *testing.T) {
	out, _, err := runErr(t, "--version")
	if err != nil || !strings.HasPrefix(out, "rakshctl version ") {
		t.Fatalf("--version: %v %q", err, out)
	}

	// Every -o/--output flag is a format, never a file.
	var walk func(prefix string, cmds []*cli.Command)
	walk = func(prefix string, cmds []*cli.Command) {
		for _, c := range cmds {
			for _, f := range c.Flags {
				sf, ok := f.(*cli.StringFlag)
				if ok && sf.Name == "output" && !strings.HasPrefix(sf.Usage, "output format") {
					t.Errorf("%s %s: --output is not a format: %q", prefix, c.Name, sf.Usage)
				}
			}
			walk(prefix+" "+c.Name, c.Subcommands)
		}
	}
	walk("rakshctl", newApp().Commands)

	dir := t.TempDir()
	agent, runc := filepath.Join(dir, "agent"), filepath.Join(dir, "runc")
	os.WriteFile(agent, []byte("#!/bin/true\n"), 0o755)
	os.WriteFile(runc, []byte("#!/bin/true\n"), 0o755)
	img := filepath.Join(dir, "initrd.img")
	out, progress, err := runErr(t, "initrd", "build", "--agent", agent, "--runc", runc, "--out", img, "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	var res map[string]any
	if err := json.Unmarshal([]byte(out), &res); err != nil || res["out"] != img || res["bytes"].(float64) <= 0 {
		t.Fatalf("initrd json %v: %s", err, out)
	}
	if !strings.Contains(progress, "initrd: /init from "+agent) || !strings.Contains(progress, "writing the cpio archive") {
		t.Fatalf("initrd progress: %q", progress)
	}
	if out, _, err := runErr(t, "initrd", "build", "--agent", agent, "--runc", runc, "--out", img); err != nil || !strings.HasPrefix(out, "wrote "+img) {
		t.Fatalf("initrd text: %v %q", err, out)
	}

	// tee measure -o json.
	kernel := filepath.Join(dir, "vmlinuz")
	os.WriteFile(kernel, []byte("kernel"), 0o644)
	cfg := filepath.Join(dir, "runtime.toml")
	os.WriteFile(cfg, []byte(fmt.Sprintf("kernel = %q\ninitrd = %q\ntransport = \"serial\"\ntee = \"sim\"\n", kernel, img)), 0o644)
	out, _, err = runErr(t, "tee", "measure", "--runtime-config", cfg, "-o", "json")
	var m map[string]string
	if err != nil || json.Unmarshal([]byte(out), &m) != nil || m["tee"] != "sim" || len(m["measurement"]) != 96 {
		t.Fatalf("tee measure json: %v %s", err, out)
	}

	// kbs: resource set -o json, policy set says what it did.
	url, adminKey, _, _ := testBroker(t)
	wkey := filepath.Join(dir, "w.key")
	run(t, "", "keys", "generate", "--private", wkey, "--public", filepath.Join(dir, "w.pub"))
	out, _, err = runErr(t, "kbs", "resource", "set", "--file", wkey, "--url", url, "--admin-key", adminKey, "-o", "json", "default/workload/x")
	if err != nil || json.Unmarshal([]byte(out), &res) != nil || res["kid"] != "kbs:///default/workload/x" {
		t.Fatalf("resource set json: %v %s", err, out)
	}
	pol := filepath.Join(dir, "policy.json")
	os.WriteFile(pol, []byte(`{"rules":[{"resources":["default/workload/*"],"tee":["snp"]}]}`), 0o600)
	if out, _, err := runErr(t, "kbs", "policy", "set", "--file", pol, "--url", url, "--admin-key", adminKey); err != nil || out != "policy set: 1 rule(s)\n" {
		t.Fatalf("policy set: %v %q", err, out)
	}

	// seal --out: the data goes to the file, a success line to stderr.
	pub := filepath.Join(dir, "w.pub")
	sealed := filepath.Join(dir, "sealed.yaml")
	app := newApp()
	var so, se bytes.Buffer
	app.Writer, app.ErrWriter, app.Reader = &so, &se, strings.NewReader(podYAML)
	if err := app.Run([]string{"rakshctl", "seal", "-f", "-", "--recipient", pub, "--kid", "kbs:///default/workload/web", "--out", sealed}); err != nil {
		t.Fatal(err)
	}
	if so.Len() != 0 || !strings.HasPrefix(se.String(), "wrote "+sealed) {
		t.Fatalf("seal --out: stdout %q stderr %q", so.String(), se.String())
	}
}
