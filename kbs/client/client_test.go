package client

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/containerd/errdefs"

	"github.com/raksh-project/raksh/tee"
)

type nopAttester struct{}

func (nopAttester) Type() tee.Type { return tee.Sim }
func (nopAttester) Evidence(context.Context, [tee.ReportDataSize]byte) ([]byte, error) {
	return []byte("evidence"), nil
}

func TestNew(t *testing.T) {
	for _, u := range []string{"", "kbs.example:8080", "ftp://kbs", "http://"} {
		if _, err := New(u, nopAttester{}); !errdefs.IsInvalidArgument(err) {
			t.Errorf("New(%q) = %v", u, err)
		}
	}
	if _, err := New("http://127.0.0.1:1", nil); !errdefs.IsInvalidArgument(err) {
		t.Errorf("nil attester: %v", err)
	}
}

func TestErrorMapping(t *testing.T) {
	for status, want := range map[int]error{
		401: errdefs.ErrUnauthenticated, 403: errdefs.ErrPermissionDenied,
		404: errdefs.ErrNotFound, 400: errdefs.ErrInvalidArgument, 413: errdefs.ErrInvalidArgument,
	} {
		if err := error(&Error{Status: status}); !errors.Is(err, want) {
			t.Errorf("%d does not map to %v", status, want)
		}
	}
	if errors.Is(&Error{Status: 500}, errdefs.ErrNotFound) {
		t.Error("500 maps to not found")
	}
}

// TestBrokerWithoutCookie: a broker answering the challenge without the
// session cookie is refused clearly.
func TestBrokerWithoutCookie(t *testing.T) {
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte(`{"nonce":"n","extra-params":{}}`))
	}))
	defer ts.Close()
	c, _ := New(ts.URL, nopAttester{})
	if err := c.Attest(context.Background()); !errdefs.IsInvalidArgument(err) {
		t.Fatalf("Attest = %v", err)
	}
	if _, err := c.Resource(context.Background(), "a/../b"); !errdefs.IsInvalidArgument(err) {
		t.Fatalf("bad path: %v", err)
	}
}
