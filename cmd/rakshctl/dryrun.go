package main

import (
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path"
	"slices"
	"strings"
	"text/tabwriter"

	"github.com/containerd/errdefs"
	"github.com/urfave/cli/v2"

	"github.com/raksh-project/raksh/envelope"
	"github.com/raksh-project/raksh/envelope/kube"
	"github.com/raksh-project/raksh/kbs"
	"github.com/raksh-project/raksh/tee"
)

// dryRunFlags are seal's flags for --dry-run.
var dryRunFlags = []cli.Flag{
	&cli.BoolFlag{Name: "dry-run", Usage: "print what the node will see and what the agent's and broker's policies will refuse, instead of the sealed manifest"},
	&cli.StringFlag{Name: "broker-policy", Usage: "with --dry-run: the broker's resource policy (JSON, as for kbs policy set) to check the key release against"},
	&cli.StringFlag{Name: "tee", Usage: "with --broker-policy: the TEE type the pods will run on (snp, tdx, sim, ...)"},
	&cli.StringFlag{Name: "measurement", Usage: "with --broker-policy: the launch measurement (hex, rakshctl tee measure)"},
}

// dryRunField is one line of the diff: a field before and after sealing.
type dryRunField struct {
	Field  string `json:"field"`
	Before string `json:"before"`
	After  string `json:"nodeSees"`
	Note   string `json:"note,omitempty"`
}

// dryRunContainer is the prediction for one container.
type dryRunContainer struct {
	Kind      string        `json:"kind"`
	Name      string        `json:"name"`
	Container string        `json:"container"`
	Fields    []dryRunField `json:"fields"`
	// Refused lists what the guest agent will refuse the node.
	Refused []string `json:"agentRefuses"`
	// Warnings are items the node still holds in clear.
	Warnings []string `json:"warnings,omitempty"`
}

// dryRunResult is the whole prediction (-o json).
type dryRunResult struct {
	Containers []dryRunContainer `json:"containers"`
	// Broker is the broker's decision for the workload key, when a policy was given.
	Broker *brokerDecision `json:"broker,omitempty"`
}

type brokerDecision struct {
	Resource    string `json:"resource"`
	TEE         string `json:"tee"`
	Measurement string `json:"measurement,omitempty"`
	Released    bool   `json:"released"`
	Reason      string `json:"reason,omitempty"`
}

// describeArgs says what a command line is without its values.
func describeArgs(cmd, args []string) string {
	all := slices.Concat(cmd, args)
	switch {
	case len(all) == 0:
		return "- (image default)"
	case len(all) == 1 && all[0] == envelope.Placeholder:
		return envelope.Placeholder
	}
	return fmt.Sprintf("%d word(s), %s ...", len(all), path.Base(all[0]))
}

// sealDryRun predicts, without printing a value, what sealing in changes.
func sealDryRun(c *cli.Context, in, sealed []byte, format string) error {
	before, err := kube.Inspect(in, nil)
	if err != nil {
		return err
	}
	after, err := kube.Inspect(sealed, nil)
	if err != nil {
		return err
	}
	if len(before) != len(after) {
		return fmt.Errorf("sealing changed the number of containers (%d to %d): %w", len(before), len(after), errdefs.ErrInternal)
	}
	res := dryRunResult{Containers: []dryRunContainer{}}
	for i, b := range before {
		a := after[i]
		dc := dryRunContainer{Kind: a.Kind, Name: a.Name, Container: a.Container, Warnings: a.Warnings, Refused: []string{}}
		var m envelope.Manifest
		if a.Sealed != nil {
			m = a.Sealed.Manifest
		}
		add := func(field, bv, av, note string) {
			dc.Fields = append(dc.Fields, dryRunField{Field: field, Before: bv, After: av, Note: note})
		}
		add("runtimeClassName", orDash(b.NodeSees.RuntimeClass), orDash(a.NodeSees.RuntimeClass), "")
		note := "visible"
		if m.Image {
			note = "sealed: the guest checks the reference and digest"
		}
		add("image", b.NodeSees.Image, a.NodeSees.Image, note)
		note = "visible"
		if m.Args {
			note = "sealed"
		}
		add("command+args", describeArgs(b.NodeSees.Command, b.NodeSees.Args), describeArgs(a.NodeSees.Command, a.NodeSees.Args), note)
		note = "visible"
		if m.Cwd {
			note = "sealed"
		}
		if b.NodeSees.WorkingDir != "" || m.Cwd {
			add("workingDir", orDash(b.NodeSees.WorkingDir), orDash(a.NodeSees.WorkingDir), note)
		}
		afterEnv := map[string]string{}
		for _, e := range a.NodeSees.Env {
			afterEnv[e.Name] = e.Source
		}
		for _, e := range b.NodeSees.Env {
			src := e.Source
			if src == "literal" {
				src = "value"
			}
			av := afterEnv[e.Name]
			switch {
			case slices.Contains(m.Env, e.Name):
				add("env "+e.Name, src, orDash(av), "sealed")
			case e.Source == "literal":
				add("env "+e.Name, src, av, "IN CLEAR on the node")
			default:
				add("env "+e.Name, src, av, "resolved by the kubelet: in clear on the node")
			}
		}
		for _, f := range m.Files {
			add("file "+f, "local file", "-", "sealed")
		}
		for _, ef := range a.NodeSees.EnvFrom {
			add("envFrom "+ef, ef, ef, "resolved by the kubelet: in clear on the node")
		}
		for _, mt := range a.NodeSees.Mounts {
			add("mount "+mt, mt, mt, "the node mounts it")
		}
		if a.Sealed != nil {
			add("annotation "+envelope.PodAnnotationPrefix+a.Container, "-", fmt.Sprintf("JWE to %s", a.Sealed.KeyID), fmt.Sprintf("bound to %s/%s/%s", a.Sealed.Binding.Namespace, a.Sealed.Binding.Pod, a.Sealed.Binding.Container))
		}
		// The agent's policy (agent/seal.go): exec only when the envelope
		// allows it; logs withheld when an exec policy forbids them.
		execPol, _ := sealedExecPolicy(c)
		if execPol == nil || !execPol.AllowExec {
			dc.Refused = append(dc.Refused, "exec into the container (kubectl exec, ctr task exec, crictl exec)")
		}
		if execPol != nil && !execPol.AllowLogs {
			dc.Refused = append(dc.Refused, "container output to the node (kubectl logs shows nothing)")
		}
		if a.Sealed != nil {
			dc.Refused = append(dc.Refused, fmt.Sprintf("the envelope in any container but %s/%s/%s", a.Sealed.Binding.Namespace, a.Sealed.Binding.Pod, a.Sealed.Binding.Container))
		}
		if m.Image {
			dc.Refused = append(dc.Refused, "any image other than the sealed reference")
		}
		res.Containers = append(res.Containers, dc)
	}
	if p := c.String("broker-policy"); p != "" {
		d, err := brokerDryRun(c, p)
		if err != nil {
			return err
		}
		res.Broker = d
	}
	if format == "json" {
		return printJSON(c.App.Writer, res)
	}
	return printDryRun(c.App.Writer, res)
}

