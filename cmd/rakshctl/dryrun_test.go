package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const dryRunPod = `apiVersion: v1
kind: Pod
metadata:
  name: web
spec:
  containers:
  - name: app
    image: app:1
    command: ["/app", "--password=topsecret"]
    env:
    - {name: API_KEY, value: key-value-123}
    - name: DB
      valueFrom: {secretKeyRef: {name: db, key: pw}}
`

// TestSealDryRun: --dry-run predicts what the node sees (sealed fields as
// placeholders, kubelet-resolved env in clear), what the agent refuses and
// what the broker's policy decides, without printing a value or a manifest.
func TestSealDryRun(t *testing.T) {
	dir := t.TempDir()
	priv, pub := filepath.Join(dir, "w.key"), filepath.Join(dir, "w.pub")
	if _, err := run(t, "", "keys", "generate", "--alg", "ec-p256", "--private", priv, "--public", pub); err != nil {
		t.Fatal(err)
	}
	pol := filepath.Join(dir, "policy.json")
	meas := strings.Repeat("cd", 48)
	os.WriteFile(pol, []byte(`{"rules":[{"resources":["default/workload/*"],"tee":["sim"],"measurements":["`+meas+`"]}]}`), 0o600)
	args := []string{"seal", "-f", "-", "--recipient", pub, "--kid", "kbs:///default/workload/web", "--dry-run", "--broker-policy", pol, "--tee", "sim"}

	text, err := run(t, dryRunPod, append(args, "--measurement", meas)...)
	if err != nil {
		t.Fatal(err)
	}
	for _, secret := range []string{"topsecret", "key-value-123", "apiVersion", "protected"} {
		if strings.Contains(text, secret) {
			t.Fatalf("dry run prints %q:\n%s", secret, text)
		}
	}
	for _, want := range []string{
		"~ command+args", "raksh-sealed", "~ env API_KEY", "! env DB", "resolved by the kubelet",
		"agent refuses: exec into the container", "agent refuses: the envelope in any container but default/web/app",
		"broker: releases default/workload/web to sim",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("dry run lacks %q:\n%s", want, text)
		}
	}

	// Another measurement: the broker refuses, naming the policy's reason.
	js, err := run(t, dryRunPod, append(args, "--measurement", strings.Repeat("ab", 48), "--allow-exec", "--allow-logs=false", "-o", "json")...)
	if err != nil {
		t.Fatal(err)
	}
	var res dryRunResult
	if err := json.Unmarshal([]byte(js), &res); err != nil || len(res.Containers) != 1 || res.Broker == nil {
		t.Fatalf("json %v: %s", err, js)
	}
	if res.Broker.Released || !strings.Contains(res.Broker.Reason, "launch measurement not allowed") {
		t.Fatalf("broker decision %+v", res.Broker)
	}
	c := res.Containers[0]
	if len(c.Refused) != 2 || !strings.Contains(c.Refused[0], "container output") {
		t.Fatalf("agent refusals with --allow-exec --allow-logs=false: %q", c.Refused)
	}
	fields := map[string]dryRunField{}
	for _, f := range c.Fields {
		fields[f.Field] = f
	}
	if f := fields["env API_KEY"]; f.Before != "value" || f.After != "placeholder" || f.Note != "sealed" {
		t.Fatalf("env API_KEY %+v", f)
	}
	if f := fields["runtimeClassName"]; f.After != "raksh" {
		t.Fatalf("runtimeClassName %+v", f)
	}

	// The sim TEE is refused by a policy that does not list it.
	os.WriteFile(pol, []byte(`{"rules":[{"resources":["default/workload/*"],"tee":["snp"]}]}`), 0o600)
	if text, err := run(t, dryRunPod, args...); err != nil || !strings.Contains(text, "broker: REFUSES default/workload/web to sim") {
		t.Fatalf("sim refused: %v\n%s", err, text)
	}
	// Bad input.
	if _, err := run(t, dryRunPod, "seal", "-f", "-", "--recipient", pub, "--kid", "kbs:///default/workload/web", "--dry-run", "--broker-policy", pol); err == nil {
		t.Fatal("--broker-policy without --tee accepted")
	}
}
