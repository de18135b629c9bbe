package main

import (
	"encoding/hex"
	"fmt"

	"github.com/urfave/cli/v2"

	"github.com/raksh-project/raksh/runtime/launch"
)

var teeCommand = &cli.Command{
	Name:  "tee",
	Usage: "what the runtime's TEE launches",
	Subcommands: []*cli.Command{{
		Name:  "measure",
		Usage: "print the launch measurement (hex) of the guest a runtime config boots, for a KBS policy",
		Description: `Reads the shim's runtime config and prints the measurement its VMs report, as
the shim renders them on this host. tee = "sim": SHA-384 over kernel, initrd and
kernel command line. tee = "snp": the SNP launch digest over [snp] firmware, kernel,
initrd and command line (kernel-hashes=on) with vcpus [snp] cpu_model vCPUs.
TDX and PEF measurements are not computed. Put it in the key broker's resource
policy ("measurements": [...]).`,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "runtime-config", Value: launch.DefaultConfigPath, Usage: "the shim's runtime.toml"},
			outputFlag("text", "text", "json"),
		},
		Action: func(c *cli.Context) error {
			format, err := checkOutput(c, "text", "json")
			if err != nil {
				return err
			}
			cfg, err := launch.LoadConfig(c.String("runtime-config"))
			if err != nil {
				return err
			}
			m, err := launch.LaunchMeasurement(cfg)
			if err != nil {
				return err
			}
			if format == "json" {
				return printJSON(c.App.Writer, map[string]string{"tee": string(cfg.TEE), "measurement": hex.EncodeToString(m)})
			}
			fmt.Fprintln(c.App.Writer, hex.EncodeToString(m))
			return nil
		},
	}},
}
