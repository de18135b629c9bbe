package initdata

import (
	"bytes"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
)

const doc = `{"version":"raksh.initdata/v1","policy":{"require_sealed":true,"deny_exec":true},"image_keys":["default/image-key/a"]}`

func TestParse(t *testing.T) {
	d, err := Parse([]byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	if !d.Policy.RequireSealed || !d.Policy.DenyExec || d.Policy.DenyLogs || d.KBS != nil || len(d.ImageKeys) != 1 {
		t.Fatalf("parsed %+v", d)
	}
	for name, tc := range map[string]struct{ doc, want string }{
		"unknown field":   {`{"version":"raksh.initdata/v1","polciy":{}}`, "unknown field"},
		"trailing":        {doc + `{}`, "trailing"},
		"no version":      {`{}`, "version"},
		"http broker":     {`{"version":"raksh.initdata/v1","kbs":{"url":"http://kbs","ca":"x"}}`, "https"},
		"broker path":     {`{"version":"raksh.initdata/v1","kbs":{"url":"https://kbs/x","ca":"x"}}`, "https"},
		"no trust anchor": {`{"version":"raksh.initdata/v1","kbs":{"url":"https://kbs"}}`, "ca or public_key"},
		"bad ca":          {`{"version":"raksh.initdata/v1","kbs":{"url":"https://kbs","ca":"not pem"}}`, "no PEM certificate"},
		"bad public key":  {`{"version":"raksh.initdata/v1","kbs":{"url":"https://kbs","public_key":"x"}}`, "PUBLIC KEY"},
		"bad image key":   {`{"version":"raksh.initdata/v1","image_keys":["a/b"]}`, "repo/type/tag"},
		"too big":         {`{"version":"` + strings.Repeat("x", MaxSize) + `"}`, "more than"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := Parse([]byte(tc.doc))
			if !errdefs.IsInvalidArgument(err) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want an invalid argument saying %q", err, tc.want)
			}
		})
	}
}

func TestCheck(t *testing.T) {
	d := Digest([]byte(doc))
	if err := Check([]byte(doc), d); err != nil {
		t.Fatalf("SNP/sim-shaped report: %v", err)
	}
	mrconfigid := append(bytes.Clone(d), make([]byte, 16)...)
	if err := Check([]byte(doc), mrconfigid); err != nil {
		t.Fatalf("TDX-shaped report: %v", err)
	}
	flipped := []byte(doc)
	flipped[len(flipped)-3] ^= 1
	for name, tc := range map[string]struct{ doc, reported []byte }{
		"flipped byte":     {flipped, d},
		"nothing bound":    {[]byte(doc), make([]byte, 32)},
		"no report field":  {[]byte(doc), nil},
		"tdx tail set":     {[]byte(doc), append(bytes.Clone(d), bytes.Repeat([]byte{1}, 16)...)},
		"other digest len": {[]byte(doc), d[:20]},
	} {
		if err := Check(tc.doc, tc.reported); !errdefs.IsPermissionDenied(err) {
			t.Errorf("%s: %v, want permission denied", name, err)
		}
	}
	if Bound(make([]byte, 48)) || !Bound(d) {
		t.Error("Bound")
	}
}
