package kbs

import (
	"errors"
	"testing"

	"github.com/raksh-project/raksh/tee"
)

func TestPolicyDecide(t *testing.T) {
	m, d := []byte{0xaa, 0xbb}, []byte{0x01}
	p := &Policy{Rules: []Rule{
		{Resources: []string{"default/workload/*"}, TEE: []tee.Type{tee.SNP, tee.Sim}, Measurements: []string{"AABB"}, InitDataDigests: []string{"01"}},
		{Resources: []string{"pef/*/*"}, TEE: []tee.Type{tee.PEF}, AllowInsecure: true},
		{Resources: []string{"tdx/*/*"}, TEE: []tee.Type{tee.TDX}},
	}}
	if err := p.Validate(); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		path string
		c    tee.Claims
		want error
	}{
		{"snp allowed", "default/workload/k", tee.Claims{TEE: tee.SNP, Measurement: m, InitDataDigest: d}, nil},
		{"sim allowed", "default/workload/k", tee.Claims{TEE: tee.Sim, Insecure: true, Measurement: m, InitDataDigest: d}, nil},
		{"wrong measurement", "default/workload/k", tee.Claims{TEE: tee.SNP, Measurement: d, InitDataDigest: d}, ErrMeasurementDenied},
		{"no measurement", "default/workload/k", tee.Claims{TEE: tee.SNP, InitDataDigest: d}, ErrMeasurementDenied},
		{"wrong init data", "default/workload/k", tee.Claims{TEE: tee.SNP, Measurement: m, InitDataDigest: m}, ErrInitDataDenied},
		{"tdx not allowed here", "default/workload/k", tee.Claims{TEE: tee.TDX, Measurement: m, InitDataDigest: d}, ErrTEENotAllowed},
		{"debug", "default/workload/k", tee.Claims{TEE: tee.SNP, Debug: true, Measurement: m, InitDataDigest: d}, ErrDebugNotAllowed},
		{"insecure snp", "default/workload/k", tee.Claims{TEE: tee.SNP, Insecure: true, Measurement: m, InitDataDigest: d}, ErrInsecureNotAllowed},
		{"sim where not listed", "tdx/a/b", tee.Claims{TEE: tee.Sim, Insecure: true}, ErrSimNotAllowed},
		{"insecure tdx", "tdx/a/b", tee.Claims{TEE: tee.TDX, Insecure: true}, ErrInsecureNotAllowed},
		{"simulated pef allowed", "pef/a/b", tee.Claims{TEE: tee.PEF, Insecure: true}, nil},
		{"no rule", "other/a/b", tee.Claims{TEE: tee.SNP}, ErrNoRule},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := p.Decide(tc.path, &tc.c)
			if tc.want == nil && err != nil || tc.want != nil && !errors.Is(err, tc.want) {
				t.Fatalf("Decide = %v, want %v", err, tc.want)
			}
		})
	}
	if !p.AllowsTEE(tee.Sim) || (&Policy{}).AllowsTEE(tee.Sim) {
		t.Fatal("AllowsTEE")
	}
	for _, bad := range []string{
		`{"rules":[{"resources":["a/b/c"]}]}`,
		`{"rules":[{"resources":["a/b"],"tee":["sim"]}]}`,
		`{"rules":[{"resources":["a/b/["],"tee":["sim"]}]}`,
		`{"rules":[{"resources":["a/b/c"],"tee":["sim"],"measurements":["zz"]}]}`,
		`{"rules":[{"resources":["a/b/c"],"tee":["sim"],"unknown":1}]}`,
	} {
		if _, err := ParsePolicy([]byte(bad)); !errors.Is(err, ErrInvalidPolicy) {
			t.Errorf("%s: %v", bad, err)
		}
	}
}
