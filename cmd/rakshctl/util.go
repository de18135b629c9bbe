package main

import (
	"crypto"
	"encoding/json"
	"fmt"
	"io"
	"os"

	"github.com/containerd/errdefs"
	"github.com/urfave/cli/v2"

	"github.com/raksh-project/raksh/envelope"
)

// outputFlag is the -o flag of commands with a machine-readable form.
func outputFlag(def string, choices ...string) *cli.StringFlag {
	return &cli.StringFlag{Name: "output", Aliases: []string{"o"}, Value: def, Usage: fmt.Sprintf("output format: %v", choices)}
}

func checkOutput(c *cli.Context, choices ...string) (string, error) {
	o := c.String("output")
	for _, ch := range choices {
		if o == ch {
			return o, nil
		}
	}
	return "", fmt.Errorf("output format %q (want one of %v): %w", o, choices, errdefs.ErrInvalidArgument)
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// readInput reads a file, or stdin for "-".
func readInput(c *cli.Context, path string, limit int64) ([]byte, error) {
	var r io.Reader
	if path == "-" {
		r = c.App.Reader
		if r == nil {
			r = os.Stdin
		}
	} else {
		f, err := os.Open(path)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		r = f
	}
	data, err := io.ReadAll(io.LimitReader(r, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(data)) > limit {
		return nil, fmt.Errorf("%s is over %d bytes: %w", path, limit, errdefs.ErrInvalidArgument)
	}
	return data, nil
}

// writeOutput writes to a file (0600 when private) or the app's writer.
func writeOutput(c *cli.Context, path string, data []byte, private bool) error {
	if path == "" || path == "-" {
		_, err := c.App.Writer.Write(data)
		return err
	}
	mode := os.FileMode(0o644)
	if private {
		mode = 0o600
	}
	if err := os.WriteFile(path, data, mode); err != nil {
		return err
	}
	// The data went to a file: say so, on stderr so pipelines stay clean.
	if w := c.App.ErrWriter; w != nil {
		fmt.Fprintf(w, "wrote %s (%d bytes)\n", path, len(data))
	}
	return nil
}

func readPrivateKey(path string) (crypto.PrivateKey, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	k, err := envelope.ParsePrivateKey(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return k, nil
}
