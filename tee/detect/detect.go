// Package detect finds out, inside the guest, which TEE the agent runs in
// and returns the matching tee.Attester.
//
// Probes, in order:
//  1. configfs-tsm (/sys/kernel/config/tsm/report, Linux 6.7+): the report
//     provider names the TEE ("sev_guest" → SNP, "tdx_guest" → TDX).
//  2. /dev/sev-guest → SNP through the SNP_GET_EXT_REPORT ioctl.
//  3. /dev/tdx_guest → TDX (quotes still need configfs-tsm; the attester
//     reports that clearly when it is missing).
//  4. /sys/devices/system/cpu/svm reading "1" → PEF (a pseries secure VM
//     the ultravisor started from an ESM blob).
//  5. pef.DefaultKeyDir present → PEF booted by the simulated ultravisor
//     (insecure; released files read from that directory).
//  6. Otherwise the fallback (the simulated TEE), if the caller gave one.
package detect

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/google/go-configfs-tsm/configfs/configfsi"
	"github.com/google/go-configfs-tsm/configfs/linuxtsm"
	"github.com/google/go-configfs-tsm/report"

	"github.com/raksh-project/raksh/tee"
	"github.com/raksh-project/raksh/tee/pef"
	"github.com/raksh-project/raksh/tee/snp"
	"github.com/raksh-project/raksh/tee/tdx"
)

// Well-known guest paths, relative to the root (normally "/").
const (
	TSMReportPath = "sys/kernel/config/tsm/report"
	SevGuestPath  = "dev/sev-guest"
	TDXGuestPath  = "dev/tdx_guest"
	PEFSVMPath    = "sys/devices/system/cpu/svm"
)

type config struct {
	root     string
	tsm      configfsi.Client
	fallback func() (tee.Attester, error)
	pefKeys  string
}

// Opt configures detection.
type Opt func(*config)

// WithRoot probes paths under root instead of "/" (for tests).
func WithRoot(root string) Opt { return func(c *config) { c.root = root } }

// WithConfigfsClient uses c for configfs-tsm instead of the kernel's.
func WithConfigfsClient(c configfsi.Client) Opt { return func(cfg *config) { cfg.tsm = c } }

// WithFallback sets the attester used when no hardware TEE is found,
// normally the sim attester (sim.NewAttesterFromFiles). Without it,
// detection fails with errdefs.ErrNotFound on machines without a TEE.
func WithFallback(f func() (tee.Attester, error)) Opt {
	return func(c *config) { c.fallback = f }
}

// WithPEFKeyDir makes the PEF attester read released files from dir (the
// simulated ultravisor's output) instead of asking the ultravisor
// (UV_ESMB_GET_FILE, ppc64le only; other builds fall back to
// pef.DefaultKeyDir).
func WithPEFKeyDir(dir string) Opt { return func(c *config) { c.pefKeys = dir } }

// SourceSimUltravisor is the Result.Source of a guest booted by the
// simulated PEF ultravisor (pef.SimUltravisor.BootInitrd unpacked the
// released files into pef.DefaultKeyDir). It is insecure.
const SourceSimUltravisor = "sim-ultravisor"

// Result is what detection found.
type Result struct {
	// Type is the TEE found.
	Type tee.Type
	// Source says what gave it away (e.g. "configfs-tsm:sev_guest").
	Source string
}

// Detect probes the guest and reports the TEE type, or an error wrapping
// errdefs.ErrNotFound when there is no hardware TEE (the fallback is not
// consulted).
func Detect(ctx context.Context, opts ...Opt) (Result, error) {
	c := newConfig(opts)
	return c.detect(ctx)
}

// NewAttester detects the TEE and returns its attester: the fallback when
// no hardware TEE is found.
func NewAttester(ctx context.Context, opts ...Opt) (tee.Attester, error) {
	c := newConfig(opts)
	res, err := c.detect(ctx)
	if errors.Is(err, errdefs.ErrNotFound) && c.fallback != nil {
		log.G(ctx).Warn("no hardware TEE found, using the fallback (simulated, insecure) attester")
		return c.fallback()
	}
	if err != nil {
		return nil, err
	}
	log.G(ctx).WithField("tee", res.Type).WithField("source", res.Source).Info("TEE detected")
	switch res.Type {
	case tee.SNP:
		if res.Source == "device:sev-guest" {
			return snp.NewDeviceAttester(nil), nil
		}
		return snp.NewConfigfsAttester(c.tsm), nil
	case tee.TDX:
		return tdx.NewAttester(c.tsm), nil
	case tee.PEF:
		if res.Source == SourceSimUltravisor {
			return pef.NewAttester(pef.WithKeyDir(c.path(pef.DefaultKeyDir)), pef.OnSimulatedUltravisor()), nil
		}
		// On a PEF secure VM (ppc64le) released files come from the
		// ultravisor; elsewhere (tests) from the key dir.
		if c.pefKeys == "" {
			if src, err := pef.NewUltravisorSource(); err == nil {
				return pef.NewAttester(pef.WithKeySource(src)), nil
			}
		}
		return pef.NewAttester(pef.WithKeyDir(c.pefKeys)), nil
	}
	return nil, fmt.Errorf("detect: no attester for %q: %w", res.Type, errdefs.ErrNotImplemented)
}

func newConfig(opts []Opt) *config {
	c := &config{root: "/"}
	for _, o := range opts {
		o(c)
	}
	return c
}

func (c *config) path(p string) string { return filepath.Join(c.root, p) }

func exists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

func (c *config) detect(ctx context.Context) (Result, error) {
	if c.tsm == nil && c.root == "/" && exists(c.path(TSMReportPath)) {
		if cl, err := linuxtsm.MakeClient(); err == nil {
			c.tsm = cl
		}
	}
	if c.tsm != nil {
		provider, err := tsmProvider(c.tsm)
		if err != nil {
			log.G(ctx).WithError(err).Debug("configfs-tsm present but provider unreadable")
		}
		switch provider {
		case snp.ConfigfsProvider:
			return Result{Type: tee.SNP, Source: "configfs-tsm:" + provider}, nil
		case tdx.ConfigfsProvider:
			return Result{Type: tee.TDX, Source: "configfs-tsm:" + provider}, nil
		}
	}
	if exists(c.path(SevGuestPath)) {
		return Result{Type: tee.SNP, Source: "device:sev-guest"}, nil
	}
	if exists(c.path(TDXGuestPath)) {
		return Result{Type: tee.TDX, Source: "device:tdx_guest"}, nil
	}
	if b, err := os.ReadFile(c.path(PEFSVMPath)); err == nil && strings.TrimSpace(string(b)) == "1" {
		return Result{Type: tee.PEF, Source: "sysfs:cpu/svm"}, nil
	}
	if st, err := os.Stat(c.path(pef.DefaultKeyDir)); err == nil && st.IsDir() {
		return Result{Type: tee.PEF, Source: SourceSimUltravisor}, nil
	}
	return Result{}, fmt.Errorf("detect: no hardware TEE: %w", errdefs.ErrNotFound)
}

// tsmProvider reads the provider of a fresh configfs-tsm report entry.
func tsmProvider(cl configfsi.Client) (string, error) {
	r, err := report.CreateOpenReport(cl)
	if err != nil {
		return "", err
	}
	defer r.Destroy()
	// Write an (all-zero) inblob first: it generates nothing, and some
	// implementations only resolve read-only attributes after a write.
	if err := r.WriteOption("inblob", make([]byte, 64)); err != nil {
		return "", err
	}
	b, err := r.ReadOption("provider")
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(string(b)), nil
}
