package main

import (
	"fmt"

	"github.com/BurntSushi/toml"
	"github.com/containerd/errdefs"

	"github.com/raksh-project/raksh/kbs"
	"github.com/raksh-project/raksh/tee"
	"github.com/raksh-project/raksh/tee/pef"
	"github.com/raksh-project/raksh/tee/snp"
	"github.com/raksh-project/raksh/tee/tdx"
)

// config is the raksh-kbs file: the broker's kbs.Config plus one optional
// section per hardware verifier. A verifier is registered only when its
// section is present.
type config struct {
	kbs.Config
	SNP *snp.Config         `toml:"snp"`
	TDX *tdx.Config         `toml:"tdx"`
	PEF *pef.VerifierConfig `toml:"pef"`
}

func defaultConfig() config { return config{Config: kbs.DefaultConfig()} }

// loadConfig reads a TOML file over the defaults; unknown keys are errors.
func loadConfig(path string) (config, error) {
	cfg := defaultConfig()
	md, err := toml.DecodeFile(path, &cfg)
	if err != nil {
		return cfg, fmt.Errorf("failed to load %s: %w", path, err)
	}
	if u := md.Undecoded(); len(u) > 0 {
		return cfg, fmt.Errorf("%s: unknown keys %v: %w", path, u, errdefs.ErrInvalidArgument)
	}
	return cfg, nil
}

// registerHardware registers the configured hardware verifiers.
func (c config) registerHardware(reg *tee.Registry) error {
	if c.SNP != nil {
		v, err := snp.NewVerifier(*c.SNP)
		if err != nil {
			return fmt.Errorf("snp verifier: %w", err)
		}
		if err := reg.RegisterVerifier(v); err != nil {
			return err
		}
	}
	if c.TDX != nil {
		v, err := tdx.NewVerifier(*c.TDX)
		if err != nil {
			return fmt.Errorf("tdx verifier: %w", err)
		}
		if err := reg.RegisterVerifier(v); err != nil {
			return err
		}
	}
	if c.PEF != nil {
		v, err := pef.NewVerifier(*c.PEF)
		if err != nil {
			return fmt.Errorf("pef verifier: %w", err)
		}
		if err := reg.RegisterVerifier(v); err != nil {
			return err
		}
	}
	return nil
}
