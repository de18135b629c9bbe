// Command rakshctl is the workload owner's tool: keys, sealing, images and
// the guest initrd.
package main

import (
	"fmt"
	"os"

	"github.com/urfave/cli/v2"

	"github.com/raksh-project/raksh/internal/version"
)

func newApp() *cli.App {
	return &cli.App{
		Name:    "rakshctl",
		Usage:   "confidential containers: keys, sealing, images, node audit and the guest initrd",
		Version: version.Version,
		Commands: []*cli.Command{
			keysCommand,
			kbsCommand,
			sealCommand,
			unsealCommand,
			inspectCommand,
			initrdCommand,
			teeCommand,
			imageCommand,
			auditCommand,
		},
	}
}

func main() {
	// Commands with their own exit codes (audit) exit through cli.ExitCoder.
	if err := newApp().Run(os.Args); err != nil {
		fmt.Fprintln(os.Stderr, "rakshctl:", err)
		os.Exit(1)
	}
}
