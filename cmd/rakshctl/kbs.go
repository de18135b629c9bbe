package main

import (
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"

	"github.com/containerd/errdefs"
	"github.com/urfave/cli/v2"

	"github.com/raksh-project/raksh/envelope"
	"github.com/raksh-project/raksh/kbs"
	"github.com/raksh-project/raksh/kbs/client"
)

var kbsFlags = []cli.Flag{
	&cli.StringFlag{Name: "url", Usage: "KBS URL (http(s)://host:port)", EnvVars: []string{"RAKSH_KBS_URL"}, Required: true},
	&cli.StringFlag{Name: "admin-key", Usage: "KBS admin private key (PEM)", EnvVars: []string{"RAKSH_KBS_ADMIN_KEY"}, Required: true},
	&cli.StringFlag{Name: "cacert", Usage: "CA certificate (PEM) of the KBS's TLS certificate"},
}

var kbsCommand = &cli.Command{
	Name:  "kbs",
	Usage: "administer a raksh-kbs (Trustee-compatible key broker)",
	Subcommands: []*cli.Command{
		{
			Name:  "resource",
			Usage: "resources",
			Subcommands: []*cli.Command{{
				Name:      "set",
				Usage:     "upload a resource (e.g. a workload private key) to repo/type/tag",
				ArgsUsage: "REPO/TYPE/TAG",
				Flags:     append([]cli.Flag{&cli.StringFlag{Name: "file", Usage: "resource content file", Required: true}, outputFlag("text", "text", "json")}, kbsFlags...),
				Action: func(c *cli.Context) error {
					format, err := checkOutput(c, "text", "json")
					if err != nil {
						return err
					}
					path, err := kbs.ParseResourcePath(c.Args().First())
					if err != nil || c.NArg() != 1 {
						return fmt.Errorf("want one REPO/TYPE/TAG argument: %w", errdefs.ErrInvalidArgument)
					}
					data, err := readInput(c, c.String("file"), kbs.MaxResourceSize)
					if err != nil {
						return err
					}
					a, err := adminClient(c)
					if err != nil {
						return err
					}
					if err := a.SetResource(c.Context, path, data); err != nil {
						return err
					}
					if format == "json" {
						return printJSON(c.App.Writer, map[string]any{"resource": path, "kid": "kbs:///" + path, "bytes": len(data)})
					}
					fmt.Fprintf(c.App.Writer, "resource %s set (kid kbs:///%s)\n", path, path)
					return nil
				},
			}},
		},
		{
			Name:  "policy",
			Usage: "resource policy",
			Subcommands: []*cli.Command{
				{
					Name:  "set",
					Usage: "replace the resource policy with a JSON policy file",
					Flags: append([]cli.Flag{&cli.StringFlag{Name: "file", Usage: "policy file (JSON)", Required: true}}, kbsFlags...),
					Action: func(c *cli.Context) error {
						doc, err := readInput(c, c.String("file"), 64<<10)
						if err != nil {
							return err
						}
						p, err := kbs.ParsePolicy(doc)
						if err != nil {
							return err
						}
						a, err := adminClient(c)
						if err != nil {
							return err
						}
						if err := a.SetPolicy(c.Context, doc); err != nil {
							return err
						}
						fmt.Fprintf(c.App.Writer, "policy set: %d rule(s)\n", len(p.Rules))
						return nil
					},
				},
				{
					Name:  "get",
					Usage: "print the resource policy",
					Flags: kbsFlags,
					Action: func(c *cli.Context) error {
						a, err := adminClient(c)
						if err != nil {
							return err
						}
						doc, err := a.Policy(c.Context)
						if err != nil {
							return err
						}
						_, err = fmt.Fprintf(c.App.Writer, "%s\n", doc)
						return err
					},
				},
			},
		},
	},
}

func adminClient(c *cli.Context) (*client.Admin, error) {
	k, err := os.ReadFile(c.String("admin-key"))
	if err != nil {
		return nil, err
	}
	key, err := parseAdminKey(k)
	if err != nil {
		return nil, err
	}
	var tlsCfg *tls.Config
	if ca := c.String("cacert"); ca != "" {
		pem, err := os.ReadFile(ca)
		if err != nil {
			return nil, err
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("%s has no PEM certificate: %w", ca, errdefs.ErrInvalidArgument)
		}
		tlsCfg = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
	return client.NewAdmin(c.String("url"), key, tlsCfg)
}

// parseAdminKey accepts workload-type keys and ed25519.
func parseAdminKey(data []byte) (crypto.Signer, error) {
	if k, err := envelope.ParsePrivateKey(data); err == nil {
		return k.(crypto.Signer), nil
	}
	k, err := parsePKCS8(data)
	if err != nil {
		return nil, fmt.Errorf("admin key: %w", errdefs.ErrInvalidArgument)
	}
	return k, nil
}
