package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha512"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"

	"github.com/containerd/errdefs"
	"github.com/urfave/cli/v2"

	"github.com/raksh-project/raksh/envelope"
	"github.com/raksh-project/raksh/runtime/launch"
	"github.com/raksh-project/raksh/tee/pef"
)

// pefSeal is what `initrd build --seal-for pef` seals, resolved from its
// flags before the initrd is built.
type pefSeal struct {
	wrapKey      *rsa.PublicKey
	kernelPath   string
	kernel       []byte
	cmdline      string
	files        map[string][]byte
	attestPubOut string
	attestPub    []byte
	attestID     string
	resources    []string
}

func newPEFSeal(c *cli.Context) (*pefSeal, error) {
	s := &pefSeal{files: map[string][]byte{}, attestPubOut: c.String("attestation-public-key")}
	if c.String("wrapping-key") == "" {
		return nil, fmt.Errorf("--seal-for pef needs --wrapping-key, the platform's wrapping public key: %w", errdefs.ErrInvalidArgument)
	}
	var err error
	if s.wrapKey, err = readRSAPublicKey(c.String("wrapping-key")); err != nil {
		return nil, err
	}
	cfg, err := launch.LoadConfig(c.String("runtime-config"))
	if err != nil {
		return nil, err
	}
	if s.kernelPath, s.cmdline, err = launch.PEFSealTarget(cfg); err != nil {
		return nil, fmt.Errorf("--runtime-config %s: %w", c.String("runtime-config"), err)
	}
	if s.kernel, err = os.ReadFile(s.kernelPath); err != nil {
		return nil, fmt.Errorf("the guest kernel of --runtime-config: %w", err)
	}
	for _, f := range c.StringSlice("seal-file") {
		name, src, ok := cutEq(f)
		if !ok {
			return nil, fmt.Errorf("--seal-file %q: want NAME=SRC: %w", f, errdefs.ErrInvalidArgument)
		}
		if name == pef.AttestationKeyFile {
			return nil, fmt.Errorf("--seal-file %s: that name is the attestation key's (use --attestation-public-key): %w", name, errdefs.ErrInvalidArgument)
		}
		if _, dup := s.files[name]; dup {
			return nil, fmt.Errorf("--seal-file %s given twice: %w", name, errdefs.ErrInvalidArgument)
		}
		b, err := readInput(c, src, pef.MaxFileSize)
		if err != nil {
			return nil, fmt.Errorf("--seal-file %s: %w", name, err)
		}
		s.files[name] = b
	}
	for _, f := range c.StringSlice("seal-resource") {
		kid, src, ok := cutEq(f)
		if !ok {
			return nil, fmt.Errorf("--seal-resource %q: want REPO/TYPE/TAG=SRC: %w", f, errdefs.ErrInvalidArgument)
		}
		if !strings.HasPrefix(kid, envelope.KeyIDScheme) {
			kid = envelope.KeyIDScheme + kid
		}
		p, err := envelope.ParseKeyID(kid)
		if err != nil {
			return nil, fmt.Errorf("--seal-resource: %w", err)
		}
		b, err := readInput(c, src, pef.MaxFileSize)
		if err != nil {
			return nil, fmt.Errorf("--seal-resource %s: %w", p, err)
		}
		if _, err := envelope.ParsePrivateKey(b); err != nil {
			return nil, fmt.Errorf("--seal-resource %s: %s is not a workload private key: %w", p, src, err)
		}
		name := pef.ResourceFileName(p)
		if _, dup := s.files[name]; dup {
			return nil, fmt.Errorf("--seal-resource %s given twice: %w", p, errdefs.ErrInvalidArgument)
		}
		s.files[name] = b
		s.resources = append(s.resources, p)
	}
	if s.attestPubOut != "" {
		key, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
		if err != nil {
			return nil, err
		}
		der, err := x509.MarshalPKCS8PrivateKey(key)
		if err != nil {
			return nil, err
		}
		s.files[pef.AttestationKeyFile] = pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
		pub, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
		if err != nil {
			return nil, err
		}
		s.attestPub = pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pub})
		// The PEF verifier's claims carry this as the measurement.
		id := sha512.Sum384(pub)
		s.attestID = hex.EncodeToString(id[:])
	}
	if len(s.files) == 0 {
		return nil, fmt.Errorf("--seal-for pef seals nothing: give --seal-file, --seal-resource and/or --attestation-public-key: %w", errdefs.ErrInvalidArgument)
	}
	return s, nil
}