func sealedExecPolicy(c *cli.Context) (*envelope.ExecPolicy, bool) {
	if c.IsSet("allow-exec") || c.IsSet("allow-logs") {
		return &envelope.ExecPolicy{AllowExec: c.Bool("allow-exec"), AllowLogs: c.Bool("allow-logs")}, true
	}
	return nil, false
}

// brokerDryRun decides, with the broker's own policy code, whether the
// workload key is released to --tee with --measurement.
func brokerDryRun(c *cli.Context, policyFile string) (*brokerDecision, error) {
	doc, err := os.ReadFile(policyFile)
	if err != nil {
		return nil, err
	}
	pol, err := kbs.ParsePolicy(doc)
	if err != nil {
		return nil, err
	}
	if c.String("tee") == "" {
		return nil, fmt.Errorf("--broker-policy needs --tee: %w", errdefs.ErrInvalidArgument)
	}
	resource, err := envelope.ParseKeyID(c.String("kid"))
	if err != nil {
		return nil, err
	}
	claims := &tee.Claims{TEE: tee.Type(c.String("tee")), Insecure: c.String("tee") == string(tee.Sim)}
	if m := c.String("measurement"); m != "" {
		if claims.Measurement, err = hex.DecodeString(m); err != nil {
			return nil, fmt.Errorf("--measurement is not hex: %w", errdefs.ErrInvalidArgument)
		}
	}
	d := &brokerDecision{Resource: resource, TEE: c.String("tee"), Measurement: c.String("measurement"), Released: true}
	if claims.TEE == tee.Sim && !pol.AllowsTEE(tee.Sim) {
		d.Released, d.Reason = false, kbs.ErrSimNotAllowed.Error()
	} else if err := pol.Decide(resource, claims); err != nil {
		d.Released, d.Reason = false, err.Error()
	}
	return d, nil
}

func printDryRun(w io.Writer, res dryRunResult) error {
	for _, dc := range res.Containers {
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintf(tw, "== %s/%s container %s\n", dc.Kind, dc.Name, dc.Container)
		fmt.Fprintf(tw, "FIELD\tIN YOUR MANIFEST\tNODE WILL SEE\t\n")
		for _, f := range dc.Fields {
			mark := " "
			if f.Before != f.After {
				mark = "~"
			}
			if strings.Contains(f.Note, "IN CLEAR") || strings.Contains(f.Note, "in clear") {
				mark = "!"
			}
			fmt.Fprintf(tw, "%s %s\t%s\t%s\t%s\n", mark, f.Field, f.Before, f.After, f.Note)
		}
		if err := tw.Flush(); err != nil {
			return err
		}
		for _, r := range dc.Refused {
			fmt.Fprintf(w, "  agent refuses: %s\n", r)
		}
		for _, warn := range dc.Warnings {
			fmt.Fprintf(w, "! WARNING: %s\n", warn)
		}
		fmt.Fprintln(w)
	}
	if d := res.Broker; d != nil {
		m := d.Measurement
		if len(m) > 16 {
			m = m[:16] + "..."
		}
		if d.Released {
			fmt.Fprintf(w, "broker: releases %s to %s (measurement %s)\n", d.Resource, d.TEE, orDash(m))
		} else {
			fmt.Fprintf(w, "broker: REFUSES %s to %s (measurement %s): %s\n", d.Resource, d.TEE, orDash(m), d.Reason)
		}
	}
	fmt.Fprintln(w, "(~ changed by sealing, ! the node holds it in clear; values are never printed)")
	return nil
}
