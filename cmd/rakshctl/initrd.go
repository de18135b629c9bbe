package main

import (
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/raksh-project/raksh/runtime/initrd"
)

var initrdCommand = &cli.Command{
	Name:  "initrd",
	Usage: "build the Raksh guest initrd",
	Subcommands: []*cli.Command{{
		Name:  "build",
		Usage: "assemble the agent, runc and kernel modules into a gzip newc cpio initrd",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "agent", Usage: "static raksh-agent binary (becomes /init)", Required: true},
			&cli.StringFlag{Name: "runc", Usage: "static runc binary", Required: true},
			&cli.StringFlag{Name: "modules-dir", Usage: "kernel modules directory (lib/modules/<version>)"},
			&cli.StringSliceFlag{Name: "module", Usage: "kernel module to include (repeatable; default: virtio, vsock, overlay)"},
			&cli.StringSliceFlag{Name: "file", Usage: "extra file DEST=SRC (repeatable)"},
			&cli.StringFlag{Name: "out", Usage: "initrd file to write", Required: true},
			&cli.BoolFlag{Name: "gzip", Usage: "gzip the archive (smaller; slower to boot under TCG)"},
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
			mods := c.StringSlice("module")
			if len(mods) == 0 {
				mods = initrd.DefaultModules
			}
			o := initrd.Options{
				Agent: c.String("agent"), Runc: c.String("runc"),
				ModulesDir: c.String("modules-dir"), Modules: mods,
				Files: files, Output: c.String("out"), Gzip: c.Bool("gzip"),
			}
			progress := c.App.ErrWriter
			if progress == nil {
				progress = os.Stderr
			}
			start := time.Now()
			fmt.Fprintf(progress, "initrd: /init from %s (%s), /bin/runc from %s (%s)\n", o.Agent, fileSize(o.Agent), o.Runc, fileSize(o.Runc))
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
			if err := initrd.Build(o); err != nil {
				return err
			}
			st, err := os.Stat(o.Output)
			if err != nil {
				return err
			}
			if format == "json" {
				return printJSON(c.App.Writer, map[string]any{"out": o.Output, "bytes": st.Size(), "gzip": o.Gzip, "seconds": time.Since(start).Seconds()})
			}
			fmt.Fprintf(c.App.Writer, "wrote %s (%d bytes) in %.1fs\n", o.Output, st.Size(), time.Since(start).Seconds())
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
