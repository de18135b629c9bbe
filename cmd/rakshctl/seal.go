package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/containerd/errdefs"
	"github.com/urfave/cli/v2"
	"sigs.k8s.io/yaml"

	"github.com/raksh-project/raksh/envelope"
	"github.com/raksh-project/raksh/envelope/kube"
)

var sealCommand = &cli.Command{
	Name:  "seal",
	Usage: "seal the containers of Pod, Deployment, StatefulSet, DaemonSet, Job and CronJob manifests",
	Description: `Moves each container's (and init container's) command and args, literal env values,
working directory, chosen secret files and optionally image reference into an envelope
(JWE, sealed to --recipient) stored in the pod annotation io.raksh.envelope/<container>.
The visible fields become the placeholder "raksh-sealed" and runtimeClassName is set.
Other documents pass through unchanged, in the same order.`,
	Flags: append([]cli.Flag{
		&cli.StringFlag{Name: "file", Aliases: []string{"f"}, Usage: "manifest file (multi-document YAML; - for stdin)", Required: true},
		&cli.StringFlag{Name: "recipient", Usage: "workload public key (PEM or JWK)", Required: true},
		&cli.StringFlag{Name: "kid", Usage: "KBS resource URI of the workload private key (kbs:///repo/type/tag)", Required: true},
		&cli.StringFlag{Name: "namespace", Aliases: []string{"n"}, Value: "default", Usage: "namespace of objects without metadata.namespace"},
		&cli.StringFlag{Name: "runtime-class", Value: kube.DefaultRuntimeClass, Usage: "runtimeClassName to set"},
		&cli.StringSliceFlag{Name: "secret-file", Usage: "CONTAINER:/path/in/container=LOCALFILE[:MODE] sealed into the container (repeatable)"},
		&cli.BoolFlag{Name: "seal-image", Usage: "seal the image reference too (requires --placeholder-image)"},
		&cli.StringFlag{Name: "placeholder-image", Usage: "visible image when the image is sealed"},
		&cli.BoolFlag{Name: "allow-exec", Usage: "sealed policy: allow exec into the containers"},
		&cli.BoolFlag{Name: "allow-logs", Usage: "sealed policy: let container output reach the node"},
		&cli.StringSliceFlag{Name: "mount-allow", Usage: "sealed mount policy: CONTAINER:/dest[/*][:KIND,KIND][:ro] accepts the node's volume there (kinds copy, empty-dir, shared; default copy,empty-dir); once given for a container, its other volumes are refused (repeatable)"},
		&cli.StringFlag{Name: "out", Usage: "output file (default stdout)"},
		outputFlag("yaml", "yaml", "json"),
	}, dryRunFlags...),
	Action: sealAction,
}

func sealAction(c *cli.Context) error {
	out, err := checkOutput(c, "yaml", "json")
	if err != nil {
		return err
	}
	in, err := readInput(c, c.String("file"), kube.MaxInput)
	if err != nil {
		return err
	}
	pubData, err := os.ReadFile(c.String("recipient"))
	if err != nil {
		return err
	}
	pub, err := envelope.ParsePublicKey(pubData)
	if err != nil {
		return fmt.Errorf("recipient: %w", err)
	}
	opts := kube.SealOptions{
		Recipient:        envelope.Recipient{KeyID: c.String("kid"), Key: pub},
		Namespace:        c.String("namespace"),
		RuntimeClass:     c.String("runtime-class"),
		SealImage:        c.Bool("seal-image"),
		PlaceholderImage: c.String("placeholder-image"),
	}
	if _, err := envelope.ParseKeyID(opts.Recipient.KeyID); err != nil {
		return err
	}
	if c.IsSet("allow-exec") || c.IsSet("allow-logs") {
		opts.Exec = &envelope.ExecPolicy{AllowExec: c.Bool("allow-exec"), AllowLogs: c.Bool("allow-logs")}
	}
	if opts.Files, err = parseSecretFiles(c.StringSlice("secret-file")); err != nil {
		return err
	}
	if opts.Mounts, err = parseMountAllow(c.StringSlice("mount-allow")); err != nil {
		return err
	}
	sealed, err := kube.Seal(in, opts)
	if err != nil {
		return err
	}
	if c.Bool("dry-run") {
		format := "text"
		if out == "json" {
			format = "json"
		}
		return sealDryRun(c, in, sealed, format)
	}
	if out == "json" {
		if sealed, err = docsToJSON(sealed); err != nil {
			return err
		}
	}
	return writeOutput(c, c.String("out"), sealed, false)
}

