package kbssession

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/raksh-project/raksh/agent/unseal"
)

func TestParseImageKeys(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want []string
	}{
		{in: "default/image-key/demo", want: []string{"default/image-key/demo"}},
		{in: "default/image-key/a,team/image-key/b.v2", want: []string{"default/image-key/a", "team/image-key/b.v2"}},
		{in: ""},
		{in: "default/image-key"},
		{in: "default/image-key/a,"},
		{in: "default/../a"},
		{in: "kbs:///default/image-key/a"},
	} {
		got, err := ParseImageKeys(tc.in)
		if tc.want == nil {
			if !errdefs.IsInvalidArgument(err) {
				t.Errorf("%q: got %q, %v; want an invalid argument error", tc.in, got, err)
			}
			continue
		}
		if err != nil || !slices.Equal(got, tc.want) {
			t.Errorf("%q: got %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
}

// fakeBroker serves resources by path; missing ones are refused as the
// KBS client reports a policy denial.
type fakeBroker struct {
	res   map[string][]byte
	calls []string
}

func (f *fakeBroker) Resource(_ context.Context, p string) ([]byte, error) {
	f.calls = append(f.calls, p)
	b, ok := f.res[p]
	if !ok {
		return nil, fmt.Errorf("kbs: 403 PolicyDeny: resource %s: %w", p, errdefs.ErrPermissionDenied)
	}
	return b, nil
}

func TestKBSImageKeys(t *testing.T) {
	ctx := context.Background()
	const secretA, secretB = "-----KEY A-----", "-----KEY B-----"
	broker := &fakeBroker{res: map[string][]byte{"default/image-key/a": []byte(secretA), "default/image-key/b": []byte(secretB)}}
	get := func(context.Context) (unseal.ResourceGetter, error) { return broker, nil }
	layer := ocispec.Descriptor{MediaType: "application/vnd.oci.image.layer.v1.tar+gzip+encrypted"}

	t.Run("every resource, every call", func(t *testing.T) {
		broker.calls = nil
		k := &ImageKeys{paths: []string{"default/image-key/a", "default/image-key/b"}, kbs: get}
		for range 2 {
			keys, err := k.PrivateKeys(ctx, layer)
			if err != nil {
				t.Fatal(err)
			}
			if len(keys) != 2 || string(keys[0]) != secretA || string(keys[1]) != secretB {
				t.Fatalf("got %d keys, not the broker's two in order", len(keys))
			}
		}
		if len(broker.calls) != 4 {
			t.Fatalf("broker asked %d times, want 4 (no caching: the policy decides each release)", len(broker.calls))
		}
	})
	t.Run("refused", func(t *testing.T) {
		k := &ImageKeys{paths: []string{"default/image-key/a", "default/image-key/other"}, kbs: get}
		keys, err := k.PrivateKeys(ctx, layer)
		if !errdefs.IsPermissionDenied(err) || !strings.Contains(err.Error(), "image key default/image-key/other from the key broker") {
			t.Fatalf("got %d keys, %v; want a permission denied error naming the resource", len(keys), err)
		}
		if keys != nil || strings.Contains(err.Error(), secretA) {
			t.Fatal("a key was returned or leaked into the error")
		}
	})
	t.Run("no broker", func(t *testing.T) {
		noTEE := errors.New("no TEE: this VM was launched without one")
		k := &ImageKeys{paths: []string{"default/image-key/a"}, kbs: func(context.Context) (unseal.ResourceGetter, error) { return nil, noTEE }}
		if _, err := k.PrivateKeys(ctx, layer); !errors.Is(err, noTEE) || !strings.Contains(err.Error(), "key broker for image keys") {
			t.Fatalf("got %v, want the attester's error", err)
		}
	})
	t.Run("no resources", func(t *testing.T) {
		k := &ImageKeys{kbs: get}
		if _, err := k.PrivateKeys(ctx, layer); !errdefs.IsNotFound(err) {
			t.Fatalf("got %v, want not found", err)
		}
	})
}
