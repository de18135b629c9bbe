package kbs

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"path"
	"slices"
	"strings"

	"github.com/containerd/errdefs"

	"github.com/raksh-project/raksh/tee"
)

// Policy decides which attested TEEs may receive which resources. It is
// declarative and deny-by-default: a request is allowed when at least one
// rule whose Resources match the resource path accepts the TEE's claims.
//
// Example (JSON):
//
//	{"rules": [{
//	  "resources": ["default/workload/*"],
//	  "tee": ["snp", "sim"],
//	  "measurements": ["9f86d0..."],
//	  "init_data_digests": ["2c26b4..."]
//	}]}
type Policy struct {
	Rules []Rule `json:"rules"`
}

// Rule is one entry of a Policy.
type Rule struct {
	// Resources are path.Match patterns over repo/type/tag (e.g.
	// "default/workload/*").
	Resources []string `json:"resources"`
	// TEE lists the TEE types allowed. "sim" must be listed explicitly for
	// simulated (insecure) TEEs to be served.
	TEE []tee.Type `json:"tee"`
	// Measurements, when not empty, lists the allowed launch measurements
	// (hex).
	Measurements []string `json:"measurements,omitempty"`
	// InitDataDigests, when not empty, lists the allowed init-data digests
	// (hex).
	InitDataDigests []string `json:"init_data_digests,omitempty"`
	// AllowDebug admits TEEs whose memory a debugger can read.
	AllowDebug bool `json:"allow_debug,omitempty"`
	// AllowInsecure admits claims marked insecure from backends other than
	// sim (e.g. PEF keys sealed for the simulated ultravisor). The sim
	// backend needs "sim" in TEE instead.
	AllowInsecure bool `json:"allow_insecure,omitempty"`
}

// Policy decision errors, distinct so a denied guest and its operator learn
// why.
var (
	ErrNoRule             = fmt.Errorf("no policy rule covers the resource: %w", errdefs.ErrPermissionDenied)
	ErrTEENotAllowed      = fmt.Errorf("TEE type not allowed by policy: %w", errdefs.ErrPermissionDenied)
	ErrSimNotAllowed      = fmt.Errorf("simulated (insecure) TEE not allowed by policy: %w", errdefs.ErrPermissionDenied)
	ErrMeasurementDenied  = fmt.Errorf("launch measurement not allowed by policy: %w", errdefs.ErrPermissionDenied)
	ErrInitDataDenied     = fmt.Errorf("init-data digest not allowed by policy: %w", errdefs.ErrPermissionDenied)
	ErrDebugNotAllowed    = fmt.Errorf("debuggable TEE not allowed by policy: %w", errdefs.ErrPermissionDenied)
	ErrInsecureNotAllowed = fmt.Errorf("insecure (simulated) TEE claims not allowed by policy: %w", errdefs.ErrPermissionDenied)
	ErrInvalidPolicy      = fmt.Errorf("invalid resource policy: %w", errdefs.ErrInvalidArgument)
)

// ParsePolicy decodes and validates a JSON policy. Unknown fields are
// errors.
func ParsePolicy(data []byte) (*Policy, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var p Policy
	if err := dec.Decode(&p); err != nil {
		return nil, fmt.Errorf("%v: %w", err, ErrInvalidPolicy)
	}
	if err := p.Validate(); err != nil {
		return nil, err
	}
	return &p, nil
}

// Validate checks patterns and digests.
func (p *Policy) Validate() error {
	for i, r := range p.Rules {
		if len(r.Resources) == 0 || len(r.TEE) == 0 {
			return fmt.Errorf("rule %d needs resources and tee: %w", i, ErrInvalidPolicy)
		}
		for _, pat := range r.Resources {
			if _, err := path.Match(pat, "a/b/c"); err != nil || strings.Count(pat, "/") != 2 {
				return fmt.Errorf("rule %d: resource pattern %q is not repo/type/tag: %w", i, pat, ErrInvalidPolicy)
			}
		}
		for _, d := range slices.Concat(r.Measurements, r.InitDataDigests) {
			if _, err := hex.DecodeString(d); err != nil || d == "" {
				return fmt.Errorf("rule %d: digest %q is not hex: %w", i, d, ErrInvalidPolicy)
			}
		}
	}
	return nil
}

// AllowsTEE reports whether any rule admits TEE type t.
func (p *Policy) AllowsTEE(t tee.Type) bool {
	for _, r := range p.Rules {
		if slices.Contains(r.TEE, t) {
			return true
		}
	}
	return false
}

// Decide returns nil when the claims may receive the resource at
// resourcePath, or the reason of the most specific refusal.
func (p *Policy) Decide(resourcePath string, c *tee.Claims) error {
	var first error
	for _, r := range p.Rules {
		if !r.matches(resourcePath) {
			continue
		}
		err := r.check(c)
		if err == nil {
			return nil
		}
		if first == nil {
			first = err
		}
	}
	if first == nil {
		return fmt.Errorf("resource %s: %w", resourcePath, ErrNoRule)
	}
	return fmt.Errorf("resource %s: %w", resourcePath, first)
}

func (r *Rule) matches(resourcePath string) bool {
	for _, pat := range r.Resources {
		if ok, _ := path.Match(pat, resourcePath); ok {
			return true
		}
	}
	return false
}

func (r *Rule) check(c *tee.Claims) error {
	if !slices.Contains(r.TEE, c.TEE) {
		if c.TEE == tee.Sim {
			return ErrSimNotAllowed
		}
		return fmt.Errorf("%q: %w", c.TEE, ErrTEENotAllowed)
	}
	if c.Insecure && c.TEE != tee.Sim && !r.AllowInsecure {
		return fmt.Errorf("%q: %w", c.TEE, ErrInsecureNotAllowed)
	}
	if c.Debug && !r.AllowDebug {
		return ErrDebugNotAllowed
	}
	if len(r.Measurements) > 0 && !containsHex(r.Measurements, c.Measurement) {
		return ErrMeasurementDenied
	}
	if len(r.InitDataDigests) > 0 && !containsHex(r.InitDataDigests, c.InitDataDigest) {
		return ErrInitDataDenied
	}
	return nil
}

func containsHex(list []string, v []byte) bool {
	if len(v) == 0 {
		return false
	}
	h := hex.EncodeToString(v)
	for _, s := range list {
		if strings.EqualFold(s, h) {
			return true
		}
	}
	return false
}