// parseSecretFiles parses CONTAINER:/path=LOCALFILE[:MODE].
func parseSecretFiles(specs []string) (map[string][]envelope.File, error) {
	files := map[string][]envelope.File{}
	for _, s := range specs {
		ctr, rest, ok1 := strings.Cut(s, ":")
		dst, src, ok2 := strings.Cut(rest, "=")
		if !ok1 || !ok2 || ctr == "" || !path.IsAbs(dst) || src == "" {
			return nil, fmt.Errorf("--secret-file %q is not CONTAINER:/path=LOCALFILE[:MODE]: %w", s, errdefs.ErrInvalidArgument)
		}
		mode := uint64(0o400)
		if i := strings.LastIndex(src, ":"); i > 0 {
			if m, err := strconv.ParseUint(src[i+1:], 8, 32); err == nil {
				mode, src = m, src[:i]
			}
		}
		content, err := os.ReadFile(src)
		if err != nil {
			return nil, err
		}
		files[ctr] = append(files[ctr], envelope.File{Path: dst, Mode: uint32(mode), Content: content})
	}
	return files, nil
}

// parseMountAllow parses CONTAINER:/dest[:KIND,KIND][:ro] into mount
// policies by container.
func parseMountAllow(specs []string) (map[string]*envelope.MountPolicy, error) {
	if len(specs) == 0 {
		return nil, nil
	}
	pols := map[string]*envelope.MountPolicy{}
	for _, s := range specs {
		parts := strings.Split(s, ":")
		if len(parts) < 2 || len(parts) > 4 || parts[0] == "" {
			return nil, fmt.Errorf("--mount-allow %q is not CONTAINER:/dest[:KIND,KIND][:ro]: %w", s, errdefs.ErrInvalidArgument)
		}
		r := envelope.MountRule{Destination: parts[1]}
		for _, p := range parts[2:] {
			if p == "ro" {
				r.ReadOnly = true
				continue
			}
			r.Kinds = append(r.Kinds, strings.Split(p, ",")...)
		}
		pol := pols[parts[0]]
		if pol == nil {
			pol = &envelope.MountPolicy{}
			pols[parts[0]] = pol
		}
		pol.Allow = append(pol.Allow, r)
		spec := envelope.Spec{Version: envelope.Version, Mounts: pol}
		if err := spec.Validate(); err != nil {
			return nil, fmt.Errorf("--mount-allow %q: %w", s, err)
		}
	}
	return pols, nil
}

// docsToJSON renders a YAML stream as a JSON array of its documents.
func docsToJSON(y []byte) ([]byte, error) {
	var docs []json.RawMessage
	for _, d := range kube.SplitDocuments(y) {
		if len(strings.TrimSpace(string(d))) == 0 {
			continue
		}
		j, err := yaml.YAMLToJSON(d)
		if err != nil {
			return nil, err
		}
		docs = append(docs, j)
	}
	out, err := json.MarshalIndent(docs, "", "  ")
	return append(out, '\n'), err
}

var unsealCommand = &cli.Command{
	Name:  "unseal",
	Usage: "restore a sealed manifest with the workload private key (owner side)",
	Flags: []cli.Flag{
		&cli.StringFlag{Name: "file", Aliases: []string{"f"}, Usage: "sealed manifest (- for stdin)", Required: true},
		&cli.StringFlag{Name: "key", Usage: "workload private key (PEM or JWK)", Required: true},
		&cli.StringFlag{Name: "files-dir", Usage: "write sealed secret files under DIR/<kind>/<name>/<container>/<path>"},
		&cli.StringFlag{Name: "out", Usage: "output file (default stdout)"},
		outputFlag("yaml", "yaml", "json"),
	},
	Action: func(c *cli.Context) error {
		out, err := checkOutput(c, "yaml", "json")
		if err != nil {
			return err
		}
		in, err := readInput(c, c.String("file"), kube.MaxInput)
		if err != nil {
			return err
		}
		key, err := readPrivateKey(c.String("key"))
		if err != nil {
			return err
		}
		plain, files, err := kube.Unseal(in, key)
		if err != nil {
			return err
		}
		if dir := c.String("files-dir"); dir != "" {
			for owner, fs := range files {
				for _, f := range fs {
					p := filepath.Join(dir, filepath.FromSlash(owner), filepath.FromSlash(f.Path))
					if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
						return err
					}
					if err := os.WriteFile(p, f.Content, 0o600); err != nil {
						return err
					}
				}
			}
		} else if len(files) > 0 {
			fmt.Fprintf(c.App.ErrWriter, "note: %d container(s) carry sealed secret files; use --files-dir to extract them\n", len(files))
		}
		if out == "json" {
			if plain, err = docsToJSON(plain); err != nil {
				return err
			}
		}
		return writeOutput(c, c.String("out"), plain, true)
	},
}