// seal writes initramfs sealed to out (and the attestation public key).
func (s *pefSeal) seal(progress io.Writer, initramfs, out string) error {
	fmt.Fprintf(progress, "initrd: sealing for pef: %d-bit wrapping key, kernel %s (%s), command line %q, file(s) %s\n",
		s.wrapKey.N.BitLen(), s.kernelPath, fileSize(s.kernelPath), s.cmdline, strings.Join(s.names(), ", "))
	rd, err := os.ReadFile(initramfs)
	if err != nil {
		return err
	}
	sealed, err := pef.SealInitrd(s.wrapKey, rd, pef.SealInitrdOptions{Kernel: s.kernel, Cmdline: s.cmdline, Files: s.files})
	if err != nil {
		return err
	}
	if err := os.WriteFile(out, sealed, 0o644); err != nil {
		return err
	}
	if s.attestPubOut != "" {
		if err := os.WriteFile(s.attestPubOut, s.attestPub, 0o644); err != nil {
			return err
		}
		fmt.Fprintf(progress, "initrd: attestation public key written to %s\n", s.attestPubOut)
	}
	return nil
}

func (s *pefSeal) names() []string {
	names := make([]string, 0, len(s.files))
	for n := range s.files {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

func (s *pefSeal) report(res map[string]any) {
	res["sealed_for"] = "pef"
	res["kernel"] = s.kernelPath
	res["cmdline"] = s.cmdline
	res["sealed_files"] = s.names()
	res["sealed_resources"] = s.resources
	if s.attestPubOut != "" {
		res["attestation_public_key"] = s.attestPubOut
		res["attestation_key_id"] = s.attestID
	}
}

func (s *pefSeal) print(w io.Writer) {
	fmt.Fprintf(w, "sealed for pef: kernel %s, command line %q, file(s) %s\n", s.kernelPath, s.cmdline, strings.Join(s.names(), ", "))
	if len(s.resources) > 0 {
		fmt.Fprintf(w, "workload keys sealed (no key broker needed): %s\n", strings.Join(s.resources, ", "))
	}
	if s.attestPubOut != "" {
		fmt.Fprintf(w, "attestation public key %s (key id %s): trust it in raksh-kbs [pef] trusted_keys, or simulated_keys for the simulated ultravisor\n", s.attestPubOut, s.attestID)
	}
}

// readRSAPublicKey reads an RSA public key (PKIX or PKCS#1 PEM).
func readRSAPublicKey(path string) (*rsa.PublicKey, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		return nil, fmt.Errorf("--wrapping-key %s is not PEM: %w", path, errdefs.ErrInvalidArgument)
	}
	var k any
	switch blk.Type {
	case "PUBLIC KEY":
		k, err = x509.ParsePKIXPublicKey(blk.Bytes)
	case "RSA PUBLIC KEY":
		k, err = x509.ParsePKCS1PublicKey(blk.Bytes)
	default:
		return nil, fmt.Errorf("--wrapping-key %s holds a %q, not a public key: %w", path, blk.Type, errdefs.ErrInvalidArgument)
	}
	rk, ok := k.(*rsa.PublicKey)
	if err != nil || !ok {
		return nil, fmt.Errorf("--wrapping-key %s is not an RSA public key: %w", path, errdefs.ErrInvalidArgument)
	}
	return rk, nil
}
