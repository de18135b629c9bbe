package main

import (
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/containerd/errdefs"
	"github.com/urfave/cli/v2"

	"github.com/raksh-project/raksh/runtime/initrd"
	"github.com/raksh-project/raksh/runtime/launch"
)

var initrdCommand = &cli.Command{
	Name:  "initrd",
	Usage: "build the Raksh guest initrd",
	Subcommands: []*cli.Command{{
		Name:  "build",
		Usage: "assemble the agent, runc and kernel modules into a newc cpio initrd; --seal-for pef seals it for a PEF platform",
		Description: `With --seal-for pef the initrd is sealed for IBM Power PEF (docs/tee.md): an ESM
blob is put in front of it, for the platform's wrapping key (--wrapping-key), holding
the SHA-512 of the kernel, this initrd and the exact kernel command line the shim
renders from --runtime-config (tee = "pef", the node's init data bound), and the
--seal-file files, the --seal-resource workload keys (envelopes naming them open
without a key broker) and, with --attestation-public-key, a fresh attestation key. The
ultravisor (or, with [pef] simulated_ultravisor_key, the shim's INSECURE simulated
one) releases them into /raksh/pef only to a VM booting exactly that.`,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "agent", Usage: "static raksh-agent binary (becomes /init)", Required: true},
			&cli.StringFlag{Name: "runc", Usage: "static runc binary", Required: true},
			&cli.StringFlag{Name: "mke2fs", Value: initrd.DefaultMke2fs, Usage: "static binary installed as /bin/mke2fs, which formats the encrypted scratch disk in the guest (busybox-static; \"\" leaves it out: a guest then cannot use a scratch disk)"},
			&cli.StringFlag{Name: "modules-dir", Usage: "kernel modules directory (lib/modules/<version>)"},
			&cli.StringSliceFlag{Name: "module", Usage: "kernel module to include (repeatable; default: virtio, vsock, overlay)"},
			&cli.StringSliceFlag{Name: "file", Usage: "extra file DEST=SRC (repeatable)"},
			&cli.StringFlag{Name: "out", Usage: "initrd file to write", Required: true},
			&cli.BoolFlag{Name: "gzip", Usage: "gzip the archive (smaller; slower to boot under TCG)"},
			&cli.StringFlag{Name: "seal-for", Usage: "seal the initrd for a TEE platform: pef"},
			&cli.StringFlag{Name: "wrapping-key", Usage: "with --seal-for pef: the platform's wrapping public key (RSA, PEM; on PEF hardware: tpm2_readpublic -c 0x81800001 -f pem)"},
			&cli.StringFlag{Name: "runtime-config", Value: launch.DefaultConfigPath, Usage: "with --seal-for pef: the node's runtime.toml (tee = \"pef\"); kernel and command line are sealed as the shim renders them"},
			&cli.StringSliceFlag{Name: "seal-file", Usage: "with --seal-for pef: file NAME=SRC the ultravisor releases into /raksh/pef/NAME (repeatable; at most 4096 bytes)"},
			&cli.StringSliceFlag{Name: "seal-resource", Usage: "with --seal-for pef: workload key REPO/TYPE/TAG=SRC (or kbs:///REPO/TYPE/TAG=SRC) the agent takes from the released files instead of asking the key broker (repeatable)"},
			&cli.StringFlag{Name: "attestation-public-key", Usage: "with --seal-for pef: seal a fresh P-384 attestation key (raksh-attest.key) and write its public half to this file, for raksh-kbs [pef] trusted_keys or simulated_keys"},
			outputFlag("text", "text", "json"),
		},
		Action: func(c *cli.Context) error {
			format, err := checkOutput(c, "text", "json")
			if err != nil {
				return err
			}
			files := map[string]string{}
			for _, f := range c.StringSlice("file") {
				dst, src, ok := cutEq(f)
				if !ok {
					return fmt.Errorf("--file %q: want DEST=SRC", f)
				}
				files[dst] = src
			}
			var seal *pefSeal
			switch c.String("seal-for") {
			case "":
				for _, f := range []string{"wrapping-key", "seal-file", "seal-resource", "attestation-public-key"} {
					if c.IsSet(f) {
						return fmt.Errorf("--%s needs --seal-for pef: %w", f, errdefs.ErrInvalidArgument)
					}
				}
			case "pef":
				if seal, err = newPEFSeal(c); err != nil {
					return err
				}
			default:
				return fmt.Errorf("--seal-for %q: only pef is supported: %w", c.String("seal-for"), errdefs.ErrInvalidArgument)
			}
			mods := c.StringSlice("module")
			if len(mods) == 0 {
				mods = initrd.DefaultModules
			}
			o := initrd.Options{
				Agent: c.String("agent"), Runc: c.String("runc"), Mke2fs: c.String("mke2fs"),
				ModulesDir: c.String("modules-dir"), Modules: mods,
				Files: files, Output: c.String("out"), Gzip: c.Bool("gzip"),
			}
			progress := c.App.ErrWriter
			if progress == nil {
				progress = os.Stderr
			}
			start := time.Now()
			fmt.Fprintf(progress, "initrd: /init from %s (%s), /bin/runc from %s (%s)\n", o.Agent, fileSize(o.Agent), o.Runc, fileSize(o.Runc))
			if o.Mke2fs != "" {
				fmt.Fprintf(progress, "initrd: /%s from %s (%s)\n", initrd.Mke2fsPath, o.Mke2fs, fileSize(o.Mke2fs))
			}
			if o.ModulesDir != "" {
				order, err := initrd.ModuleOrder(o.ModulesDir, o.Modules)
				if err != nil {
					return err
				}
				fmt.Fprintf(progress, "initrd: %d kernel module(s) from %s (%s with dependencies)\n", len(order), o.ModulesDir, strings.Join(o.Modules, ", "))
			}
			if len(files) > 0 {
				fmt.Fprintf(progress, "initrd: %d extra file(s)\n", len(files))
			}
			fmt.Fprintf(progress, "initrd: writing the cpio archive (gzip: %v)\n", o.Gzip)
			if seal != nil {
				o.Output += ".initramfs.tmp"
				defer os.Remove(o.Output)
			}
			if err := initrd.Build(o); err != nil {
				return err
			}
			if seal != nil {
				if err := seal.seal(progress, o.Output, c.String("out")); err != nil {
					return err
				}
				o.Output = c.String("out")
			}
			st, err := os.Stat(o.Output)
			if err != nil {
				return err
			}
			if format == "json" {
				res := map[string]any{"out": o.Output, "bytes": st.Size(), "gzip": o.Gzip, "seconds": time.Since(start).Seconds()}
				if seal != nil {
					seal.report(res)
				}
				return printJSON(c.App.Writer, res)
			}
			fmt.Fprintf(c.App.Writer, "wrote %s (%d bytes) in %.1fs\n", o.Output, st.Size(), time.Since(start).Seconds())
			if seal != nil {
				seal.print(c.App.Writer)
			}
			return nil
		},
	}},
}

func cutEq(s string) (string, string, bool) {
	for i := range s {
		if s[i] == '=' {
			return s[:i], s[i+1:], i > 0 && i < len(s)-1
		}
	}
	return "", "", false
}

// fileSize is a file's size for progress lines.
func fileSize(p string) string {
	st, err := os.Stat(p)
	if err != nil {
		return "missing"
	}
	return fmt.Sprintf("%.1f MB", float64(st.Size())/1e6)
}
