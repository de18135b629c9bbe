// Command raksh-kbs is the Raksh key broker: a Trustee-compatible KBS (RCAR
// protocol) serving resources to attested TEEs under a resource policy.
package main

import (
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/urfave/cli/v2"

	"github.com/raksh-project/raksh/internal/version"
)

func main() {
	app := &cli.App{
		Name:    "raksh-kbs",
		Usage:   "key broker speaking the Trustee KBS protocol (RCAR)",
		Version: version.Version,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "config", Aliases: []string{"c"}, Usage: "TOML configuration file (optional)"},
			&cli.StringFlag{Name: "address", Usage: "listen address (default 127.0.0.1:8080)"},
			&cli.StringFlag{Name: "tls-cert", Usage: "TLS certificate (PEM); with --tls-key enables HTTPS"},
			&cli.StringFlag{Name: "tls-key", Usage: "TLS private key (PEM)"},
			&cli.StringFlag{Name: "resource-dir", Usage: "resource store directory"},
			&cli.StringFlag{Name: "policy", Usage: "resource policy file (JSON)"},
			&cli.StringSliceFlag{Name: "admin-public-key", Usage: "admin public key (PEM), repeatable"},
			&cli.StringFlag{Name: "token-key", Usage: "ECDSA P-256 key signing attestation tokens (PEM)"},
			&cli.StringFlag{Name: "sim-platform-keys", Usage: "trusted sim platform public keys (PEM bundle); enables the INSECURE sim verifier"},
		},
		Action: func(c *cli.Context) error {
			cfg := defaultConfig()
			if p := c.String("config"); p != "" {
				var err error
				if cfg, err = loadConfig(p); err != nil {
					return err
				}
			}
			for flag, dst := range map[string]*string{
				"address": &cfg.Address, "tls-cert": &cfg.TLSCertFile, "tls-key": &cfg.TLSKeyFile,
				"resource-dir": &cfg.ResourceDir, "policy": &cfg.PolicyFile, "token-key": &cfg.TokenKeyFile,
				"sim-platform-keys": &cfg.SimPlatformKeysFile,
			} {
				if c.IsSet(flag) {
					*dst = c.String(flag)
				}
			}
			if c.IsSet("admin-public-key") {
				cfg.AdminPublicKeyFiles = c.StringSlice("admin-public-key")
			}
			ctx, cancel := signal.NotifyContext(c.Context, os.Interrupt, syscall.SIGTERM)
			defer cancel()
			return serve(ctx, cfg, nil)
		},
	}
	if err := app.Run(os.Args); err != nil {
		fmt.Fprintln(os.Stderr, "raksh-kbs:", err)
		os.Exit(1)
	}
}
