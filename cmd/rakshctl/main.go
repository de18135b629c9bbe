// Command rakshctl is the workload owner's tool: keys, sealing, images and
// the guest initrd.
package main

import (
	"fmt"
	"os"

	"github.com/urfave/cli/v2"
)

func newApp() *cli.App {
	return &cli.App{
		Name:  "rakshctl",
		Usage: "confidential containers: keys, sealing and guest images",
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
	if err := newApp().Run(os.Args); err != nil {
		fmt.Fprintln(os.Stderr, "rakshctl:", err)
		os.Exit(1)
	}
}