var inspectCommand = &cli.Command{
	Name:  "inspect",
	Usage: "show, per container, what the node sees next to what stays sealed (never values)",
	Flags: []cli.Flag{
		&cli.StringFlag{Name: "file", Aliases: []string{"f"}, Usage: "manifest (- for stdin)", Required: true},
		&cli.StringFlag{Name: "key", Usage: "workload private key: also check that each envelope opens"},
		outputFlag("text", "text", "json"),
	},
	Action: func(c *cli.Context) error {
		out, err := checkOutput(c, "text", "json")
		if err != nil {
			return err
		}
		in, err := readInput(c, c.String("file"), kube.MaxInput)
		if err != nil {
			return err
		}
		var key any
		if p := c.String("key"); p != "" {
			if key, err = readPrivateKey(p); err != nil {
				return err
			}
		}
		views, err := kube.Inspect(in, key)
		if err != nil {
			return err
		}
		if out == "json" {
			if views == nil {
				views = []kube.View{}
			}
			return printJSON(c.App.Writer, views)
		}
		return printViews(c, views)
	},
}

func printViews(c *cli.Context, views []kube.View) error {
	w := tabwriter.NewWriter(c.App.Writer, 0, 4, 2, ' ', 0)
	for _, v := range views {
		title := fmt.Sprintf("%s/%s container %s", v.Kind, v.Name, v.Container)
		if v.Init {
			title += " (init)"
		}
		fmt.Fprintf(w, "== %s\n", title)
		fmt.Fprintf(w, "FIELD\tNODE SEES\tSEALED\n")
		var m envelope.Manifest
		if v.Sealed != nil {
			m = v.Sealed.Manifest
		}
		yes := func(b bool) string {
			if b {
				return "yes"
			}
			return "-"
		}
		fmt.Fprintf(w, "runtimeClass\t%s\t\n", orDash(v.NodeSees.RuntimeClass))
		fmt.Fprintf(w, "image\t%s\t%s\n", v.NodeSees.Image, yes(m.Image))
		fmt.Fprintf(w, "command+args\t%s\t%s\n", orDash(strings.Join(append(append([]string{}, v.NodeSees.Command...), v.NodeSees.Args...), " ")), yes(m.Args))
		fmt.Fprintf(w, "workingDir\t%s\t%s\n", orDash(v.NodeSees.WorkingDir), yes(m.Cwd))
		sealedEnv := map[string]bool{}
		for _, n := range m.Env {
			sealedEnv[n] = true
		}
		for _, e := range v.NodeSees.Env {
			fmt.Fprintf(w, "env %s\t%s\t%s\n", e.Name, e.Source, yes(sealedEnv[e.Name]))
			delete(sealedEnv, e.Name)
		}
		rest := make([]string, 0, len(sealedEnv))
		for n := range sealedEnv {
			rest = append(rest, n)
		}
		sort.Strings(rest)
		for _, n := range rest {
			fmt.Fprintf(w, "env %s\t-\tyes\n", n)
		}
		for _, f := range m.Files {
			fmt.Fprintf(w, "file %s\t-\tyes\n", f)
		}
		for _, ef := range v.NodeSees.EnvFrom {
			fmt.Fprintf(w, "envFrom %s\tresolved on the node\t-\n", ef)
		}
		if v.Sealed != nil {
			fmt.Fprintf(w, "envelope\tkid %s, %s\tbound to %s\n", v.Sealed.KeyID, v.Sealed.Algorithm, v.Sealed.Binding)
			if v.Sealed.Opened != nil {
				fmt.Fprintf(w, "opens with key\t\t%v %s\n", *v.Sealed.Opened, v.Sealed.Error)
			} else if v.Sealed.Error != "" {
				fmt.Fprintf(w, "envelope error\t\t%s\n", v.Sealed.Error)
			}
		}
		for _, warn := range v.Warnings {
			fmt.Fprintf(w, "WARNING\t%s\t\n", warn)
		}
		fmt.Fprintln(w)
	}
	return w.Flush()
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
