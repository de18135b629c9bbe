package main

import (
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"fmt"
	"os"

	"github.com/containerd/errdefs"
	"github.com/urfave/cli/v2"

	"github.com/raksh-project/raksh/envelope"
)

const algEd25519 = "ed25519"

var keysCommand = &cli.Command{
	Name:  "keys",
	Usage: "workload and admin keys",
	Subcommands: []*cli.Command{
		{
			Name:  "generate",
			Usage: "generate a key pair: a workload key (envelopes are sealed to its public part, the KBS holds the private part) or an ed25519 KBS admin key",
			Flags: []cli.Flag{
				&cli.StringFlag{Name: "alg", Value: envelope.KeyP384, Usage: fmt.Sprintf("%s, %s, %s, %s (workload) or %s (KBS admin)", envelope.KeyP256, envelope.KeyP384, envelope.KeyRSA3072, envelope.KeyRSA4096, algEd25519)},
				&cli.StringFlag{Name: "private", Usage: "private key output file (PEM, written 0600)", Required: true},
				&cli.StringFlag{Name: "public", Usage: "public key output file (PEM)", Required: true},
				&cli.StringFlag{Name: "kid", Usage: "KBS resource URI the private key will be stored at (kbs:///repo/type/tag), reported back"},
				&cli.BoolFlag{Name: "force", Usage: "overwrite existing files"},
				outputFlag("text", "text", "json"),
			},
			Action: keysGenerate,
		},
	},
}

func keysGenerate(c *cli.Context) error {
	out, err := checkOutput(c, "text", "json")
	if err != nil {
		return err
	}
	if kid := c.String("kid"); kid != "" {
		if _, err := envelope.ParseKeyID(kid); err != nil {
			return err
		}
	}
	var key crypto.Signer
	if c.String("alg") == algEd25519 {
		_, key, err = ed25519.GenerateKey(rand.Reader)
	} else {
		key, err = envelope.GenerateKey(c.String("alg"))
	}
	if err != nil {
		return err
	}
	priv, err := envelope.MarshalPrivateKey(key)
	if err != nil {
		return err
	}
	pub, err := envelope.MarshalPublicKey(key.Public())
	if err != nil {
		return err
	}
	flags := os.O_WRONLY | os.O_CREATE | os.O_EXCL
	if c.Bool("force") {
		flags = os.O_WRONLY | os.O_CREATE | os.O_TRUNC
	}
	for _, f := range []struct {
		path string
		data []byte
		mode os.FileMode
	}{{c.String("private"), priv, 0o600}, {c.String("public"), pub, 0o644}} {
		w, err := os.OpenFile(f.path, flags, f.mode)
		if os.IsExist(err) {
			return fmt.Errorf("%s exists (use --force): %w", f.path, errdefs.ErrAlreadyExists)
		}
		if err != nil {
			return err
		}
		_, werr := w.Write(f.data)
		if cerr := w.Close(); werr == nil {
			werr = cerr
		}
		if werr != nil {
			return werr
		}
	}
	res := map[string]string{"alg": c.String("alg"), "private": c.String("private"), "public": c.String("public")}
	if kid := c.String("kid"); kid != "" {
		res["kid"] = kid
	}
	if out == "json" {
		return printJSON(c.App.Writer, res)
	}
	fmt.Fprintf(c.App.Writer, "%s key pair: private %s, public %s\n", res["alg"], res["private"], res["public"])
	if kid := res["kid"]; kid != "" {
		p, _ := envelope.ParseKeyID(kid)
		fmt.Fprintf(c.App.Writer, "store the private key in the KBS: rakshctl kbs resource set --file %s --url URL --admin-key ADMIN_KEY %s\n", res["private"], p)
	}
	return nil
}
