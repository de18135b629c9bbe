package main

import (
	"fmt"
	"os"

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
			&cli.StringFlag{Name: "output", Aliases: []string{"o"}, Usage: "output path", Required: true},
			&cli.BoolFlag{Name: "gzip", Usage: "gzip the archive (smaller; slower to boot under TCG)"},
		},
		Action: func(c *cli.Context) error {
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
				Files: files, Output: c.String("output"), Gzip: c.Bool("gzip"),
			}
			if err := initrd.Build(o); err != nil {
				return err
			}
			st, err := os.Stat(o.Output)
			if err != nil {
				return err
			}
			fmt.Fprintf(c.App.Writer, "wrote %s (%d bytes)\n", o.Output, st.Size())
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
